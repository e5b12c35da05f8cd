"""Policy-gradient losses on rollout minibatches: the clipped surrogate (PPO,
GRPO, DAPO, RLOO-with-clipping), plain REINFORCE/A2C, an optional value loss,
an optional KL penalty in the loss, and PPO-ptx.

The batch is one minibatch of a rollout (see `rlhf/online.py`): BxT `tokens`,
`mask` (real tokens), `response_mask` (the actions), and from the rollout
phase `old_logp` and `advantages`; with a critic also `old_values` and
`returns`; with the KL in the loss (`objective.kl.placement='loss'`) also
`ref_logp` and `kl_beta` (B, the controller's coefficient); with PPO-ptx
`ptx`, a packed pretraining batch (`clm.BATCH_KEYS`). `model` is an
`rlhf.actor_critic.ActorCritic`. `batch_keys(config)` lists the rollout keys.

  ppo   Schulman et al. 2017, eq. 7 (clipped surrogate) and eq. 9 (with value
        loss and entropy bonus); the clipped value loss of the OpenAI baselines
        (Huang et al. 2022, "37 implementation details", detail 9). With
        `clip_high` > `clip`: DAPO's clip-higher (Yu et al. 2025, eq. 10).
        Without a critic and with the KL in the loss it is GRPO's objective
        (Shao et al. 2024, eq. 3, k3 estimator of eq. 4).
  a2c   Mnih et al. 2016: -A * log pi, one pass per rollout, no ratio or
        clipping; with a critic the advantage actor-critic of Gopher-based
        dialogue agents, without one REINFORCE (with RLOO's baseline: Ahmadian
        et al. 2024, eq. 4). `reinforce` is the same loss under its own name.
  gspo  Zheng et al. 2025 (GSPO), eq. 5 with the GSPO-token gradient (eq. 7): the
        ratio is the sequence's length-normalised likelihood ratio
        s_i = exp(mean_t log pi/pi_old), clipped at 1 - clip, 1 + clip_high (the
        paper: 3e-4, 4e-4); every token of a sequence carries its value,
        sg(s_i) * pi_t / sg(pi_t), so the gradient is per token. Sequence-mean
        token-mean aggregation, as the paper's objective is.
  ptx   InstructGPT (Ouyang et al. 2022) eq. 2: + gamma * E_pretrain[log pi(x)];
        here `ptx_coef` times the per-token mean CLM loss.

Truncated importance sampling (`objective.tis_cap` > 0; Yao et al. 2025, "Your
efficient RL framework secretly brings you off-policy RL training"): the
sampler's log-probs can differ from the trainer's (another kernel, dtype or
cache), so each token's loss is weighted by min(pi_old / pi_sampler, cap), the
ratio of the trainer's to the sampler's probability computed at rollout time
(`tis_weight` in the batch, a constant).

Token losses are aggregated by `objective.loss_agg` (the choice that separates
GRPO, Dr. GRPO and DAPO):
  token_mean            sum over all response tokens / their count (DAPO eq. 12; TRL)
  seq_mean_token_mean   mean over sequences of each one's token mean (GRPO eq. 3)
  seq_mean_token_sum    mean over sequences of each one's token sum (Dr. GRPO: no
                        length normalisation)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.objectives import clm
from research.objectives.advantages import kl_per_token, masked_mean

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def aggregate(x_BxT, mask_BxT, how: str = "token_mean"):
  """One scalar from per-token losses (see the module docstring)."""
  m = mask_BxT.astype(x_BxT.dtype)
  x = jnp.where(mask_BxT.astype(bool), x_BxT, 0.0)
  if how == "token_mean":
    return x.sum() / jnp.maximum(m.sum(), 1.0)
  if how == "seq_mean_token_mean":
    return (x.sum(1) / jnp.maximum(m.sum(1), 1.0)).mean()
  if how == "seq_mean_token_sum":
    return x.sum(1).mean()
  raise ConfigError(f"config.objective.loss_agg={how!r}; expected one of {AGGREGATIONS}")


def truncated_is_weights(old_logp_BxT, sampler_logp_BxT, mask_BxT, cap: float):
  """min(pi_old / pi_sampler, cap) per response token, 0 elsewhere (see the module doc)."""
  ratio = jnp.exp(jnp.clip(old_logp_BxT - sampler_logp_BxT, -20.0, 20.0))
  return jnp.where(mask_BxT, jnp.minimum(ratio, cap), 0.0)


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float, clip_high: float | None = None,
                    agg: str = "token_mean", weights=None):
  """max(-A r, -A clip(r, 1 - clip, 1 + clip_high)) with r = pi / pi_old; and its
  diagnostics. `clip_high=None` clips symmetrically; `weights` (BxT) scale each
  token's loss (truncated importance sampling)."""
  clip_high = clip if clip_high is None else clip_high
  log_ratio = jnp.where(mask, logp - old_logp, 0.0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip_high)
  per_token = jnp.maximum(unclipped, clipped)
  loss = aggregate(per_token if weights is None else per_token * weights, mask, agg)
  return loss, {"policy/clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
                # Schulman's k2 estimate of KL(pi_old || pi): the step size.
                "policy/approxkl": masked_mean(0.5 * jnp.square(log_ratio), mask),
                "val/ratio": masked_mean(ratio, mask)}


