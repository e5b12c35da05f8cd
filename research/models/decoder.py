"""Decoder-only transformer: Llama-style by default (RMSNorm, RoPE, GQA, SwiGLU).

The config selects the variants of the Llama 2/3, Mistral, Qwen2/3, Gemma 1-3,
OLMo 2, Phi-3 and GPT-2 families: LayerNorm with bias or Gemma's (1 + w) RMSNorm,
norms before, around (Gemma 2/3) or after (OLMo 2) each sub-block, q/k RMSNorm,
GeGLU or a plain GELU MLP with biases, q/k/v biases, Llama-3 RoPE scaling or
learned absolute positions, the sqrt(d) embedding scale, tied unembedding,
attention- and final-logit soft-capping, and sliding-window (local) layers
mixed with global ones, each with its own RoPE base.

Every parameter is created with logical axis names (`vocab`, `embed`, `heads`,
`kv_heads`, `kv`, `mlp`, `norm`, `layers`) and the main activations carry
`act_*` names, so the sharding layout is a config change (see
`research/training/partitioning.py`).

Shapes in names: B batch, L query length, S key length, D d_model, H query
heads, K kv heads, G = H // K, E head dim, F mlp dim, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.models import quantize
from research.models.config import DecoderConfig

# Logical names of the activations, mapped to mesh axes by the config's rules.
ACT_BxLxD = ("act_batch", "act_length", "act_embed")
ACT_BxLxF = ("act_batch", "act_length", "act_mlp")
ACT_BxLxHxE = ("act_batch", "act_length", "act_heads", "act_kv")
ACT_BxLxKxE = ("act_batch", "act_length", "act_kv_heads", "act_kv")
CACHE_K_BxKxExS = ("act_batch", "act_kv_heads", "act_kv", "act_length")  # KV-cache layouts
CACHE_V_BxKxSxE = ("act_batch", "act_kv_heads", "act_length", "act_kv")
ACT_BxLxV = ("act_batch", "act_length", "act_vocab")

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _constrain(x, names):
  return nn.with_logical_constraint(x, names)


def dense(x, kernel, num_in_dims: int, matmul: str = "auto"):
  """Contracts the last `num_in_dims` of x with the first of `kernel`.

  `matmul="gemm"` flattens the leading dims into rows and the kernel into one 2-D
  GEMM whose backward is written out (`_gemm`): on XLA:CPU a dot that contracts
  over (batch, length) in the backward pass is markedly slower than the same
  FLOPs as a plain matrix product (see bench/README.md). `"dot"` keeps the
  kernel's dims and autodiff's backward: flattening a sharded kernel cost GSPMD
  resharding (`small` on 8 simulated devices: 1.2 -> 1.8 s). `"auto"` (the
  default, `DecoderConfig.matmul`) takes gemm on one device and dot on a mesh;
  the two are the same product, so tests can run either path anywhere.
  """
  if matmul == "auto":
    matmul = "dot" if jax.sharding.get_abstract_mesh().size > 1 else "gemm"
  lead = x.shape[:x.ndim - num_in_dims]
  in_shape, out_shape = kernel.shape[:num_in_dims], kernel.shape[num_in_dims:]
  if matmul == "dot":
    out = jnp.tensordot(x.reshape(-1, *in_shape), kernel, axes=num_in_dims)
    return out.reshape(*lead, *out_shape)
  rows_NxI = x.reshape(-1, math.prod(in_shape))
  out_NxO = _gemm(rows_NxI, kernel.reshape(math.prod(in_shape), -1))
  return out_NxO.reshape(*lead, *out_shape)


@jax.custom_vjp
def _gemm(x_NxI, w_IxO):
  return jnp.dot(x_NxI, w_IxO)


def _gemm_fwd(x_NxI, w_IxO):
  return jnp.dot(x_NxI, w_IxO), (x_NxI, w_IxO)


def _gemm_bwd(res, g_NxO):
  """The two products autodiff derives, written out so that XLA:CPU sees the
  kernel gradient as one dot contracting the rows, which it runs without a copy.
  From autodiff's form it chose to materialise the larger operand transposed,
  fused with the gate/up gradient's pads (~10 ms per layer; bench/README.md)."""
  x_NxI, w_IxO = res
  dx_NxI = jnp.dot(g_NxO, w_IxO.T)
  dw_IxO = jax.lax.dot_general(x_NxI, g_NxO, (((0,), (0,)), ((), ())))
  return dx_NxI.astype(x_NxI.dtype), dw_IxO.astype(w_IxO.dtype)


