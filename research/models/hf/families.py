"""Hugging Face model families <-> `DecoderConfig` and parameter names.

Each family says how a transformers `config.json` maps to the decoder's
architecture fields (and back, for export), and where each of the decoder's
parameters lives in the checkpoint (`tensor_map`). Layouts:

* `linear`: torch `nn.Linear` weight, [out, in]; ours is `in_shape + out_shape`,
  so the kernel is the transpose, reshaped (q: [H*E, D] -> [D, H, E]).
* `conv1d`: GPT-2's `Conv1D`, already [in, out]; only reshaped.
* `vector`: biases and norms, flat in HF ([H*E] -> [H, E]); `table`: embeddings, as is.
* `parts`: GPT-2's fused `c_attn` holds q, k, v side by side on its last axis.

RoPE: HF's Llama-family q/k weights are stored for the rotate-half convention
(permuted from Meta's interleaved checkpoints by HF's own conversion script),
which is the convention `research.models.decoder.apply_rope` uses, so q/k map
without a permutation; the equivalence tests pin this down.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from research.errors import UserError


class CheckpointError(UserError):
  """A Hugging Face directory that cannot be read as a supported checkpoint."""


@dataclasses.dataclass(frozen=True)
class Tensor:
  name: str              # HF tensor name
  layout: str            # linear | conv1d | vector | table
  in_dims: int = 1       # how many leading dims of our kernel are its input
  part: int = 0          # index into a fused tensor's last axis ...
  parts: int = 1         # ... split into this many equal parts


ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2", "GemmaForCausalLM": "gemma", "GPT2LMHeadModel": "gpt2",
}
CAUSAL_LM = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "gemma": "GemmaForCausalLM", "gpt2": "GPT2LMHeadModel"}
SEQUENCE_CLASSIFIER = {"llama": "LlamaForSequenceClassification",
                       "mistral": "MistralForSequenceClassification",
                       "qwen2": "Qwen2ForSequenceClassification",
                       "gemma": "GemmaForSequenceClassification",
                       "gpt2": "GPT2ForSequenceClassification"}
MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma": "gemma", "gpt2": "gpt2"}
# Buffers some checkpoints carry that are not parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def family_of(hf_config: dict, where: str) -> str:
  archs = hf_config.get("architectures") or []
  for arch in archs:
    base = arch.replace("ForSequenceClassification", "ForCausalLM")
    if arch == "GPT2ForSequenceClassification":
      base = "GPT2LMHeadModel"
    if base in ARCHITECTURES:
      return ARCHITECTURES[base]
  raise CheckpointError(f"{where}: unsupported architecture {archs or '(none given)'}; "
                        f"supported: {sorted(ARCHITECTURES)}")


def _activation(name: str, where: str) -> str:
  if name not in _ACTIVATIONS:
    raise CheckpointError(f"{where}: unsupported activation {name!r}; supported: "
                          f"{sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _rope(hf: dict, where: str) -> dict[str, Any]:
  """RoPE fields from `rope_parameters` (transformers >= 5) or `rope_scaling` + `rope_theta`."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  params = {**scaling, **params}
  theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
  kind = params.get("rope_type", params.get("type", "default"))
  out: dict[str, Any] = {"rope_theta": float(theta)}
  if kind == "default":
    return out
  if kind == "linear":
    return {**out, "rope_scaling": "linear", "rope_factor": float(params["factor"])}
  if kind == "llama3":
    return {**out, "rope_scaling": "llama3", "rope_factor": float(params["factor"]),
            "rope_low_freq_factor": float(params["low_freq_factor"]),
            "rope_high_freq_factor": float(params["high_freq_factor"]),
            "rope_original_max_len": int(params["original_max_position_embeddings"])}
  raise CheckpointError(f"{where}: unsupported rope type {kind!r}; supported: default, "
                        f"linear, llama3")


# config.json keys that change what a family computes, with the values this decoder
# implements (absent keys read as their transformers default, which is supported).
# A checkpoint setting one of them otherwise is refused by name, never ignored.
_COMPUTATION_KEYS: dict[str, dict[str, tuple]] = {
    "gpt2": {"scale_attn_by_inverse_layer_idx": (False,), "scale_attn_weights": (True,),
             "add_cross_attention": (False,)},
    **{family: {"attn_logit_softcapping": (None,), "final_logit_softcapping": (None,),
                "query_pre_attn_scalar": (None,), "use_qk_norm": (None, False),
                "is_decoder": (None, True)}
       for family in ("llama", "mistral", "qwen2", "gemma")},
}


