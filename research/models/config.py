"""Decoder hyper-parameters and the named presets.

`tiny` is for tests, `small` (~12.6M parameters) for CPU runs; `125m` to `7b`
follow the usual GPT-3 / Llama shapes and are meant for accelerators (on CPU
they are initialised abstractly to report sizes: `research.main --dry_run`).

One decoder serves every model family: the architecture fields below select
the norm, MLP, biases, positions and embedding scale. `family` names the
Hugging Face layout a run imports from / exports to (`research/models/hf/`);
`native` is this project's own (Llama-style with a sqrt(d) input scale).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from research.errors import ConfigError

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FAMILIES = ("native", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2",
            "phi3", "gpt2")
_CHOICES = {"family": FAMILIES, "norm": ("rms", "layer"),
            "norm_placement": ("pre", "sandwich", "post"), "qk_norm": ("none", "head", "full"),
            "mlp": ("gated", "plain"), "activation": ("silu", "gelu_tanh", "gelu"),
            "positions": ("rope", "learned"), "rope_scaling": ("none", "llama3", "linear"),
            "matmul": ("auto", "gemm", "dot"), "quantize_base": ("none", "int8")}
# How the model computes, not what: a stage started from another run keeps its
# own; every other field comes from that run (see `architecture`).
RUNTIME_FIELDS = ("dtype", "remat", "attention_block", "vocab_chunk", "matmul", "lora_rank",
                  "lora_alpha", "lora_targets", "quantize_base")
# LoRA's targets: projection names, and the groups a target may name instead.
LORA_PROJECTIONS = ("query", "key", "value", "out", "gate", "up", "down")
LORA_GROUPS = {"attention": ("query", "key", "value", "out"), "mlp": ("gate", "up", "down"),
               "all": LORA_PROJECTIONS}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int = 2048          # longest sequence the sampler's cache may hold
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  # Tied embeddings start badly: the residual stream is the token's own
  # embedding, so after the final norm the tied unembedding gives the *current*
  # token a logit of ~sqrt(d_model) (initial loss ~17 nats at d=384). Untied (as
  # in Llama) starts at ~ln(vocab).
  tie_embeddings: bool = False
  # --- architecture variants (defaults: this project's native decoder) ---
  family: str = "native"       # native or a Hugging Face family (FAMILIES)
  norm: str = "rms"            # rms | layer (LayerNorm with bias, GPT-2)
  norm_offset: float = 0.0     # scale = offset + w; Gemma stores w with offset 1
  # pre: x + f(norm(x)) (Llama) | sandwich: x + norm(f(norm(x))) (Gemma 2/3) |
  # post: x + norm(f(x)) (OLMo 2)
  norm_placement: str = "pre"
  # RMSNorm of queries and keys before RoPE: none | head (over each head's E:
  # Qwen3, Gemma 3) | full (over all heads' H*E at once: OLMo 2)
  qk_norm: str = "none"
  query_scale: float = 0.0     # attention logits * query_scale^-1/2 (Gemma's query_pre_attn_scalar); 0: head_dim
  attn_softcap: float = 0.0    # attention logits = c * tanh(logits / c) (Gemma 2); 0 = off
  # Sliding-window attention: a local layer's query sees the last `sliding_window`
  # tokens, itself included (HF's `kv_idx > q_idx - window`); 0 = every layer global.
  sliding_window: int = 0
  # Which layers are local: 'l' (local) / 'g' (global) per layer, repeated
  # cyclically ("lg": Gemma 2, "llllllg": Gemma 3's 5:1); "" = all local.
  attention_pattern: str = ""
  rope_local_theta: float = 0.0  # RoPE base of local layers, unscaled (Gemma 3); 0 = as global
  mlp: str = "gated"           # gated: act(x Wg) * (x Wu) Wd (SwiGLU / GeGLU) | plain: act(x Wu) Wd
  activation: str = "silu"     # silu | gelu_tanh | gelu
  mlp_bias: bool = False
  qkv_bias: bool = False       # Qwen2, GPT-2
  out_bias: bool = False       # attention output bias (GPT-2)
  positions: str = "rope"      # rope | learned (absolute table of max_len rows, GPT-2)
  rope_scaling: str = "none"   # none | llama3 | linear
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  embed_scale: bool = True     # multiply embeddings by sqrt(d_model) (native, Gemma)
  logit_softcap: float = 0.0   # final logits = c * tanh(logits / c); 0 = off
  dtype: str = "float32"       # compute dtype (bfloat16 on accelerators)
  param_dtype: str = "float32"
  scan_layers: bool = False    # nn.scan over layers: one compiled block, fast compiles
  remat: str = "none"          # none | full | dots | dots_no_batch
  # Causal self-attention in query blocks of this many tokens, each against the
  # keys up to its end (the masked upper triangle's blocks are skipped); 0 = one block.
  attention_block: int = 128
  # Log-probs of the targets from the logits of this many positions at a time: a
  # step never holds B x L x V logits (a 150k-260k vocabulary's logits dominate an
  # SFT or DPO step's memory); 0 = all at once. The CLM / SFT loss makes each
  # chunk's gradient in the forward (models/fused_loss.py); DPO and RL recompute
  # the chunk's logits in the backward.
  vocab_chunk: int = 0
  # The projections' matmul (`decoder.dense`): "gemm" flattens the rows into one
  # 2-D product with a written-out backward (faster on XLA:CPU, one device);
  # "dot" keeps the kernel's dims and autodiff's backward (what a sharded kernel
  # needs); "auto" takes gemm on one device and dot on a mesh.
  matmul: str = "auto"
  # LoRA adapters (Hu et al. 2021) of this rank on the projections `lora_targets`
  # names (comma-separated: query, key, value, out, gate, up, down, or the groups
  # attention, mlp, all), scaled by lora_alpha / lora_rank; 0: none. Runtime
  # fields: a run started from another keeps its own adapters.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = "all"
  # QLoRA-style: the frozen base's projection kernels held as int8 codes with a
  # scale per output unit (models/quantize.py), the adapters trained beside them.
  quantize_base: str = "none"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model.num_heads={self.num_heads} must be a multiple of "
                        f"model.num_kv_heads={self.num_kv_heads}")
    if self.vocab_chunk < 0:
      raise ConfigError(f"model.vocab_chunk={self.vocab_chunk} must be >= 0 (0: off)")
    if self.attention_block < 0:
      raise ConfigError(f"model.attention_block={self.attention_block} must be >= 0 (0: off)")
    if self.head_dim % 2 and self.positions == "rope":
      raise ConfigError(f"model.head_dim={self.head_dim} must be even for RoPE")
    for key, allowed in _CHOICES.items():
      if getattr(self, key) not in allowed:
        raise ConfigError(f"model.{key}={getattr(self, key)!r}; expected one of {list(allowed)}")
    if self.sliding_window < 0:
      raise ConfigError(f"model.sliding_window={self.sliding_window} must be >= 0 (0: off)")
    if set(self.attention_pattern) - set("lg"):
      raise ConfigError(f"model.attention_pattern={self.attention_pattern!r}: one letter per "
                        "layer, 'l' (local, windowed) or 'g' (global), repeated cyclically")
    if self.lora_rank < 0:
      raise ConfigError(f"model.lora_rank={self.lora_rank} must be >= 0 (0: no adapters)")
    self.lora_projections()  # names it knows
    if self.quantize_base != "none" and not self.lora_rank:
      raise ConfigError(f"model.quantize_base={self.quantize_base!r} freezes the base in int8: "
                        f"train LoRA adapters on it (set model.lora_rank > 0)")
    for key in ("dtype", "param_dtype"):
      if getattr(self, key) not in _DTYPES:
        raise ConfigError(f"model.{key}={getattr(self, key)!r}; expected one of {sorted(_DTYPES)}")

  def lora_projections(self) -> tuple[str, ...]:
    """The projections that carry adapters (none without a rank)."""
    if not self.lora_rank:
      return ()
    names = []
    for target in filter(None, (t.strip() for t in self.lora_targets.split(","))):
      if target not in LORA_GROUPS and target not in LORA_PROJECTIONS:
        raise ConfigError(f"model.lora_targets={self.lora_targets!r}: {target!r} is not one of "
                          f"{list(LORA_PROJECTIONS)} or the groups {list(LORA_GROUPS)}")
      names += [n for n in LORA_GROUPS.get(target, (target,)) if n not in names]
    if not names:
      raise ConfigError("model.lora_targets is empty; name the projections to adapt (or all)")
    return tuple(names)

  def without_lora(self) -> "DecoderConfig":
    """The base model in float: no adapters (it reads an adapted tree and ignores
    them), no int8 base."""
    return dataclasses.replace(self, lora_rank=0, quantize_base="none")

  def adapters(self, projection: str) -> dict[str, Any]:
    """Projection's LoRA and quantization arguments for the projection of this name."""
    rank = self.lora_rank if projection in self.lora_projections() else 0
    return {"lora_rank": rank, "lora_alpha": self.lora_alpha,
            "quantized": self.quantize_base == "int8"}

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  def local_layers(self) -> tuple[bool, ...]:
    """Per layer: does it attend within the sliding window?"""
    if not self.sliding_window:
      return (False,) * self.num_layers
    pattern = self.attention_pattern or "l"
    return tuple(pattern[i % len(pattern)] == "l" for i in range(self.num_layers))

  @property
  def out_init_scale(self) -> float:
    # GPT-2 style: residual-branch output projections scaled by 1 / (2 * layers).
    return 1.0 / (2 * self.num_layers)

  def num_params(self, include_embedding: bool = True) -> int:
    d, f, e = self.d_model, self.mlp_dim, self.head_dim
    h, k = self.num_heads, self.num_kv_heads
    norm = d * (2 if self.norm == "layer" else 1)
    attn = d * e * (2 * h + 2 * k) + self.qkv_bias * e * (h + 2 * k) + self.out_bias * d
    mlp = (3 if self.mlp == "gated" else 2) * d * f + self.mlp_bias * (
        f * (2 if self.mlp == "gated" else 1) + d)
    attn += {"none": 0, "head": 2 * e, "full": (h + k) * e}[self.qk_norm]
    per_layer = attn + mlp + (4 if self.norm_placement == "sandwich" else 2) * norm
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    if self.positions == "learned":
      emb += self.max_len * d
    return self.num_layers * per_layer + norm + (emb if include_embedding else 0)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B.

    Matmul parameters count 6 FLOPs per token (the input embedding lookup is not
    a matmul, the unembedding is), attention scores and values 12 * L * T * H * E
    (T: the keys a query sees, capped at the window in local layers).
    """
    matmul_params = self.num_params(include_embedding=False) + self.vocab_size * self.d_model
    # A local layer's query sees at most `sliding_window` keys.
    keys = sum(min(seq_len, self.sliding_window) if local else seq_len
               for local in self.local_layers())
    attention = 12 * keys * self.num_heads * self.head_dim
    return 6 * matmul_params + attention


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=1024, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=192, max_len=512),
    "small": dict(vocab_size=4096, d_model=384, num_layers=6, num_heads=6, num_kv_heads=2,
                  head_dim=64, mlp_dim=1024, max_len=1024),
    "125m": dict(vocab_size=32_000, d_model=768, num_layers=12, num_heads=12, num_kv_heads=12,
                 head_dim=64, mlp_dim=2048, max_len=2048, dtype="bfloat16"),
    "350m": dict(vocab_size=32_000, d_model=1024, num_layers=24, num_heads=16, num_kv_heads=16,
                 head_dim=64, mlp_dim=2816, max_len=2048, dtype="bfloat16"),
    # Llama-3.2-1B shape (tied embeddings) with a 32k vocabulary.
    "1b": dict(vocab_size=32_000, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, mlp_dim=8192, max_len=2048, rope_theta=500_000.0, tie_embeddings=True,
               dtype="bfloat16", scan_layers=True, remat="dots_no_batch"),
    # Llama-2-7B shape: 6,738,415,616 parameters.
    "7b": dict(vocab_size=32_000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
               head_dim=128, mlp_dim=11008, max_len=4096, norm_eps=1e-5,
               dtype="bfloat16", scan_layers=True, remat="dots_no_batch"),
}


def defaults() -> dict[str, Any]:
  """Every optional field at its default (so a config can override any of them)."""
  return {f.name: f.default for f in dataclasses.fields(DecoderConfig)
          if f.default is not dataclasses.MISSING}


def preset(name: str) -> dict[str, Any]:
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; expected one of {list(PRESETS)}")
  return {**defaults(), **PRESETS[name]}


def architecture(model_cfg) -> dict[str, Any]:
  """The fields of a `config.model` that a later stage must share (all but runtime ones)."""
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  return {k: v for k, v in model_cfg.items() if k in fields and k not in RUNTIME_FIELDS}


def from_config(model_cfg) -> DecoderConfig:
  """Builds a DecoderConfig from the `config.model` ConfigDict (minus `preset`)."""
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  values = {k: v for k, v in model_cfg.items() if k != "preset"}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"unknown config.model keys {unknown}; valid keys: {sorted(fields)}")
  return DecoderConfig(**values)