_gemm.defvjp(_gemm_fwd, _gemm_bwd)


class Projection(nn.Module):
  """A linear map; the kernel is `in_shape + out_shape` with logical `names`, the
  optional bias `out_shape` (zero init).

  Fan-in variance-scaling init keeps activations O(1).
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  names: tuple[str, ...]
  dtype: Any
  param_dtype: Any
  init_scale: float = 1.0
  use_bias: bool = False
  matmul: str = "auto"  # DecoderConfig.matmul
  lora_rank: int = 0    # a LoRA adapter of this rank (0: none); DecoderConfig.adapters
  lora_alpha: float = 16.0
  quantized: bool = False  # the kernel held as frozen int8 codes + scales (models/quantize.py)

  def setup(self):
    n_in, n_out = len(self.in_shape), len(self.out_shape)
    init = nn.initializers.variance_scaling(
        self.init_scale, "fan_in", "truncated_normal",
        in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
    if self.quantized:  # QLoRA: a frozen int8 base (restored from a float checkpoint)
      self.kernel_q = self.param("kernel_q", nn.with_logical_partitioning(
          nn.initializers.zeros, self.names), self.in_shape + self.out_shape, jnp.int8)
      self.kernel_scale = self.param("kernel_scale", nn.with_logical_partitioning(
          nn.initializers.ones, self.names[n_in:]), self.out_shape, jnp.float32)
    else:
      self.kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names),
                               self.in_shape + self.out_shape, self.param_dtype)
    if self.use_bias:
      self.bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, self.names[n_in:]), self.out_shape, self.param_dtype)
    if self.lora_rank:
      # LoRA (Hu et al. 2021, eq. 3): h = W x + (alpha / r) B A x with B = 0 at the
      # start, so the adapted model starts as the base. A is initialised like
      # PEFT's (Kaiming uniform, bound 1 / sqrt(fan_in)); each factor is sharded
      # like the kernel dims it shares, the rank replicated.
      a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                                in_axis=tuple(range(n_in)), out_axis=(n_in,))
      self.lora_a = self.param("lora_a", nn.with_logical_partitioning(
          a_init, self.names[:n_in] + ("lora",)), self.in_shape + (self.lora_rank,),
          self.param_dtype)
      self.lora_b = self.param("lora_b", nn.with_logical_partitioning(
          nn.initializers.zeros, ("lora",) + self.names[n_in:]),
          (self.lora_rank,) + self.out_shape, self.param_dtype)

  def weight(self, dtype):
    """The kernel in `dtype` (an int8 base's codes times their scales)."""
    if self.quantized:
      return quantize.weight(self.kernel_q, self.kernel_scale, dtype)
    return self.kernel.astype(dtype)

  def lora_delta(self, x):
    """(alpha / r) B A x: the adapter's part of the output."""
    a = dense(x.astype(self.dtype), self.lora_a.astype(self.dtype), len(self.in_shape),
              self.matmul)
    return dense(a, self.lora_b.astype(self.dtype), 1, self.matmul) * (
        self.lora_alpha / self.lora_rank)

  def __call__(self, x):
    out = dense(x.astype(self.dtype), self.weight(self.dtype), len(self.in_shape), self.matmul)
    if self.lora_rank:
      out = out + self.lora_delta(x)
    if not self.use_bias:
      return out
    return out + self.bias.astype(self.dtype).reshape((1,) * (out.ndim - self.bias.ndim)
                                                      + self.bias.shape)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32.

  The scale is `offset + w`: offset 0 (w init 1) for Llama, 1 (w init 0) for Gemma.
  """

  eps: float
  dtype: Any
  param_dtype: Any
  offset: float = 0.0

  @nn.compact
  def __call__(self, x_BxLxD):
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)),
                       (x_BxLxD.shape[-1],), self.param_dtype)
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    scale = (self.offset + scale.astype(jnp.float32)).reshape((1,) * (x.ndim - 1) + (-1,))
    return (x * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias (Ba et al. 2016; GPT-2), computed in float32."""

  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BxLxD):
    d = x_BxLxD.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      (d,), self.param_dtype)
    x = x_BxLxD.astype(jnp.float32)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * scale.astype(jnp.float32)[None, None, :]
            + bias.astype(jnp.float32)[None, None, :]).astype(self.dtype)


