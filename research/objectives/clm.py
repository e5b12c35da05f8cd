"""Causal language modelling: masked next-token cross-entropy (SFT reuses it).

Token normalisation (the default):
  loss = sum_t m_t * -log softmax(z_t)[y_t] / sum_t m_t
Sequence normalisation (each packed example counts once, however long):
  loss = mean over examples s of  sum_{t in s} m_t nll_t / sum_{t in s} m_t
plus, either way, z_loss_coef * the same mean of (log sum_v exp z_tv)^2, the
auxiliary term of PaLM (Chowdhery et al. 2022, section 5) that keeps the
softmax normaliser near 1.

In SFT, token normalisation gives a one-token answer ("positive") a hundredth
of the weight of a hundred-token one; sequence normalisation weights tasks by
example count instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.models import fused_loss
from research.models.logprobs import token_logprobs  # re-exported: the CLM building block

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def sequence_mean(values_BxL, mask_BxL, segment_ids_BxL):
  """Mean over packed examples of each example's masked mean (examples with no
  masked token are skipped)."""
  b, l = values_BxL.shape
  ids = (jnp.arange(b, dtype=jnp.int32)[:, None] * (l + 1) + segment_ids_BxL).reshape(-1)
  mask = mask_BxL.astype(bool)
  sums = jax.ops.segment_sum(jnp.where(mask, values_BxL, 0.0).reshape(-1), ids,
                             num_segments=b * (l + 1))
  counts = jax.ops.segment_sum(mask.reshape(-1).astype(jnp.float32), ids,
                               num_segments=b * (l + 1))
  per_example = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
  return per_example.sum() / jnp.maximum((counts > 0).sum(), 1).astype(jnp.float32)


def cross_entropy(logits_BxLxV, targets_BxL, mask_BxL, z_loss_coef: float = 0.0,
                  segment_ids_BxL=None, normalization: str = "token"):
  """Masked next-token NLL (+ optional z-loss) and its metrics.

  `nll`, `perplexity` and `accuracy` are always token means (comparable across
  runs); `loss` follows `normalization`. Masked positions are removed with
  `jnp.where`, so a non-finite logit at a padding position cannot leak into the
  loss (NaN * 0 = NaN).
  """
  logp_BxL, log_z_BxL = token_logprobs(logits_BxLxV, targets_BxL)
  return cross_entropy_of(logp_BxL, log_z_BxL, jnp.max(logits_BxLxV, axis=-1), mask_BxL,
                          z_loss_coef, segment_ids_BxL, normalization)


def cross_entropy_of(logp_BxL, log_z_BxL, max_logit_BxL, mask_BxL, z_loss_coef: float = 0.0,
                     segment_ids_BxL=None, normalization: str = "token"):
  """`cross_entropy` from the targets' log-probs, log Z and the largest logit per
  position (what `Decoder.target_logprobs` returns, chunk by chunk)."""
  mask = mask_BxL.astype(bool)
  num_tokens = mask.sum()
  denom = jnp.maximum(num_tokens, 1).astype(jnp.float32)
  nll = jnp.where(mask, -logp_BxL, 0.0).sum() / denom
  z_loss = jnp.where(mask, jnp.square(log_z_BxL), 0.0).sum() / denom
  if normalization == "sequence":
    objective = (sequence_mean(-logp_BxL, mask, segment_ids_BxL)
                 + z_loss_coef * sequence_mean(jnp.square(log_z_BxL), mask, segment_ids_BxL))
  elif normalization == "token":
    objective = nll + z_loss_coef * z_loss
  else:
    raise ConfigError(f"config.objective.loss_normalization={normalization!r}; "
                      f"expected 'token' or 'sequence'")
  # Reuses the max that logsumexp computes (an argmax is a separate full pass
  # over BxLxV on CPU); ties count as correct.
  correct = logp_BxL >= max_logit_BxL - log_z_BxL
  accuracy = jnp.where(mask, correct, False).sum() / denom
  metrics = {"nll": nll, "perplexity": jnp.exp(nll), "accuracy": accuracy,
             "z_loss": z_loss, "num_tokens": num_tokens}
  return objective, metrics


def loss_weights(mask_BxL, segment_ids_BxL, normalization: str = "token"):
  """w_t with loss = sum_t w_t (nll_t + z lse_t^2) under `normalization`: the
  objective is linear in the log-probs, so w is minus its gradient in them."""
  zeros = jnp.zeros(mask_BxL.shape, jnp.float32)
  return -jax.grad(lambda logp: cross_entropy_of(logp, zeros, zeros, mask_BxL, 0.0,
                                                 segment_ids_BxL, normalization)[0])(zeros)


def loss_fn(params, batch, rng, *, model, config):
  """CLM/SFT loss on a packed batch (`BATCH_KEYS`); `rng` is unused (no dropout).
  With `model.vocab_chunk` the head runs chunk by chunk with its gradient made in
  the forward pass (`models/fused_loss.py`): the same loss and gradients."""
  del rng
  z, normalization = config.objective.z_loss, config.objective.get("loss_normalization", "token")
  mask, segments = batch["loss_mask"], batch["segment_ids"]
  if model.cfg.vocab_chunk:
    hidden, unembed = model.apply(
        {"params": params}, method=lambda m: (
            m.trunk(batch["inputs"], batch["positions"], segments), m.unembedding()))
    objective, (logp, log_z, max_logit) = fused_loss.weighted_target_loss(
        hidden, unembed, batch["targets"], loss_weights(mask, segments, normalization),
        z_coef=z, chunk=model.cfg.vocab_chunk, softcap=model.cfg.logit_softcap,
        matmul=model.cfg.matmul)
    return objective, cross_entropy_of(logp, log_z, max_logit, mask, z, segments,
                                       normalization)[1]
  logp, log_z, max_logit = model.apply({"params": params}, batch["inputs"], batch["targets"],
                                       batch["positions"], segments, method="target_logprobs")
  return cross_entropy_of(logp, log_z, max_logit, mask, z, segments, normalization)