def gspo_policy_loss(logp, old_logp, advantages, mask, clip: float,
                     clip_high: float | None = None, weights=None):
  """GSPO's clipped sequence-ratio objective with the GSPO-token gradient (see the
  module doc); -> (loss, diagnostics)."""
  clip_high = clip if clip_high is None else clip_high
  m = mask.astype(logp.dtype)
  log_ratio = jnp.where(mask, logp - old_logp, 0.0)
  seq_log_ratio_B = log_ratio.sum(1) / jnp.maximum(m.sum(1), 1.0)
  # The value of s_i on every token, with the gradient of log pi_t.
  log_s = logp - jax.lax.stop_gradient(logp) + jax.lax.stop_gradient(seq_log_ratio_B)[:, None]
  s = jnp.exp(jnp.minimum(log_s, 10.0))
  unclipped = -advantages * s
  clipped = -advantages * jnp.clip(s, 1.0 - clip, 1.0 + clip_high)
  per_token = jnp.maximum(unclipped, clipped)
  loss = aggregate(per_token if weights is None else per_token * weights, mask,
                   "seq_mean_token_mean")
  seq_ratio = jnp.exp(seq_log_ratio_B)
  has = m.sum(1) > 0
  return loss, {"policy/clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
                "policy/approxkl": masked_mean(0.5 * jnp.square(log_ratio), mask),
                "val/ratio": jnp.sum(jnp.where(has, seq_ratio, 0.0)) /
                             jnp.maximum(has.sum(), 1)}


def a2c_policy_loss(logp, advantages, mask, agg: str = "token_mean", weights=None):
  per_token = -advantages * logp
  return aggregate(per_token if weights is None else per_token * weights, mask, agg), {}


def batch_keys(config) -> tuple[str, ...]:
  """The rollout arrays a minibatch carries for `config.objective`."""
  o = config.objective
  keys = ("tokens", "mask", "response_mask", "old_logp", "advantages")
  if o.critic != "none":
    keys += ("old_values", "returns")
  if o.kl.placement == "loss":
    keys += ("ref_logp", "kl_beta")
  if o.get("tis_cap", 0.0) > 0:
    keys += ("tis_weight",)
  return keys


def value_loss(values, old_values, returns, mask, clip: float | None):
  """0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2); unclipped if `clip`
  is None or 0."""
  err = jnp.square(values - returns)
  metrics = {"val/error": masked_mean(err, mask), "val/mean": masked_mean(values, mask)}
  if not clip:
    return 0.5 * masked_mean(err, mask), {**metrics, "val/clipfrac": jnp.zeros(())}
  clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
  clipped_err = jnp.square(clipped_values - returns)
  metrics["val/clipfrac"] = masked_mean((clipped_err > err).astype(jnp.float32), mask)
  return 0.5 * masked_mean(jnp.maximum(err, clipped_err), mask), metrics


def _actor_critic_loss(params, batch, *, model, config, policy_loss, value_clip):
  o = config.objective
  mask = batch["response_mask"].astype(bool)
  logp, entropy, values, _ = model.forward(params, batch["tokens"], batch["mask"], o.temperature)
  pg, pg_metrics = policy_loss(logp, mask)
  ent = masked_mean(entropy, mask)
  loss = pg - o.entropy_coef * ent
  metrics = {**pg_metrics, "loss/policy": pg, "policy/entropy": ent, "num_tokens": mask.sum()}
  if model.critic != "none":
    vf, vf_metrics = value_loss(values, batch["old_values"], batch["returns"], mask, value_clip)
    loss = loss + o.vf_coef * vf
    metrics.update(vf_metrics, **{"loss/value": vf})
  if o.kl.placement == "loss":
    # The penalty's gradient flows through log pi (k3: 1 - pi_ref / pi per token).
    kl = aggregate(kl_per_token(logp, batch["ref_logp"], mask, o.kl.estimator), mask, o.loss_agg)
    loss = loss + batch["kl_beta"].mean() * kl
    metrics["loss/kl"] = kl
  if "ptx" in batch:
    ptx_logits = model.policy.apply({"params": params["policy"]}, batch["ptx"]["inputs"],
                                    batch["ptx"]["positions"], batch["ptx"]["segment_ids"])
    ptx_loss, _ = clm.cross_entropy(ptx_logits, batch["ptx"]["targets"],
                                    batch["ptx"]["loss_mask"])
    loss = loss + o.ptx_coef * ptx_loss
    metrics["ptx/loss"] = ptx_loss
  return loss, metrics


def ppo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective

  def ppo(logp, mask):
    return ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask, o.clip,
                           o.get("clip_high") or None, o.loss_agg, batch.get("tis_weight"))
  return _actor_critic_loss(params, batch, model=model, config=config, policy_loss=ppo,
                            value_clip=o.value_clip)


def gspo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective

  def gspo(logp, mask):
    return gspo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask, o.clip,
                            o.get("clip_high") or None, batch.get("tis_weight"))
  return _actor_critic_loss(params, batch, model=model, config=config, policy_loss=gspo,
                            value_clip=o.value_clip)


def a2c_fn(params, batch, rng, *, model, config):
  del rng

  def a2c(logp, mask):
    return a2c_policy_loss(logp, batch["advantages"], mask, config.objective.loss_agg,
                           batch.get("tis_weight"))
  return _actor_critic_loss(params, batch, model=model, config=config, policy_loss=a2c,
                            value_clip=None)


# name -> the loss and whether it makes one pass over each rollout (on-policy).
LOSSES = {"ppo": {"fn": ppo_fn, "single_pass": False},
          "gspo": {"fn": gspo_fn, "single_pass": False},
          "a2c": {"fn": a2c_fn, "single_pass": True},
          "reinforce": {"fn": a2c_fn, "single_pass": True}}
