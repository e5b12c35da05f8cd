"""Per-token log-probs of padded sequences under a decoder (CLM, DPO, RLHF).

Positions are computed from the mask (cumsum - 1), so a row padded on the left,
the right, or both (a left-aligned prompt followed by a right-padded response)
gives the same numbers as the unpadded sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_BxLxV, targets_BxL):
  """log p(target) per position, and log Z (the log normaliser)."""
  logits = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return target_logit_BxL - log_z_BxL, log_z_BxL


def positions_from_mask(mask_BxT):
  return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 0)


def sequence_token_logprobs(model, params, tokens_BxT, mask_BxT, temperature: float = 1.0):
  """log p(token_t | tokens_<t) at index t (0 at t = 0 and at padding), and log Z
  of the distribution that predicts it (`Decoder.target_logprobs`: the logits in
  `model.cfg.vocab_chunk` chunks, never all at once when that is set).

  `temperature` divides the logits first: PPO's ratio and KL must use the
  sampling temperature (RLHF_DETAILS.md).
  """
  # The target at t is token t + 1; the last position predicts nothing kept.
  targets_BxT = jnp.pad(tokens_BxT[:, 1:], ((0, 0), (0, 1)))
  logp_BxT, log_z_BxT, _ = model.apply(
      {"params": params}, tokens_BxT, targets_BxT, positions_from_mask(mask_BxT),
      mask_BxT.astype(jnp.int32), temperature, method="target_logprobs")
  shift = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0)))
  real = mask_BxT.astype(bool)
  return jnp.where(real, shift(logp_BxT), 0.0), jnp.where(real, shift(log_z_BxT), 0.0)


def response_logprob_sums(model, params, tokens_BxT, mask_BxT, response_mask_BxT):
  """(sum of response-token log-probs, response length) per row."""
  logp_BxT, _ = sequence_token_logprobs(model, params, tokens_BxT, mask_BxT)
  response = response_mask_BxT.astype(bool)
  return jnp.where(response, logp_BxT, 0.0).sum(-1), response.sum(-1)


def packed_token_logprobs(model, params, packed: dict, temperature: float = 1.0):
  """Per-token log-probs of packed rows (`research/data/packing.py`): index t holds
  log p(token_t | its own sequence before t), 0 on padding and on each sequence's
  first token (which the row's previous token, another sequence's, cannot predict)."""
  tokens, segments = packed["tokens"], packed["segment_ids"]
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  logp, _, _ = model.apply({"params": params}, tokens, targets, packed["positions"], segments,
                           temperature, method="target_logprobs")
  shift = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0)))
  same = (segments == shift(segments)) & (segments > 0)
  return jnp.where(same, shift(logp), 0.0)


def packed_response_sums(model, params, packed: dict, num_sequences: int):
  """(sum of response-token log-probs, response length) of each of `num_sequences`
  source rows of a packed batch, by its `sequence` index (absent ones: 0, 0)."""
  logp = packed_token_logprobs(model, params, packed)
  response = packed["response_mask"].astype(bool) & (packed["sequence"] >= 0)
  ids = jnp.where(response, packed["sequence"], num_sequences).reshape(-1)
  sums = jax.ops.segment_sum(jnp.where(response, logp, 0.0).reshape(-1), ids,
                             num_segments=num_sequences + 1)[:num_sequences]
  counts = jax.ops.segment_sum(response.reshape(-1).astype(jnp.int32), ids,
                               num_segments=num_sequences + 1)[:num_sequences]
  return sums, counts
