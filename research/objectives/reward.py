"""Reward-model losses: Bradley-Terry pairs and InstructGPT K-way rankings.

One loss covers both. A batch element is one prompt with K responses and their
ranks (0 = best; equal ranks are ties; -1 = no response in that slot). For
every ordered pair (i, j) with rank_i < rank_j:

  l_ij = -log sigmoid(r_i - r_j - m)

averaged over the prompt's pairs, then over prompts: InstructGPT eq. 1
(Ouyang et al. 2022), "1 / C(K,2) E[log sigma(r(x, y_w) - r(x, y_l))]", with all
K(K-1)/2 pairs of a prompt in one batch element so the model sees each response
once per step. K = 2 is the Bradley-Terry pairwise loss. Ties are skipped.

Options: a margin m (a constant, plus a per-prompt `margin` from the data, as
in Llama 2's preference-strength margin), and reward centring,
  + c * (sum_k r_k)^2 per prompt,
which for a pair is c * (r_chosen + r_rejected)^2 (Eisenstein et al. 2023),
pinning the reward's free offset near zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.models.heads import packed_scores


def ranking_loss(scores_BxK, ranks_BxK, *, margin: float = 0.0, margin_B=None,
                 center_coef: float = 0.0):
  """(loss, metrics) for scores of K responses per prompt and their ranks."""
  scores = scores_BxK.astype(jnp.float32)
  valid_BxK = ranks_BxK >= 0
  better_BxKxK = ((ranks_BxK[:, :, None] < ranks_BxK[:, None, :])
                  & valid_BxK[:, :, None] & valid_BxK[:, None, :])
  m = margin if margin_B is None else margin + margin_B.astype(jnp.float32)[:, None, None]
  diff_BxKxK = scores[:, :, None] - scores[:, None, :]
  pair_loss = -jax.nn.log_sigmoid(diff_BxKxK - m)
  pairs_B = better_BxKxK.sum((1, 2))
  per_prompt_B = jnp.where(better_BxKxK, pair_loss, 0.0).sum((1, 2)) / jnp.maximum(pairs_B, 1)
  has_pairs = pairs_B > 0
  n_prompts = jnp.maximum(has_pairs.sum(), 1).astype(jnp.float32)
  loss = jnp.where(has_pairs, per_prompt_B, 0.0).sum() / n_prompts
  centring = jnp.square(jnp.where(valid_BxK, scores, 0.0).sum(1))
  centring = jnp.where(has_pairs, centring, 0.0).sum() / n_prompts
  total = loss + center_coef * centring

  n_pairs = jnp.maximum(pairs_B.sum(), 1).astype(jnp.float32)
  pair_margin = jnp.where(better_BxKxK, diff_BxKxK, 0.0)
  margin_mean = pair_margin.sum() / n_pairs
  margin_var = jnp.where(better_BxKxK, jnp.square(diff_BxKxK - margin_mean), 0.0).sum() / n_pairs
  metrics = {"ranking_loss": loss, "centring": centring,
             "accuracy": jnp.where(better_BxKxK, diff_BxKxK > 0, False).sum() / n_pairs,
             "margin_mean": margin_mean, "margin_std": jnp.sqrt(margin_var),
             "score_mean": jnp.where(valid_BxK, scores, 0.0).sum()
                           / jnp.maximum(valid_BxK.sum(), 1),
             "num_pairs": pairs_B.sum(), "num_examples": has_pairs.sum()}
  return total, metrics


def loss_fn(params, batch, rng, *, model, config):
  """batch: tokens/mask BxKxL (prompt + response, right-padded) or those rows
  packed (`research/data/packing.py`), ranks BxK, optional margin B. One forward
  pass per response (B*K rows), none per pair."""
  del rng
  b, k = batch["ranks"].shape
  if "packed" in batch:  # research/data/packing.py: the rows' segments as the mask
    p = batch["packed"]
    values_RxL, _ = model.apply({"params": params}, p["tokens"], p["segment_ids"],
                                p["positions"])
    scores_N = packed_scores(values_RxL, p["sequence"], b * k)
  else:
    l = batch["tokens"].shape[-1]
    _, scores_N = model.apply({"params": params}, batch["tokens"].reshape(b * k, l),
                              batch["mask"].reshape(b * k, l))
  obj = config.objective
  return ranking_loss(scores_N.reshape(b, k), batch["ranks"], margin=obj.margin,
                      margin_B=batch.get("margin"), center_coef=obj.center_coef)
