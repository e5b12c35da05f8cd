"""A frozen base stored in int8 (QLoRA-style training: Dettmers et al. 2023, with
LLM.int8's vector-wise absmax weights, Dettmers et al. 2022, eq. 1-2).

With `model.quantize_base='int8'` every projection's kernel W [in..., out...] is
held as int8 codes `kernel_q` = round(127 W / s) and float scales `kernel_scale`
s [out...] = max |W| over the input dims (one per output unit), and computed as
s * q / 127 in the compute dtype. The codes are frozen (integers get no
gradient); LoRA adapters train beside them. The embedding table and the
unembedding stay in the parameter dtype, as QLoRA keeps them.

A run's checkpoint holds the codes. The base comes from a float checkpoint
(`init_from`): `float_twin` is the tree to restore into, `quantize` folds each
kernel into codes and scales where they live (their sharding); `dequantize` is
the inverse, for readers without a quantized model (an export, a later stage).
"""

from __future__ import annotations

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp

CODES, SCALE = "kernel_q", "kernel_scale"
LEVELS = 127.0


def codes_and_scale(kernel, num_in_dims: int):
  """int8 codes and the float32 per-output-unit scale of `kernel`."""
  w = kernel.astype(jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=tuple(range(num_in_dims)))
  safe = jnp.where(scale > 0, scale, 1.0)[(None,) * num_in_dims]
  q = jnp.clip(jnp.round(w / safe * LEVELS), -LEVELS, LEVELS).astype(jnp.int8)
  return q, scale


def weight(q, scale, dtype):
  """The kernel the codes stand for, in `dtype`."""
  step = (scale / LEVELS)[(None,) * (q.ndim - scale.ndim)]
  return (q.astype(jnp.float32) * step).astype(dtype)


def is_quantized(params) -> bool:
  return any(k[-1] == CODES for k in flax.traverse_util.flatten_dict(params))


def float_twin(tree, dtype):
  """A (shape or sharding) tree of a quantized model as its float model's: each
  `kernel_q` becomes `kernel` (ShapeDtypeStructs take `dtype`), scales dropped."""
  flat = flax.traverse_util.flatten_dict(tree)
  out = {}
  for k, v in flat.items():
    if k[-1] == SCALE:
      continue
    if k[-1] == CODES:
      k = (*k[:-1], "kernel")
      if isinstance(v, jax.ShapeDtypeStruct):
        v = jax.ShapeDtypeStruct(v.shape, dtype, sharding=v.sharding)
    out[k] = v
  return flax.traverse_util.unflatten_dict(out)


def quantize(params, like):
  """`params` (float kernels) with each kernel that `like` holds as codes quantized,
  placed like `like`'s codes and scales."""
  want = flax.traverse_util.flatten_dict(like)
  out = {}
  for k, v in flax.traverse_util.flatten_dict(params).items():
    codes = (*k[:-1], CODES)
    if k[-1] != "kernel" or codes not in want:
      out[k] = v
      continue
    q_like, s_like = want[codes], want[(*k[:-1], SCALE)]
    num_in = v.ndim - s_like.ndim
    shardings = tuple(getattr(x, "sharding", None) for x in (q_like, s_like))
    fold = jax.jit(functools.partial(codes_and_scale, num_in_dims=num_in),
                   out_shardings=shardings if all(
                       isinstance(s, jax.sharding.Sharding) for s in shardings) else None)
    out[codes], out[(*k[:-1], SCALE)] = fold(v)
  return flax.traverse_util.unflatten_dict(out)


def dequantize(params, dtype):
  """`params` with every `kernel_q`/`kernel_scale` pair as a float `kernel` of
  `dtype` (or a dict: the projection's path -> its dtype), placed like the codes."""
  flat = flax.traverse_util.flatten_dict(params)
  out = {}
  for k, v in flat.items():
    if k[-1] == SCALE:
      continue
    if k[-1] != CODES:
      out[k] = v
      continue
    sharding = getattr(v, "sharding", None)
    fn = jax.jit(functools.partial(weight, dtype=dtype[k[:-1]] if isinstance(dtype, dict) else dtype),
                 out_shardings=sharding if isinstance(sharding, jax.sharding.NamedSharding)
                 else None)
    out[(*k[:-1], "kernel")] = fn(v, flat[(*k[:-1], SCALE)])
  return flax.traverse_util.unflatten_dict(out)