def check_computation_keys(hf: dict, family: str, where: str) -> None:
  """Refuses a config.json key whose value this decoder would not compute (see above)."""
  for key, supported in _COMPUTATION_KEYS.get(family, {}).items():
    if key in hf and hf[key] not in supported:
      raise CheckpointError(f"{where}: {key}={hf[key]!r} changes what a {family} model "
                            f"computes and is not implemented (supported: "
                            f"{', '.join(repr(v) for v in supported)})")


def decoder_fields(hf: dict, where: str) -> dict[str, Any]:
  """transformers config.json -> `DecoderConfig` keyword arguments (architecture only)."""
  family = family_of(hf, where)
  check_computation_keys(hf, family, where)
  try:
    if family == "gpt2":
      d = hf["n_embd"]
      return dict(family="gpt2", vocab_size=hf["vocab_size"], d_model=d,
                  num_layers=hf["n_layer"], num_heads=hf["n_head"], num_kv_heads=hf["n_head"],
                  head_dim=d // hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d,
                  max_len=hf["n_positions"], norm="layer",
                  norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="plain",
                  activation=_activation(hf.get("activation_function", "gelu_new"), where),
                  mlp_bias=True, qkv_bias=True, out_bias=True, positions="learned",
                  embed_scale=False, tie_embeddings=hf.get("tie_word_embeddings", True))
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    fields = dict(family=family, vocab_size=hf["vocab_size"], d_model=d,
                  num_layers=hf["num_hidden_layers"], num_heads=heads,
                  num_kv_heads=hf.get("num_key_value_heads") or heads,
                  head_dim=hf.get("head_dim") or d // heads, mlp_dim=hf["intermediate_size"],
                  max_len=hf.get("max_position_embeddings", 2048),
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), **_rope(hf, where))
  except KeyError as e:
    raise CheckpointError(f"{where}: missing key {e.args[0]!r} for a {family} config") from e
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
  fields["activation"] = _activation(act, where)
  window = hf.get("sliding_window")
  if window and (family != "qwen2" or hf.get("use_sliding_window")) and window < fields["max_len"]:
    # Sliding-window attention equals full attention on sequences within the
    # window; beyond it this decoder would differ, so the window caps max_len.
    fields["max_len"] = int(window)
  if family in ("llama", "mistral"):
    bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=bias, out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
                  embed_scale=False, tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  elif family == "qwen2":
    fields.update(qkv_bias=True, embed_scale=False,
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  elif family == "gemma":
    fields.update(norm_offset=1.0, embed_scale=True,
                  tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
  return fields


def hf_config(cfg, *, dtype: str = "float32", special: dict | None = None,
              reward_head: bool = False) -> dict[str, Any]:
  """`DecoderConfig` -> a transformers config.json (the inverse of `decoder_fields`)."""
  family = cfg.family
  archs = SEQUENCE_CLASSIFIER if reward_head else CAUSAL_LM
  out: dict[str, Any] = {"architectures": [archs[family]], "model_type": MODEL_TYPE[family],
                         "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                         "dtype": dtype, **(special or {})}
  if reward_head:
    out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
  if family == "gpt2":
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu"}[cfg.activation]
    return {**out, "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.mlp_dim, "n_positions": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_eps, "activation_function": act}
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling == "linear":
    rope.update(rope_type="linear", factor=cfg.rope_factor)
  elif cfg.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=cfg.rope_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation]
  out.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
             head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
             max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
             rope_theta=cfg.rope_theta, rope_parameters=rope, hidden_act=act)
  if cfg.rope_scaling != "none":
    out["rope_scaling"] = rope
  if family == "llama":
    out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
  if family == "mistral":
    out["sliding_window"] = None  # max_len was capped at the window on import
  if family == "gemma":
    out["hidden_activation"] = act
  return out


def check_exportable(cfg) -> None:
  """What a family's HF model cannot express fails here, before anything is written."""
  expect = decoder_fields(hf_config(cfg), "export")
  differs = {k: (getattr(cfg, k), v) for k, v in expect.items() if getattr(cfg, k) != v}
  if differs:
    raise CheckpointError(f"model.family={cfg.family!r} cannot express this decoder: "
                          + ", ".join(f"model.{k}={a!r} (the HF model has {b!r})"
                                      for k, (a, b) in differs.items()))


def tensor_map(cfg, prefix: str = "") -> dict[tuple[str, ...], Tensor]:
  """Our parameter path (unscanned: `layer_i`) -> the HF tensor it comes from."""
  if cfg.family == "gpt2":
    return _gpt2_map(cfg, prefix or "transformer.")
  if cfg.family not in ("llama", "mistral", "qwen2", "gemma"):
    raise CheckpointError(f"model.family={cfg.family!r} has no Hugging Face layout")
  p = prefix or "model."
  m: dict[tuple[str, ...], Tensor] = {("embedding",): Tensor(f"{p}embed_tokens.weight", "table"),
                                      ("final_norm", "scale"): Tensor(f"{p}norm.weight", "vector")}
  if not cfg.tie_embeddings:
    m[("unembed", "kernel")] = Tensor("lm_head.weight", "linear")
  for i in range(cfg.num_layers):
    layer, hf = f"layer_{i}", f"{p}layers.{i}."
    m[(layer, "attention_norm", "scale")] = Tensor(f"{hf}input_layernorm.weight", "vector")
    m[(layer, "mlp_norm", "scale")] = Tensor(f"{hf}post_attention_layernorm.weight", "vector")
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      m[(layer, "attention", ours, "kernel")] = Tensor(f"{hf}self_attn.{theirs}.weight", "linear")
      if cfg.qkv_bias:
        m[(layer, "attention", ours, "bias")] = Tensor(f"{hf}self_attn.{theirs}.bias", "vector")
    m[(layer, "attention", "out", "kernel")] = Tensor(f"{hf}self_attn.o_proj.weight", "linear",
                                                      in_dims=2)
    if cfg.out_bias:
      m[(layer, "attention", "out", "bias")] = Tensor(f"{hf}self_attn.o_proj.bias", "vector")
    for ours in ("gate", "up", "down"):
      m[(layer, "mlp", ours, "kernel")] = Tensor(f"{hf}mlp.{ours}_proj.weight", "linear")
      if cfg.mlp_bias:
        m[(layer, "mlp", ours, "bias")] = Tensor(f"{hf}mlp.{ours}_proj.bias", "vector")
  return m


def _gpt2_map(cfg, p: str) -> dict[tuple[str, ...], Tensor]:
  m: dict[tuple[str, ...], Tensor] = {
      ("embedding",): Tensor(f"{p}wte.weight", "table"),
      ("position_embedding",): Tensor(f"{p}wpe.weight", "table"),
      ("final_norm", "scale"): Tensor(f"{p}ln_f.weight", "vector"),
      ("final_norm", "bias"): Tensor(f"{p}ln_f.bias", "vector")}
  if not cfg.tie_embeddings:
    m[("unembed", "kernel")] = Tensor("lm_head.weight", "linear")
  for i in range(cfg.num_layers):
    layer, hf = f"layer_{i}", f"{p}h.{i}."
    for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
      m[(layer, ours, "scale")] = Tensor(f"{hf}{theirs}.weight", "vector")
      m[(layer, ours, "bias")] = Tensor(f"{hf}{theirs}.bias", "vector")
    for j, ours in enumerate(("query", "key", "value")):
      m[(layer, "attention", ours, "kernel")] = Tensor(f"{hf}attn.c_attn.weight", "conv1d",
                                                       part=j, parts=3)
      m[(layer, "attention", ours, "bias")] = Tensor(f"{hf}attn.c_attn.bias", "vector",
                                                     part=j, parts=3)
    m[(layer, "attention", "out", "kernel")] = Tensor(f"{hf}attn.c_proj.weight", "conv1d",
                                                      in_dims=2)
    m[(layer, "attention", "out", "bias")] = Tensor(f"{hf}attn.c_proj.bias", "vector")
    m[(layer, "mlp", "up", "kernel")] = Tensor(f"{hf}mlp.c_fc.weight", "conv1d")
    m[(layer, "mlp", "up", "bias")] = Tensor(f"{hf}mlp.c_fc.bias", "vector")
    m[(layer, "mlp", "down", "kernel")] = Tensor(f"{hf}mlp.c_proj.weight", "conv1d")
    m[(layer, "mlp", "down", "bias")] = Tensor(f"{hf}mlp.c_proj.bias", "vector")
  return m