def make_norm(cfg: DecoderConfig, name: str) -> nn.Module:
  if cfg.norm == "layer":
    return LayerNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
  return RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, cfg.norm_offset, name=name)


_ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
                "gelu": lambda x: nn.gelu(x, approximate=False)}


def rope_frequencies(cfg: DecoderConfig):
  """Inverse frequencies theta^(-2i/E), with Llama 3's or linear scaling applied.

  Llama 3 (`rope_type: llama3` in HF): wavelengths longer than
  original_max_len / low_freq_factor are divided by `factor`, those shorter than
  original_max_len / high_freq_factor kept, and the band between interpolated.
  """
  half = cfg.head_dim // 2
  inv_freq = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if cfg.rope_scaling == "linear":
    return inv_freq / cfg.rope_factor
  if cfg.rope_scaling == "llama3":
    wavelen = 2 * jnp.pi / inv_freq
    low_wavelen = cfg.rope_original_max_len / cfg.rope_low_freq_factor
    high_wavelen = cfg.rope_original_max_len / cfg.rope_high_freq_factor
    smooth = (cfg.rope_original_max_len / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    blended = (1 - smooth) * inv_freq / cfg.rope_factor + smooth * inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    middle = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(middle, blended, scaled)
  return inv_freq


def apply_rope(x_BxLxNxE, positions_BxL, theta: float | None = None, inv_freq=None):
  """Rotary position embedding (Su et al. 2021), rotate-half convention.

  The same convention as Hugging Face's Llama family (`rotate_half`), whose q/k
  weights are already permuted from Meta's interleaved layout, so imported q/k
  kernels need no permutation here.
  """
  half = x_BxLxNxE.shape[-1] // 2
  if inv_freq is None:
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLx1xE2 = positions_BxL.astype(jnp.float32)[:, :, None, None] * inv_freq[None, None, None]
  sin, cos = jnp.sin(angles_BxLx1xE2), jnp.cos(angles_BxLx1xE2)
  x = x_BxLxNxE.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxE.dtype)


def attention_mask(q_segment_BxL, kv_segment_BxS, q_index_BxL, kv_index_BxS, window: int = 0):
  """Causal mask within a segment; segment id 0 marks padding (never attended).

  With `window` > 0, a query sees only the keys less than `window` indices back
  (itself included): sliding-window attention, HF's `kv_idx > q_idx - window`.
  Indices are positions in the row or cache slots; within a segment (and for a
  left-padded row's real tokens) their differences are token distances.
  """
  same_segment = q_segment_BxL[:, :, None] == kv_segment_BxS[:, None, :]
  distance_BxLxS = q_index_BxL[:, :, None] - kv_index_BxS[:, None, :]
  real_key = (kv_segment_BxS != 0)[:, None, :]
  mask = same_segment & (distance_BxLxS >= 0) & real_key  # BxLxS
  return mask & (distance_BxLxS < window) if window else mask


