"""Decoder hyper-parameters and the named presets.

`tiny` is for tests, `small` (~12.6M parameters) for CPU runs; `125m` to `7b`
follow the usual GPT-3 / Llama shapes and are meant for accelerators (on CPU
they are initialised abstractly to report sizes: `research.main --dry_run`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
  dtype: str = "float32"       # compute dtype (bfloat16 on accelerators)
  param_dtype: str = "float32"
  scan_layers: bool = False    # nn.scan over layers: one compiled block, fast compiles
  remat: str = "none"          # none | full | dots | dots_no_batch

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
    for key in ("dtype", "param_dtype"):
      if getattr(self, key) not in _DTYPES:
        raise ValueError(f"model.{key}={getattr(self, key)!r}; expected one of {sorted(_DTYPES)}")

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  @property
  def out_init_scale(self) -> float:
    # GPT-2 style: residual-branch output projections scaled by 1 / (2 * layers).
    return 1.0 / (2 * self.num_layers)

  def num_params(self, include_embedding: bool = True) -> int:
    d, f = self.d_model, self.mlp_dim
    attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + d + (emb if include_embedding else 0)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B.

    Matmul parameters count 6 FLOPs per token (the input embedding lookup is not
    a matmul, the unembedding is), attention scores and values 12 * L * T * H * E.
    """
    matmul_params = self.num_params(include_embedding=False) + self.vocab_size * self.d_model
    attention = 12 * self.num_layers * seq_len * self.num_heads * self.head_dim
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


def preset(name: str) -> dict[str, Any]:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {list(PRESETS)}")
  return dict(PRESETS[name])


def from_config(model_cfg) -> DecoderConfig:
  """Builds a DecoderConfig from the `config.model` ConfigDict (minus `preset`)."""
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  values = {k: v for k, v in model_cfg.items() if k != "preset"}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"unknown config.model keys {unknown}; valid keys: {sorted(fields)}")
  return DecoderConfig(**values)
