"""Hugging Face model families <-> `DecoderConfig` and parameter names.

Each family says how a transformers `config.json` maps to the decoder's
architecture fields (and back, for export), and where each of the decoder's
parameters lives in the checkpoint (`tensor_map`). Layouts:

* `linear`: torch `nn.Linear` weight, [out, in]; ours is `in_shape + out_shape`,
  so the kernel is the transpose, reshaped (q: [H*E, D] -> [D, H, E]).
* `conv1d`: GPT-2's `Conv1D`, already [in, out]; only reshaped.
* `vector`: biases and norms, flat in HF ([H*E] -> [H, E]); `table`: embeddings, as is.
* `parts`: a fused tensor split along its output axis: GPT-2's `c_attn` (q, k, v
  in equal thirds), Phi-3's `qkv_proj` (q, k, v of `sizes` rows) and
  `gate_up_proj` (gate, up halves).

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
  part: int = 0          # index into a fused tensor's output axis ...
  parts: int = 1         # ... split into this many parts,
  sizes: tuple[int, ...] = ()  # of these sizes (default: equal)


CAUSAL_LM = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
             "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
             "olmo2": "Olmo2ForCausalLM", "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel"}
SEQUENCE_CLASSIFIER = {family: arch.replace("ForCausalLM", "ForSequenceClassification")
                       for family, arch in CAUSAL_LM.items()}
SEQUENCE_CLASSIFIER.update(gpt2="GPT2ForSequenceClassification",
                           gemma3="Gemma3TextForSequenceClassification")
ARCHITECTURES = {arch: family for table in (CAUSAL_LM, SEQUENCE_CLASSIFIER)
                 for family, arch in table.items()}
MODEL_TYPE = {**{f: f for f in CAUSAL_LM}, "gemma3": "gemma3_text"}
# Refused with a reason rather than as merely unknown.
_REFUSED = {
    "mixture-of-experts models are not supported (one dense MLP per layer)": (
        "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
        "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "PhimoeForCausalLM",
        "GptOssForCausalLM", "Llama4ForCausalLM", "Llama4ForConditionalGeneration"),
    "a multimodal checkpoint; import a text-only one (e.g. Gemma3ForCausalLM)": (
        "Gemma3ForConditionalGeneration", "LlavaForConditionalGeneration",
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
}
# Buffers some checkpoints carry that are not parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def family_of(hf_config: dict, where: str) -> str:
  archs = hf_config.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
    for reason, refused in _REFUSED.items():
      if arch in refused:
        raise CheckpointError(f"{where}: {arch}: {reason}")
  raise CheckpointError(f"{where}: unsupported architecture {archs or '(none given)'}; "
                        f"supported: {sorted(ARCHITECTURES)}")


def _activation(name: str, where: str) -> str:
  if name not in _ACTIVATIONS:
    raise CheckpointError(f"{where}: unsupported activation {name!r}; supported: "
                          f"{sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _rope(hf: dict, where: str) -> dict[str, Any]:
  """RoPE fields from `rope_parameters` (transformers >= 5) or `rope_scaling` + `rope_theta`.

  Gemma 3's are per layer type: the global layers' (possibly scaled) and the
  local layers' own unscaled base (`rope_local_base_freq` before transformers 5).
  """
  params = {**dict(hf.get("rope_scaling") or {}), **dict(hf.get("rope_parameters") or {})}
  if "full_attention" in params or "sliding_attention" in params:
    local = dict(params.get("sliding_attention") or {})
    if local.get("rope_type", "default") != "default":
      raise CheckpointError(f"{where}: rope type {local['rope_type']!r} on the sliding-window "
                            "layers is not implemented (supported: default)")
    out = _rope_fields(dict(params.get("full_attention") or {}), hf, where)
    return {**out, "rope_local_theta": float(local.get("rope_theta", 10_000.0))}
  out = _rope_fields(params, hf, where)
  if "rope_local_base_freq" in hf:
    out["rope_local_theta"] = float(hf["rope_local_base_freq"])
  return out


def _rope_fields(params: dict, hf: dict, where: str) -> dict[str, Any]:
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise CheckpointError(f"{where}: partial_rotary_factor={partial} is not implemented (RoPE "
                          "over a part of each head); supported: 1.0")
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


# The HF model reads `layer_types` (transformers >= 5); otherwise each family's rule.
_READS_LAYER_TYPES = ("qwen2", "qwen3", "gemma2", "gemma3")
_ALL_LOCAL = ("mistral", "phi3")


def _window(hf: dict, family: str, num_layers: int, where: str) -> dict[str, Any]:
  """`sliding_window` and the per-layer `attention_pattern` (see DecoderConfig)."""
  window = hf.get("sliding_window")
  if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
    window = None
  if not window or family not in _READS_LAYER_TYPES + _ALL_LOCAL:
    return {"sliding_window": 0, "attention_pattern": ""}
  types = hf.get("layer_types") if family in _READS_LAYER_TYPES else None
  if types is None:
    if family in _ALL_LOCAL:
      types = ["sliding_attention"] * num_layers
    elif family in ("qwen2", "qwen3"):
      first = hf.get("max_window_layers", 28)
      types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    else:  # Gemma 2 alternates from a local layer 0; Gemma 3 has a global layer every 6th
      every = 2 if family == "gemma2" else hf.get("sliding_window_pattern", 6)
      types = ["sliding_attention" if (i + 1) % every else "full_attention"
               for i in range(num_layers)]
  unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
  if unknown or len(types) != num_layers:
    raise CheckpointError(f"{where}: layer_types {unknown or types} is not implemented "
                          f"(supported: {num_layers} of sliding_attention, full_attention)")
  pattern = "".join("l" if t == "sliding_attention" else "g" for t in types)
  if "l" not in pattern:
    return {"sliding_window": 0, "attention_pattern": ""}
  return {"sliding_window": int(window), "attention_pattern": pattern}


# config.json keys that change what a family computes, with the values this decoder
# implements (absent keys read as their transformers default, which is supported).
# A checkpoint setting one of them otherwise is refused by name, never ignored.
_COMPUTATION_KEYS: dict[str, dict[str, tuple]] = {
    "gpt2": {"scale_attn_by_inverse_layer_idx": (False,), "scale_attn_weights": (True,),
             "add_cross_attention": (False,)},
    **{family: {"attn_logit_softcapping": (None,), "final_logit_softcapping": (None,),
                "query_pre_attn_scalar": (None,), "use_qk_norm": (None, False),
                "is_decoder": (None, True)}
       for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2", "phi3")},
    **{family: {"use_bidirectional_attention": (None, False), "is_decoder": (None, True)}
       for family in ("gemma2", "gemma3")},
}


def check_computation_keys(hf: dict, family: str, where: str) -> None:
  """Refuses a config.json key whose value this decoder would not compute (see above)."""
  for key, supported in _COMPUTATION_KEYS.get(family, {}).items():
    if key in hf and hf[key] not in supported:
      raise CheckpointError(f"{where}: {key}={hf[key]!r} changes what a {family} model "
                            f"computes and is not implemented (supported: "
                            f"{', '.join(repr(v) for v in supported)})")


# The plain (Llama) value of every architecture field a family may change.
_PLAIN: dict[str, Any] = dict(
    norm="rms", norm_offset=0.0, norm_placement="pre", qk_norm="none", query_scale=0.0,
    attn_softcap=0.0, logit_softcap=0.0, mlp="gated", embed_scale=False, positions="rope",
    qkv_bias=False, out_bias=False, mlp_bias=False, rope_local_theta=0.0, rope_scaling="none",
    sliding_window=0, attention_pattern="")


def decoder_fields(hf: dict, where: str) -> dict[str, Any]:
  """transformers config.json -> `DecoderConfig` keyword arguments (architecture only)."""
  family = family_of(hf, where)
  check_computation_keys(hf, family, where)
  try:
    if family == "gpt2":
      d = hf["n_embd"]
      return {**_PLAIN, **dict(family="gpt2", vocab_size=hf["vocab_size"], d_model=d,
                  num_layers=hf["n_layer"], num_heads=hf["n_head"], num_kv_heads=hf["n_head"],
                  head_dim=d // hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d,
                  max_len=hf["n_positions"], norm="layer",
                  norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="plain",
                  activation=_activation(hf.get("activation_function", "gelu_new"), where),
                  mlp_bias=True, qkv_bias=True, out_bias=True, positions="learned",
                  embed_scale=False, tie_embeddings=hf.get("tie_word_embeddings", True))}
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
  # Every architecture field, so that `check_exportable` sees what a family lacks.
  fields = {**_PLAIN, **fields, "activation": _activation(act, where),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", family.startswith("gemma"))),
            **_window(hf, family, fields["num_layers"], where)}
  bias = bool(hf.get("attention_bias", False))
  if family in ("llama", "mistral", "qwen3", "olmo2", "phi3"):
    fields.update(qkv_bias=bias, out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
  if family == "qwen2":
    fields.update(qkv_bias=True)
  if family == "qwen3":
    fields.update(qk_norm="head")
  if family == "olmo2":
    fields.update(qk_norm="full", norm_placement="post")
  if family.startswith("gemma"):
    fields.update(norm_offset=1.0, embed_scale=True)
  if family == "gemma":
    fields.update(qkv_bias=bias, out_bias=bias)
  if family in ("gemma2", "gemma3"):
    gemma2 = family == "gemma2"  # transformers' defaults where config.json is silent
    fields.update(norm_placement="sandwich", query_scale=float(hf.get("query_pre_attn_scalar", 256)),
                  attn_softcap=float(hf.get("attn_logit_softcapping", 50.0 if gemma2 else None) or 0),
                  logit_softcap=float(hf.get("final_logit_softcapping", 30.0 if gemma2 else None) or 0),
                  qkv_bias=bias, out_bias=bias)
  if family == "gemma3":
    fields.update(qk_norm="head")
    if not fields["rope_local_theta"]:  # no rope_parameters at all: transformers' defaults
      fields.update(rope_theta=1_000_000.0, rope_local_theta=10_000.0)
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
  if family not in ("qwen2", "gpt2"):
    out.update(attention_bias=cfg.qkv_bias)
  if family in ("llama", "mistral", "olmo2", "phi3"):
    out.update(mlp_bias=cfg.mlp_bias)
  if family.startswith("gemma"):
    out["hidden_activation"] = act
  if family in ("gemma2", "gemma3"):
    scalar = cfg.query_scale or cfg.head_dim  # transformers' config validates an int
    out.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
               attn_logit_softcapping=cfg.attn_softcap or None,
               final_logit_softcapping=cfg.logit_softcap or None)
  if family == "gemma3":  # per layer type; the local layers' base unscaled
    out["rope_parameters"] = {"full_attention": rope, "sliding_attention": {
        "rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}}
    out.pop("rope_theta")
    out.pop("rope_scaling", None)
  return {**out, **_window_config(cfg)}


def _window_config(cfg) -> dict[str, Any]:
  """The sliding-window keys of `cfg.family`'s config.json (the inverse of `_window`)."""
  local = cfg.local_layers()
  window = cfg.sliding_window if any(local) else None
  out: dict[str, Any] = {}
  if cfg.family in _READS_LAYER_TYPES + _ALL_LOCAL:
    out["sliding_window"] = window
  if cfg.family in _READS_LAYER_TYPES:
    out["layer_types"] = ["sliding_attention" if x else "full_attention" for x in local]
  if cfg.family in ("qwen2", "qwen3"):  # read by transformers < 5, which has no layer_types
    out.update(use_sliding_window=window is not None,
               max_window_layers=local.index(True) if window else cfg.num_layers)
  return out