def _attention_probs(logits_BxKxGxLxS, mask_BxLxS, scale: float, softcap: float, dtype):
  """Scaled (and soft-capped, Gemma 2), masked softmax in float32; a row with no
  visible key gets a finite large negative everywhere (a finite average, not NaN)."""
  logits = logits_BxKxGxLxS * jnp.float32(scale)
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(mask_BxLxS[:, None, None], logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def grouped_query_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, mask_BxLxS, block: int = 0, *,
                            scale: float | None = None, softcap: float = 0.0, window: int = 0):
  """Softmax attention with K kv heads shared by groups of H // K query heads.

  Logits are q.k * `scale` (default E^-1/2), then soft-capped if `softcap`.

  Logits and softmax run in float32. A query row with no visible key (a padding
  position) gets a finite large negative everywhere, so its output is a finite
  average instead of NaN; such rows are masked out of every loss.

  With `block` > 0 dividing L (causal self-attention, S = L: a key after its
  query is always masked) the queries run in blocks of `block`, block i against
  keys [0, (i + 1) * block): the masked blocks above the diagonal are skipped,
  (C + 1) / 2C of the work for C blocks, and every real row's output is the same.
  With a sliding `window` (the mask already holds it) block i also skips the keys
  before i - window + 1, which no query of the block sees: local layers cost
  O(L * window), not O(L^2).
  """
  l, s = q_BxLxHxE.shape[1], k_BxSxKxE.shape[1]
  if 0 < block < l and l % block == 0 and s == l:
    outs = []
    for i in range(0, l, block):
      start = max(0, i - window + 1) if window else 0  # the first key the block sees
      outs.append(grouped_query_attention(
          q_BxLxHxE[:, i:i + block], k_BxSxKxE[:, start:i + block], v_BxSxKxE[:, start:i + block],
          mask_BxLxS[:, i:i + block, start:i + block], scale=scale, softcap=softcap))
    return jnp.concatenate(outs, axis=1)
  b, l, h, e = q_BxLxHxE.shape
  k = k_BxSxKxE.shape[2]
  q_BxLxKxGxE = q_BxLxHxE.reshape(b, l, k, h // k, e)
  logits_BxKxGxLxS = jnp.einsum("blkge,bske->bkgls", q_BxLxKxGxE, k_BxSxKxE,
                                preferred_element_type=jnp.float32)
  probs = _attention_probs(logits_BxKxGxLxS, mask_BxLxS, e ** -0.5 if scale is None else scale,
                           softcap, v_BxSxKxE.dtype)
  out_BxLxKxGxE = jnp.einsum("bkgls,bske->blkge", probs, v_BxSxKxE)
  return out_BxLxKxGxE.reshape(b, l, h, e)


def _write_cache(cache_BxKx__, new_BxKx__, index, axis: int):
  """Writes `new` into the cache along `axis` at `index`: one slot shared by every
  row (an in-place dynamic-update-slice), or one per row (a B-vector: rows at
  different lengths, `research.continuous_batching`; a scatter)."""
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache_BxKx__, new_BxKx__, index, axis=axis)
  write = lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis=axis - 1)
  return jax.vmap(write)(cache_BxKx__, new_BxKx__, index)


