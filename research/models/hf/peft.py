"""PEFT LoRA adapters in and out: `adapter_config.json` + `adapter_model.safetensors`.

PEFT (huggingface/peft) stores a LoRA adapter of a torch Linear `[out, in]` as
`lora_A.weight` [r, in] and `lora_B.weight` [out, r], applied as
W x + (lora_alpha / r) B A x under the name of the module it adapts
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`). Ours are
`lora_a` [in..., r] and `lora_b` [r, out...] beside the projection's kernel
(`decoder.Projection`), with the same scale, so each is a transpose and a
reshape of the other. The module names come from the family's tensor map
(`families.tensor_map`): the projections that are one unfused Linear in the
Hugging Face model (q/k/v/o, gate/up/down: Llama, Mistral, Qwen2/3, Gemma 1-3,
OLMo 2). Fused ones (Phi-3's qkv_proj, GPT-2's c_attn) are refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import flax.traverse_util
import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from research.models.config import LORA_PROJECTIONS
from research.models.decoder import Decoder
from research.models.hf import families
from research.models.hf.families import CheckpointError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the *ForCausalLM as base_model.model


def modules(cfg, projections) -> dict[tuple[str, ...], tuple[str, int]]:
  """Our (unscanned) projection path, e.g. ('layer_0', 'attention', 'query') -> (the
  Hugging Face module name, the kernel's input dims), for `projections`."""
  if cfg.family == "native":  # exported as Llama (convert._as_hf_family): the same names
    cfg = dataclasses.replace(cfg, family="llama", embed_scale=False)
  out = {}
  for path, spec in families.tensor_map(cfg).items():
    if path[-1] != "kernel" or path[-2] not in projections:
      continue
    if spec.layout != "linear" or spec.parts > 1:
      raise CheckpointError(f"model.family={cfg.family!r} fuses {path[-2]!r} into "
                            f"{spec.name!r}: PEFT adapters of fused projections are not "
                            f"supported; adapt other projections (model.lora_targets)")
    out[path[:-1]] = (spec.name.removesuffix(".weight"), spec.in_dims)
  return out


def adapter_config(*, rank: int, alpha: float, projections, cfg, base: str = "") -> dict:
  names = sorted({name.rsplit(".", 1)[-1] for name, _ in modules(cfg, projections).values()})
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
          "r": rank, "lora_alpha": alpha, "target_modules": names, "lora_dropout": 0.0,
          "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
          "rank_pattern": {}, "alpha_pattern": {}}


def save(directory: str, params, cfg, *, alpha: float, base: str = "") -> list[str]:
  """Writes the adapters of (unscanned, host) `params` as a PEFT adapter directory."""
  flat = flax.traverse_util.flatten_dict(params)
  found = {path[:-1] for path in flat if path[-1] == "lora_a"}
  if not found:
    raise CheckpointError("the run has no LoRA adapters (model.lora_rank=0): export it with "
                          "--to_hf")
  projections = sorted({p[-1] for p in found})
  names = modules(cfg, projections)
  tensors, rank = {}, None
  for prefix in sorted(found):
    name, n_in = names[prefix]
    a, b = np.asarray(flat[(*prefix, "lora_a")]), np.asarray(flat[(*prefix, "lora_b")])
    rank = a.shape[-1]
    tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(
        a.reshape(math.prod(a.shape[:n_in]), rank).T.astype(np.float32))
    tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(
        b.reshape(rank, -1).T.astype(np.float32))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(adapter_config(rank=rank, alpha=alpha, projections=projections, cfg=cfg,
                             base=base), f, indent=2)
  save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
  return [CONFIG_FILE, WEIGHTS_FILE]


def read_config(directory: str) -> dict:
  """adapter_config.json, checked: a plain LoRA adapter this decoder computes alike."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{directory} has no {CONFIG_FILE}: not a PEFT adapter directory")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  if config.get("peft_type") != "LORA":
    raise CheckpointError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA adapters "
                          f"import")
  refused = {"use_rslora": "rank-stabilised scaling (alpha / sqrt(r))", "use_dora": "DoRA",
             "fan_in_fan_out": "Conv1D-layout (fan_in_fan_out) weights",
             "rank_pattern": "per-module ranks", "alpha_pattern": "per-module alphas",
             "modules_to_save": "fully trained extra modules", "lora_bias": "a bias on lora_B",
             "use_qalora": "QA-LoRA", "layer_replication": "replicated layers"}
  for key, what in refused.items():
    if config.get(key):
      raise CheckpointError(f"{path}: {key}={config[key]!r} ({what}) is not supported")
  if config.get("bias", "none") != "none":
    raise CheckpointError(f"{path}: bias={config['bias']!r}; only bias='none' adapters import")
  return config


def load(directory: str, cfg) -> tuple[dict, dict[tuple[str, ...], tuple[np.ndarray, ...]]]:
  """(adapter_config, {our unscanned projection path: (lora_a, lora_b)}) of a PEFT
  adapter for the decoder `cfg` (its shapes checked against the kernels')."""
  config = read_config(directory)
  path = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
  with safe_open(path, framework="numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  names = modules(cfg, LORA_PROJECTIONS)
  shapes = _kernel_shapes(cfg)
  out, used = {}, set()
  rank = int(config["r"])
  for prefix, (name, n_in) in names.items():
    a_name = f"{PREFIX}{name}.lora_A.weight"
    b_name = f"{PREFIX}{name}.lora_B.weight"
    if a_name not in tensors and b_name not in tensors:
      continue
    if a_name not in tensors or b_name not in tensors:
      raise CheckpointError(f"{path}: {a_name if a_name not in tensors else b_name} is missing")
    kernel = shapes[prefix]
    in_shape, out_shape = kernel[:n_in], kernel[n_in:]
    a, b = tensors[a_name], tensors[b_name]
    if a.shape != (rank, math.prod(in_shape)) or b.shape != (math.prod(out_shape), rank):
      raise CheckpointError(f"{path}: {name} has lora_A {a.shape} and lora_B {b.shape}; "
                            f"expected ({rank}, {math.prod(in_shape)}) and "
                            f"({math.prod(out_shape)}, {rank}) for r={rank} on this model")
    out[prefix] = (a.T.reshape(*in_shape, rank), b.T.reshape(rank, *out_shape))
    used.update((a_name, b_name))
  unused = sorted(set(tensors) - used)
  if unused:
    raise CheckpointError(f"{path}: {len(unused)} tensors adapt no projection of this "
                          f"{cfg.family} decoder, e.g. {unused[:2]}")
  if not out:
    raise CheckpointError(f"{path} holds no adapter")
  return config, out


def _kernel_shapes(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our unscanned projection path -> its kernel's shape."""
  base = dataclasses.replace(cfg, lora_rank=0, scan_layers=False)
  shapes = jax.eval_shape(lambda r: Decoder(base).init(r, np.ones((1, 4), np.int32))["params"],
                          jax.random.PRNGKey(0))
  flat = flax.traverse_util.flatten_dict(shapes)
  return {k[:-1]: tuple(getattr(v, "value", v).shape) for k, v in flat.items()
          if k[-1] == "kernel"}