def check_exportable(cfg) -> None:
  """What a family's HF model cannot express fails here, before anything is written."""
  expect = decoder_fields(hf_config(cfg), "export")
  # The pattern is compared layer by layer ("lg" == "lglg"), the window where it is used.
  theirs = dataclasses.replace(cfg, sliding_window=expect["sliding_window"],
                               attention_pattern=expect["attention_pattern"]).local_layers()
  skip = {"attention_pattern"} | (set() if any(theirs) or any(cfg.local_layers())
                                  else {"sliding_window"})
  differs = {k: (getattr(cfg, k), v) for k, v in expect.items()
             if getattr(cfg, k) != v and k not in skip}
  if cfg.local_layers() != theirs:
    differs["attention_pattern"] = (cfg.attention_pattern, expect["attention_pattern"])
  if differs:
    raise CheckpointError(f"model.family={cfg.family!r} cannot express this decoder: "
                          + ", ".join(f"model.{k}={a!r} (the HF model has {b!r})"
                                      for k, (a, b) in differs.items()))


def tensor_map(cfg, prefix: str = "") -> dict[tuple[str, ...], Tensor]:
  """Our parameter path (unscanned: `layer_i`) -> the HF tensor it comes from."""
  if cfg.family == "gpt2":
    return _gpt2_map(cfg, prefix or "transformer.")
  if cfg.family not in CAUSAL_LM:
    raise CheckpointError(f"model.family={cfg.family!r} has no Hugging Face layout")
  p = prefix or "model."
  m: dict[tuple[str, ...], Tensor] = {("embedding",): Tensor(f"{p}embed_tokens.weight", "table"),
                                      ("final_norm", "scale"): Tensor(f"{p}norm.weight", "vector")}
  if not cfg.tie_embeddings:
    m[("unembed", "kernel")] = Tensor("lm_head.weight", "linear")
  for i in range(cfg.num_layers):
    layer, hf = f"layer_{i}", f"{p}layers.{i}."
    norms = {"pre": (("attention_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")),
             "sandwich": (("attention_norm", "input_layernorm"),
                          ("attention_post_norm", "post_attention_layernorm"),
                          ("mlp_norm", "pre_feedforward_layernorm"),
                          ("mlp_post_norm", "post_feedforward_layernorm")),
             "post": (("attention_post_norm", "post_attention_layernorm"),
                      ("mlp_post_norm", "post_feedforward_layernorm"))}[cfg.norm_placement]
    for ours, theirs in norms:
      m[(layer, ours, "scale")] = Tensor(f"{hf}{theirs}.weight", "vector")
    qkv_rows = (cfg.num_heads * cfg.head_dim,) + (cfg.num_kv_heads * cfg.head_dim,) * 2
    for j, (ours, theirs) in enumerate((("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))):
      if cfg.family == "phi3":  # one fused qkv_proj
        m[(layer, "attention", ours, "kernel")] = Tensor(f"{hf}self_attn.qkv_proj.weight", "linear",
                                                         part=j, parts=3, sizes=qkv_rows)
      else:
        m[(layer, "attention", ours, "kernel")] = Tensor(f"{hf}self_attn.{theirs}.weight", "linear")
      if cfg.qkv_bias:
        m[(layer, "attention", ours, "bias")] = Tensor(f"{hf}self_attn.{theirs}.bias", "vector")
    if cfg.qk_norm != "none":
      for ours, theirs in (("query_norm", "q_norm"), ("key_norm", "k_norm")):
        m[(layer, "attention", ours, "norm", "scale")] = Tensor(f"{hf}self_attn.{theirs}.weight",
                                                                "vector")
    m[(layer, "attention", "out", "kernel")] = Tensor(f"{hf}self_attn.o_proj.weight", "linear",
                                                      in_dims=2)
    if cfg.out_bias:
      m[(layer, "attention", "out", "bias")] = Tensor(f"{hf}self_attn.o_proj.bias", "vector")
    for j, ours in enumerate(("gate", "up", "down")):
      if cfg.family == "phi3" and ours != "down":  # one fused gate_up_proj
        m[(layer, "mlp", ours, "kernel")] = Tensor(f"{hf}mlp.gate_up_proj.weight", "linear",
                                                   part=j, parts=2)
        continue
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