def cached_attention(q_BxLxHxE, k_BxKxExS, v_BxKxSxE, mask_BxLxS, *,
                     scale: float | None = None, softcap: float = 0.0):
  """`grouped_query_attention` against the KV cache's layout (`init_cache`)."""
  b, l, h, e = q_BxLxHxE.shape
  k = k_BxKxExS.shape[1]
  q_BxKxGxLxE = q_BxLxHxE.reshape(b, l, k, h // k, e).transpose(0, 2, 3, 1, 4)
  logits_BxKxGxLxS = jnp.einsum("bkgle,bkes->bkgls", q_BxKxGxLxE, k_BxKxExS,
                                preferred_element_type=jnp.float32)
  probs = _attention_probs(logits_BxKxGxLxS, mask_BxLxS, e ** -0.5 if scale is None else scale,
                           softcap, v_BxKxSxE.dtype)
  out_BxKxGxLxE = jnp.einsum("bkgls,bkse->bkgle", probs, v_BxKxSxE)
  return out_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(b, l, h, e)


def pick(local, local_value, global_value):
  """A local layer's value or a global one's. `local` is a Python bool in an
  unscanned stack, a traced per-layer flag under nn.scan (then both are computed
  and one selected); a None `local_value` means no layer differs."""
  if local_value is None:
    return global_value
  if isinstance(local, (bool, np.bool_)):
    return local_value if local else global_value
  return jax.tree.map(lambda a, b: jnp.where(local, a, b), local_value, global_value)


def local_rope_frequencies(cfg: DecoderConfig):
  """Local layers' own unscaled RoPE base (Gemma 3), or None: the same as global."""
  if not cfg.rope_local_theta or not any(cfg.local_layers()):
    return None
  return rope_frequencies(dataclasses.replace(cfg, rope_theta=cfg.rope_local_theta,
                                              rope_scaling="none"))


class QKNorm(nn.Module):
  """RMSNorm of queries or keys (BxLxNxE): over each head's E (Qwen3, Gemma 3),
  or over all N*E at once (OLMo 2's norm of the whole projection)."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxNxE):
    c = self.cfg
    norm = RMSNorm(c.norm_eps, c.compute_dtype, c.weight_dtype, c.norm_offset, name="norm")
    if c.qk_norm == "head":
      return norm(x_BxLxNxE)
    b, l, n, e = x_BxLxNxE.shape
    return norm(x_BxLxNxE.reshape(b, l, n * e)).reshape(b, l, n, e)


class Attention(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, cache=None, cache_index=None,
               inv_freq=None, window: int = 0):
    """With `cache` ({'k', 'v'}: BxKxSxE), writes this call's keys and values at
    slots [cache_index, cache_index + L) (a scalar, or one index per row: B) and
    attends over all S slots; returns (output, updated cache). Without, attends
    within x; returns (output, None).
    `inv_freq`: this layer's RoPE frequencies (default: `rope_frequencies`);
    `window`: this layer's sliding window when known statically (query blocks skip
    the keys outside it; the mask holds it either way)."""
    c = self.cfg
    dt, pdt = c.compute_dtype, c.weight_dtype
    d, h, k, e = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
    bias = c.qkv_bias
    q = Projection((d,), (h, e), ("embed", "heads", "kv"), dt, pdt, use_bias=bias,
                   matmul=c.matmul, **c.adapters("query"), name="query")(x_BxLxD)
    kk = Projection((d,), (k, e), ("embed", "kv_heads", "kv"), dt, pdt, use_bias=bias,
                    matmul=c.matmul, **c.adapters("key"), name="key")(x_BxLxD)
    v = Projection((d,), (k, e), ("embed", "kv_heads", "kv"), dt, pdt, use_bias=bias,
                   matmul=c.matmul, **c.adapters("value"), name="value")(x_BxLxD)
    if c.qk_norm != "none":
      q, kk = QKNorm(c, name="query_norm")(q), QKNorm(c, name="key_norm")(kk)
    if c.positions == "rope":
      inv_freq = rope_frequencies(c) if inv_freq is None else inv_freq
      q = apply_rope(q, positions_BxL, inv_freq=inv_freq)
      kk = apply_rope(kk, positions_BxL, inv_freq=inv_freq)
    q, kk = _constrain(q, ACT_BxLxHxE), _constrain(kk, ACT_BxLxKxE)
    v = _constrain(v, ACT_BxLxKxE)
    scale = (c.query_scale or e) ** -0.5
    if cache is not None:
      # Laid out for the two batched matmuls over (batch, kv head): keys as E x S
      # (q k^T is then a plain GEMM per head; measured 3.4x faster on CPU than
      # S x E), values as S x E. A slots-first cache was transposed every step.
      k_BxKxExL = kk.astype(cache["k"].dtype).transpose(0, 2, 3, 1)
      v_BxKxLxE = v.astype(cache["v"].dtype).transpose(0, 2, 1, 3)
      cache = {"k": _constrain(_write_cache(cache["k"], k_BxKxExL, cache_index, axis=3),
                               CACHE_K_BxKxExS),
               "v": _constrain(_write_cache(cache["v"], v_BxKxLxE, cache_index, axis=2),
                               CACHE_V_BxKxSxE)}
      out_BxLxHxE = cached_attention(q, cache["k"], cache["v"], mask_BxLxS, scale=scale,
                                     softcap=c.attn_softcap)
    else:
      out_BxLxHxE = grouped_query_attention(q, kk, v, mask_BxLxS, c.attention_block,
                                            scale=scale, softcap=c.attn_softcap, window=window)
    out_BxLxHxE = _constrain(out_BxLxHxE, ACT_BxLxHxE)
    out = Projection((h, e), (d,), ("heads", "kv", "embed"), dt, pdt,
                     init_scale=c.out_init_scale, use_bias=c.out_bias, matmul=c.matmul,
                     **c.adapters("out"), name="out")(out_BxLxHxE)
    return out, cache


class MLP(nn.Module):
  """Gated: act(x W_gate) * (x W_up) W_down (SwiGLU with silu, GeGLU with gelu;
  Shazeer 2020). Plain: act(x W_up + b) W_down + b (GPT-2)."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    c = self.cfg
    dt, pdt = c.compute_dtype, c.weight_dtype
    act = _ACTIVATIONS[c.activation]
    proj = lambda name: Projection((c.d_model,), (c.mlp_dim,), ("embed", "mlp"), dt, pdt,
                                   use_bias=c.mlp_bias, matmul=c.matmul, **c.adapters(name),
                                   name=name)
    up = proj("up")
    if c.mlp == "gated":
      gate = proj("gate")
      # One GEMM for both: stacked (not concatenated), so a tensor-sharded `mlp`
      # axis stays sharded the same way.
      kernel_Dx2xF = jnp.stack([gate.weight(dt), up.weight(dt)], axis=1)
      gate_up_BxLx2xF = dense(x_BxLxD.astype(dt), kernel_Dx2xF, 1, c.matmul)
      if c.mlp_bias:
        gate_up_BxLx2xF += jnp.stack([gate.bias, up.bias]).astype(dt)[None, None]
      gate_BxLxF, up_BxLxF = gate_up_BxLx2xF[..., 0, :], gate_up_BxLx2xF[..., 1, :]
      if gate.lora_rank:
        gate_BxLxF = gate_BxLxF + gate.lora_delta(x_BxLxD)
      if up.lora_rank:
        up_BxLxF = up_BxLxF + up.lora_delta(x_BxLxD)
      hidden_BxLxF = act(gate_BxLxF) * up_BxLxF
    else:
      hidden_BxLxF = act(up(x_BxLxD))
    hidden_BxLxF = _constrain(hidden_BxLxF, ACT_BxLxF)
    return Projection((c.mlp_dim,), (c.d_model,), ("mlp", "embed"), dt, pdt,
                      init_scale=c.out_init_scale, use_bias=c.mlp_bias, matmul=c.matmul,
                      **c.adapters("down"), name="down")(hidden_BxLxF)


