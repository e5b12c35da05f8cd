"""The CLM / SFT loss over vocabulary chunks, its gradient computed in the forward pass.

`decoder.target_logprobs` with `vocab_chunk` keeps only a chunk's logits at a
time, but its backward recomputes every chunk's logits: one more V x D matmul
per token than the whole-logits loss (+15% on a vocabulary-bound model,
bench/README.md). A CLM or SFT loss knows, before the forward pass, how much
each position weighs:

  loss = sum_t w_t * (-log p(y_t) + z * lse_t^2),   lse_t = log sum_v exp z_tv

with w_t from the loss mask alone (token or sequence normalisation,
`objectives/clm.py`), so each chunk's gradient can be finished while its logits
are at hand (Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024; the
chunked loss of Wijmans et al. 2024, without a custom kernel):

  dL/dz_tv = w_t * (p_tv * (1 + 2 z lse_t) - [v = y_t])   (times 1 - tanh^2 under a softcap)
  dL/dh_t  = dL/dz_t W^T,   dL/dW = sum_t h_t^T dL/dz_t

The forward keeps dL/dh (B x L x D) and dL/dW (D x V); the backward only scales
them by the loss's cotangent. Three matmuls per token, as without chunks, and
never more than B x chunk x V logits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from research.models.decoder import dense


def _chunks(x_BxL_, chunk: int):
  """B x L x ... -> N x B x chunk x ... (zero-padded to a whole number of chunks)."""
  b, l = x_BxL_.shape[:2]
  pad = (-l) % chunk
  x = jnp.pad(x_BxL_, ((0, 0), (0, pad)) + ((0, 0),) * (x_BxL_.ndim - 2))
  return x.reshape(b, (l + pad) // chunk, chunk, *x_BxL_.shape[2:]).swapaxes(0, 1)


def _unchunk(x_NxBxC, l: int):
  n, b, c = x_NxBxC.shape[:3]
  return x_NxBxC.swapaxes(0, 1).reshape(b, n * c, *x_NxBxC.shape[3:])[:, :l]


def _logits(h_BxCxD, unembed_DxV, softcap: float, matmul: str):
  """Float32 logits of a chunk, and tanh(raw / cap) when soft-capped (for the backward)."""
  raw = dense(h_BxCxD, unembed_DxV, 1, matmul).astype(jnp.float32)
  if not softcap:
    return raw, None
  t = jnp.tanh(raw / softcap)
  return softcap * t, t


def _stats(logits, t_BxC):
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
  return target - log_z, log_z, jnp.max(logits, axis=-1)


def _forward(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, z_coef, chunk, softcap,
             matmul, with_grads: bool):
  b, l, d = hidden_BxLxD.shape
  v = unembed_DxV.shape[1]
  xs = (_chunks(hidden_BxLxD, chunk), _chunks(targets_BxL, chunk),
        _chunks(weights_BxL.astype(jnp.float32), chunk))

  def body(carry, x):
    loss, dw_DxV = carry
    h, t, w = x
    logits, tanh = _logits(h, unembed_DxV, softcap, matmul)
    logp, log_z, top = _stats(logits, t)
    # Positions of weight 0 are selected away, not multiplied by 0: a non-finite
    # logit at a padding position must not reach the loss or the gradients.
    used = w != 0
    loss = loss + jnp.sum(jnp.where(used, w * (-logp + z_coef * jnp.square(log_z)), 0.0))
    if not with_grads:
      return (loss, dw_DxV), (logp, log_z, top, None)
    p = jnp.exp(logits - log_z[..., None])
    g = (w * (1.0 + 2.0 * z_coef * log_z))[..., None] * p
    g = g - jax.nn.one_hot(t, v, dtype=jnp.float32) * w[..., None]
    if softcap:
      g = g * (1.0 - jnp.square(tanh))
    g = jnp.where(used[..., None], g, 0.0)
    g = g.astype(unembed_DxV.dtype)
    dh = jax.lax.dot_general(g, unembed_DxV, (((2,), (1,)), ((), ())))  # g W^T, no copy of W^T
    dw_DxV = dw_DxV + jax.lax.dot_general(
        h.reshape(-1, d), g.reshape(-1, v), (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32)
    return (loss, dw_DxV), (logp, log_z, top, dh)

  zero_dw = jnp.zeros((d, v) if with_grads else (), jnp.float32)
  (loss, dw_DxV), (logp, log_z, top, dh) = jax.lax.scan(body, (jnp.float32(0.0), zero_dw), xs)
  stats = tuple(_unchunk(s, l) for s in (logp, log_z, top))
  grads = None if not with_grads else (_unchunk(dh, l).astype(hidden_BxLxD.dtype),
                                       dw_DxV.astype(unembed_DxV.dtype))
  return loss, stats, grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _weighted_loss(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, z_coef, chunk, softcap,
                   matmul):
  loss, stats, _ = _forward(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, z_coef, chunk,
                            softcap, matmul, with_grads=False)
  return loss, stats


def _weighted_loss_fwd(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, z_coef, chunk,
                       softcap, matmul):
  loss, stats, grads = _forward(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, z_coef,
                                chunk, softcap, matmul, with_grads=True)
  return (loss, stats), grads


def _weighted_loss_bwd(z_coef, chunk, softcap, matmul, res, cotangents):
  """The loss's cotangent scales the gradients kept from the forward pass. The
  statistics are for metrics: their cotangents are not propagated (the public
  function stops their gradient), nor are the weights' or the targets'."""
  del z_coef, chunk, softcap, matmul
  dh, dw = res
  g = cotangents[0]
  return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), None, None


_weighted_loss.defvjp(_weighted_loss_fwd, _weighted_loss_bwd)


def weighted_target_loss(hidden_BxLxD, unembed_DxV, targets_BxL, weights_BxL, *,
                         z_coef: float = 0.0, chunk: int, softcap: float = 0.0,
                         matmul: str = "auto"):
  """(sum_t w_t * (-log p(y_t) + z_coef * lse_t^2), (log p(y), lse, max logit) per
  position) from the final hidden states, `chunk` positions at a time; the
  gradient flows to `hidden` and `unembed` only, computed in the forward pass (the
  module doc). The statistics carry no gradient: they are for metrics."""
  loss, stats = _weighted_loss(hidden_BxLxD, unembed_DxV, targets_BxL,
                               jax.lax.stop_gradient(weights_BxL), float(z_coef), int(chunk),
                               float(softcap), matmul)
  return loss, jax.lax.stop_gradient(stats)
