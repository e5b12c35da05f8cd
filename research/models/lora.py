"""LoRA adapters (Hu et al. 2021) on the decoder's projections: which parameters
they are, the base without them, and the adapted weights merged into the base.

The adapters live in the projections themselves (`decoder.Projection`: `lora_a`
[in..., r] and `lora_b` [r, out...] beside `kernel`), switched on by the runtime
fields `model.lora_rank / lora_alpha / lora_targets`. A decoder built with
`lora_rank=0` reads the same parameter tree and ignores the adapters, so the
base model (DPO's and RL's reference) is the same parameters with the adapters
off: no second copy of the weights.

Why not qwix (the library tunix and maxtext use): it finds a layer's weight by
intercepting `dot_general` and matching its operand to a module parameter, and
this decoder's projections multiply a cast, reshaped (and for gate/up stacked)
kernel inside a custom-VJP GEMM (`decoder.dense`), which that matching never
sees.
"""

from __future__ import annotations

import functools
import math

import flax.traverse_util
import jax
import jax.numpy as jnp

ADAPTERS = ("lora_a", "lora_b")


def is_adapter(path: tuple[str, ...]) -> bool:
  return bool(path) and path[-1] in ADAPTERS


def strip(params):
  """`params` without the adapters (the same arrays, not copies)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_adapter(k)})


def has_adapters(params) -> bool:
  return any(is_adapter(k) for k in flax.traverse_util.flatten_dict(params))


def merge(params, alpha: float):
  """The base parameters with every adapter folded in: W + (alpha / r) A B, each
  kernel's dims restored (a scanned stack of layers merged layer by layer). Each
  kernel is computed where it lives (its sharding), one at a time."""
  flat = flax.traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  for key, a in flat.items():
    if key[-1] != "lora_a":
      continue
    prefix = key[:-1]
    kernel = flat[(*prefix, "kernel")]
    sharding = getattr(kernel, "sharding", None)
    fold = jax.jit(functools.partial(_fold, scale=alpha / a.shape[-1],
                                     stacked="layers" in prefix),
                   out_shardings=sharding if isinstance(sharding, jax.sharding.NamedSharding)
                   else None)
    out[(*prefix, "kernel")] = fold(kernel, a, flat[(*prefix, "lora_b")])
  return flax.traverse_util.unflatten_dict(out)


def _fold(kernel, a, b, *, scale: float, stacked: bool):
  rank = a.shape[-1]
  lead = (a.shape[0],) if stacked else ()  # nn.scan's leading layer axis
  a2 = a.reshape(*lead, -1, rank).astype(jnp.float32)
  b2 = b.reshape(*lead, rank, -1).astype(jnp.float32)
  delta = jnp.matmul(a2, b2).reshape(kernel.shape) * scale
  return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


def disabled(params):
  """`params` with every B zeroed: the base model's function with the same base
  arrays (no copy of the weights) and the adapted module (DPO's and RL's reference)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: _zeros_like(v) if k[-1] == "lora_b" else v for k, v in flat.items()})


def _zeros_like(x):
  """Zeros where `x` lives (its sharding; traced values inside jit as they are)."""
  sharding = getattr(x, "sharding", None)
  if isinstance(x, jax.core.Tracer) or sharding is None:
    return jnp.zeros_like(x)
  return jnp.zeros_like(x, device=sharding)


def fill(full, base):
  """`full` (e.g. a fresh init) with every parameter `base` has taken from `base`."""
  flat = flax.traverse_util.flatten_dict(full)
  flat.update(flax.traverse_util.flatten_dict(base))
  return flax.traverse_util.unflatten_dict(flat)


def count(params) -> dict[str, int]:
  """Parameters in the adapters and in the rest."""
  flat = flax.traverse_util.flatten_dict(params)
  sizes = {k: math.prod(jax.numpy.shape(v)) for k, v in flat.items()}
  adapters = sum(n for k, n in sizes.items() if is_adapter(k))
  return {"adapters": adapters, "base": sum(sizes.values()) - adapters}