class Block(nn.Module):
  """Transformer block, norms placed by `norm_placement`. Returns (x, this
  layer's cache or None), the carry/output shape nn.scan stacks over layers.

  `masks` and `inv_freqs` are (global, local) pairs (local None: as global);
  `local` says which this layer uses (a bool, or a traced flag under nn.scan).
  """

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, masks, cache=None, cache_index=None, local=False,
               inv_freqs=(None, None)):
    c = self.cfg
    pre, post = c.norm_placement != "post", c.norm_placement != "pre"
    mask_BxLxS = pick(local, masks[1], masks[0])
    inv_freq = pick(local, inv_freqs[1], inv_freqs[0])
    h_BxLxD = make_norm(c, "attention_norm")(x_BxLxD) if pre else x_BxLxD
    # Unrolled, a layer knows statically whether it is local; scanned, it is traced.
    window = c.sliding_window if isinstance(local, (bool, np.bool_)) and local else 0
    attended, cache = Attention(c, name="attention")(h_BxLxD, positions_BxL, mask_BxLxS, cache,
                                                     cache_index, inv_freq, window)
    if post:
      attended = make_norm(c, "attention_post_norm")(attended)
    x_BxLxD = x_BxLxD + attended
    h_BxLxD = make_norm(c, "mlp_norm")(x_BxLxD) if pre else x_BxLxD
    out_BxLxD = MLP(c, name="mlp")(h_BxLxD)
    if post:
      out_BxLxD = make_norm(c, "mlp_post_norm")(out_BxLxD)
    return _constrain(x_BxLxD + out_BxLxD, ACT_BxLxD), cache


