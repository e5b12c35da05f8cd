"""Causal language modelling: masked next-token cross-entropy (SFT reuses it).

loss = sum_t m_t * -log softmax(z_t)[y_t] / sum_t m_t
     + z_loss_coef * sum_t m_t * (log sum_v exp z_tv)^2 / sum_t m_t

The z-loss is the auxiliary term of PaLM (Chowdhery et al. 2022, section 5) that
keeps the softmax normaliser near 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def token_logprobs(logits_BxLxV, targets_BxL):
  """log p(target) per position, and log Z (the log normaliser)."""
  logits = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return target_logit_BxL - log_z_BxL, log_z_BxL


def cross_entropy(logits_BxLxV, targets_BxL, mask_BxL, z_loss_coef: float = 0.0):
  """Mean masked next-token NLL (+ optional z-loss) and its metrics.

  Masked positions are removed with `jnp.where`, so a non-finite logit at a
  padding position cannot leak into the loss (NaN * 0 = NaN).
  """
  mask = mask_BxL.astype(bool)
  logp_BxL, log_z_BxL = token_logprobs(logits_BxLxV, targets_BxL)
  num_tokens = mask.sum()
  denom = jnp.maximum(num_tokens, 1).astype(jnp.float32)
  nll = jnp.where(mask, -logp_BxL, 0.0).sum() / denom
  z_loss = jnp.where(mask, jnp.square(log_z_BxL), 0.0).sum() / denom
  # Reuses the max that logsumexp computes (an argmax is a separate full pass
  # over BxLxV on CPU); ties count as correct.
  correct = logp_BxL >= jnp.max(logits_BxLxV, axis=-1) - log_z_BxL
  accuracy = jnp.where(mask, correct, False).sum() / denom
  loss = nll + z_loss_coef * z_loss
  metrics = {"nll": nll, "perplexity": jnp.exp(nll), "accuracy": accuracy,
             "z_loss": z_loss, "num_tokens": num_tokens}
  return loss, metrics


def loss_fn(params, batch, rng, *, model, config):
  """CLM/SFT loss on a packed batch (`BATCH_KEYS`); `rng` is unused (no dropout)."""
  del rng
  logits_BxLxV = model.apply({"params": params}, batch["inputs"], batch["positions"],
                             batch["segment_ids"])
  return cross_entropy(logits_BxLxV, batch["targets"], batch["loss_mask"],
                       config.objective.z_loss)