def _block_class(cfg: DecoderConfig):
  if cfg.remat == "none":
    return Block
  if cfg.remat not in _REMAT_POLICIES:
    raise ConfigError(f"model.remat={cfg.remat!r}; expected one of "
                      f"{['none', *_REMAT_POLICIES]}")
  # Under scan the loop already prevents CSE across layers (flax docs).
  return nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class Decoder(nn.Module):
  """Token ids -> next-token logits.

  `segment_ids` (0 = padding) keep packed documents from attending to each other;
  `positions` restart per document for RoPE. Both default to one unpadded
  document per row. `trunk` returns the final normalised hidden states, which
  the reward and value heads read.
  """

  cfg: DecoderConfig

  def setup(self):
    c = self.cfg
    # Small init + sqrt(D) input scale: an O(1) residual stream.
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(c.d_model ** -0.5), ("vocab", "embed")),
        (c.vocab_size, c.d_model), c.weight_dtype)
    if c.positions == "learned":
      self.position_embedding = self.param(
          "position_embedding",
          nn.with_logical_partitioning(nn.initializers.normal(0.01), ("length", "embed")),
          (c.max_len, c.d_model), c.weight_dtype)
    block = _block_class(c)
    if c.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, 0, nn.broadcast),
          length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(c, name="layers")
    else:
      self.layers = [block(c, name=f"layer_{i}") for i in range(c.num_layers)]
    self.final_norm = make_norm(c, "final_norm")
    if not c.tie_embeddings:
      self.unembed = Projection((c.d_model,), (c.vocab_size,), ("embed", "vocab"),
                                c.compute_dtype, c.weight_dtype, matmul=c.matmul,
                                name="unembed")

  def _embed(self, tokens_BxL, positions_BxL):
    c = self.cfg
    # Gather the (fsdp/tensor-sharded) table first: a gather from a sharded table
    # into batch-sharded activations makes GSPMD replicate the result instead.
    table_VxD = _constrain(self.embedding, (None, "act_embed"))
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(c.compute_dtype)
    if c.embed_scale:  # the scale is rounded to the compute dtype first, as in Gemma
      x_BxLxD = x_BxLxD * jnp.sqrt(c.d_model).astype(c.compute_dtype)
    if c.positions == "learned":
      table_PxD = _constrain(self.position_embedding, (None, "act_embed"))
      x_BxLxD = x_BxLxD + jnp.take(table_PxD, positions_BxL, axis=0).astype(c.compute_dtype)
    return _constrain(x_BxLxD, ACT_BxLxD)

  def _masks(self, q_segment_BxL, kv_segment_BxS, q_index_BxL, kv_index_BxS):
    """(global mask, local mask or None when no layer is local)."""
    c = self.cfg
    full = attention_mask(q_segment_BxL, kv_segment_BxS, q_index_BxL, kv_index_BxS)
    if not any(c.local_layers()):
      return full, None
    return full, attention_mask(q_segment_BxL, kv_segment_BxS, q_index_BxL, kv_index_BxS,
                                c.sliding_window)

  def _layers(self, x_BxLxD, positions_BxL, masks, cache, cache_index):
    c = self.cfg
    local_layers = c.local_layers()
    inv_freqs = (None, None)
    if c.positions == "rope":
      inv_freqs = (rope_frequencies(c), local_rope_frequencies(c))
    if c.scan_layers:
      return self.layers(x_BxLxD, positions_BxL, masks, cache, cache_index,
                         jnp.asarray(local_layers), inv_freqs)
    # Unscanned, the cache is one buffer per layer (`init_cache`): each step's
    # write is an in-place update of that buffer, where slicing a stacked cache
    # and stacking it back copied the whole cache on every decoded token.
    new_caches = []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else cache[i]
      x_BxLxD, layer_cache = layer(x_BxLxD, positions_BxL, masks, layer_cache, cache_index,
                                   local_layers[i], inv_freqs)
      new_caches.append(layer_cache)
    return x_BxLxD, (None if cache is None else tuple(new_caches))

  def trunk(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None):
    """Final hidden states, BxLxD, in the compute dtype."""
    b, l = tokens_BxL.shape
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, l), jnp.int32)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    index_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    masks = self._masks(segment_ids_BxL, segment_ids_BxL, index_BxL, index_BxL)
    x_BxLxD, _ = self._layers(self._embed(tokens_BxL, positions_BxL), positions_BxL, masks,
                              None, None)
    return self.final_norm(x_BxLxD)

  def decode(self, tokens_BxT, positions_BxT, kv_valid_BxS, cache, cache_index):
    """Runs T new tokens against a KV cache (prefill: T = prompt width; decode: 1).

    The tokens occupy cache slots [cache_index, cache_index + T) (`cache_index`:
    a scalar, or one per row, B, for rows at different lengths); each attends to
    every valid slot at or before its own (within the window in local layers).
    `kv_valid_BxS` marks the slots that hold real tokens (after this call's
    writes). Returns (hidden_BxTxD, cache).
    """
    b, t = tokens_BxT.shape
    s = kv_valid_BxS.shape[1]
    start_Bx1 = jnp.reshape(cache_index, (-1, 1))
    q_index_BxT = jnp.broadcast_to(start_Bx1 + jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    kv_index_BxS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    masks = self._masks(jnp.ones((b, t), jnp.int32), kv_valid_BxS.astype(jnp.int32),
                        q_index_BxT, kv_index_BxS)
    x_BxTxD, cache = self._layers(self._embed(tokens_BxT, positions_BxT), positions_BxT,
                                  masks, cache, cache_index)
    return self.final_norm(x_BxTxD), cache

  def unembedding(self):
    """The D x V unembedding matrix, in the compute dtype."""
    c = self.cfg
    if c.tie_embeddings:
      return self.embedding.astype(c.compute_dtype).T
    return self.unembed.kernel.astype(c.compute_dtype)

  def target_logprobs(self, tokens_BxL, targets_BxL, positions_BxL=None, segment_ids_BxL=None,
                      temperature: float = 1.0):
    """log p(target), log Z and the largest logit per position (`target_logprobs`),
    `cfg.vocab_chunk` positions at a time."""
    hidden_BxLxD = self.trunk(tokens_BxL, positions_BxL, segment_ids_BxL)
    return target_logprobs(hidden_BxLxD, self.unembedding(), targets_BxL, self.cfg.vocab_chunk,
                           self.cfg.logit_softcap, temperature, self.cfg.matmul)

  def logits(self, hidden_BxLxD):
    """Unembedding; logits are returned in float32 for a stable softmax."""
    c = self.cfg
    if c.tie_embeddings:
      logits = jnp.einsum("bld,vd->blv", hidden_BxLxD,
                          self.embedding.astype(c.compute_dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = self.unembed(hidden_BxLxD)
    logits = logits.astype(jnp.float32)
    if c.logit_softcap:  # Gemma 2
      logits = c.logit_softcap * jnp.tanh(logits / c.logit_softcap)
    return _constrain(logits, ACT_BxLxV)

  def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None):
    return self.logits(self.trunk(tokens_BxL, positions_BxL, segment_ids_BxL))


def target_logprobs(hidden_BxLxD, unembed_DxV, targets_BxL, chunk: int = 0, softcap: float = 0.0,
                    temperature: float = 1.0, matmul: str = "auto"):
  """(log p(target), log Z, max logit), each BxL, from hidden states: the logits
  (soft-capped, then divided by `temperature`) in float32.

  With `chunk` > 0 the positions go `chunk` at a time through a loop whose body
  is rematerialised: the forward keeps only each chunk's three outputs and the
  backward recomputes one chunk's logits at a time, so peak memory holds
  B x chunk x V logits instead of B x L x V (Liger / Cut-Cross-Entropy style,
  Wijmans et al. 2024, on sequence chunks). The values are the same.
  """
  def head(h_BxCxD, t_BxC):
    logits = dense(h_BxCxD, unembed_DxV, 1, matmul).astype(jnp.float32)
    if softcap:
      logits = softcap * jnp.tanh(logits / softcap)
    logits = logits / temperature
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
    return target - log_z, log_z, jnp.max(logits, axis=-1)

  b, l, d = hidden_BxLxD.shape
  if not chunk or chunk >= l:
    return head(hidden_BxLxD, targets_BxL)
  pad = (-l) % chunk
  n = (l + pad) // chunk
  h_NxBxCxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0))).reshape(
      b, n, chunk, d).swapaxes(0, 1)
  t_NxBxC = jnp.pad(targets_BxL, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  outs = jax.lax.map(jax.checkpoint(lambda xs: head(*xs)), (h_NxBxCxD, t_NxBxC))
  return tuple(o.swapaxes(0, 1).reshape(b, n * chunk)[:, :l] for o in outs)


def init_cache(cfg: DecoderConfig, batch: int, length: int):
  """Zeroed KV cache: keys (batch, kv heads, head dim, length), values (batch, kv
  heads, length, head dim). Scanned layers: {'k', 'v'} with a leading layers
  axis, what nn.scan slices per layer; unscanned: a tuple of one {'k', 'v'} per
  layer, each updated in place."""
  b, k, e, s, dt = batch, cfg.num_kv_heads, cfg.head_dim, length, cfg.compute_dtype
  layers = (cfg.num_layers,) if cfg.scan_layers else ()
  one = lambda: {"k": jnp.zeros(layers + (b, k, e, s), dt),
                 "v": jnp.zeros(layers + (b, k, s, e), dt)}
  return one() if cfg.scan_layers else tuple(one() for _ in range(cfg.num_layers))


def cache_axes(cache: dict) -> dict:
  """Logical axis names of one layer's (or the stacked layers') cache arrays."""
  layers = ("layers",) if cache["k"].ndim == 5 else ()
  return {"k": layers + CACHE_K_BxKxExS, "v": layers + CACHE_V_BxKxSxE}


def stack_layer_params(params: dict, num_layers: int) -> dict:
  """Converts unscanned params (layer_0..layer_N-1) to the scanned layout."""
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  layers = [params[f"layer_{i}"] for i in range(num_layers)]
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def unstack_layer_params(params: dict) -> dict:
  """Inverse of `stack_layer_params`."""
  out = {k: v for k, v in params.items() if k != "layers"}
  n = jax.tree.leaves(params["layers"])[0].shape[0]
  for i in range(n):
    out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out
