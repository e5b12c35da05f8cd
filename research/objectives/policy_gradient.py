"""PPO and A2C losses for a policy with a critic, and PPO-ptx.

The batch is one minibatch of a rollout (see `rlhf/ppo.py`): BxT `tokens`,
`mask` (real tokens), `response_mask` (the actions), and from the rollout
phase `old_logp`, `old_values`, `advantages`, `returns`; with PPO-ptx also
`ptx`, a packed pretraining batch (`clm.BATCH_KEYS`). `model` is an
`rlhf.actor_critic.ActorCritic`; params are {'policy', 'value'}.

Means are over all response tokens of the minibatch (token-level, as in
lm-human-preferences and TRL).

  PPO   Schulman et al. 2017, eq. 7 (clipped surrogate) and eq. 9 (with value
        loss and entropy bonus); the clipped value loss of the OpenAI baselines
        (Huang et al. 2022, "37 implementation details", detail 9).
  A2C   Mnih et al. 2016: -A * log pi, one pass per batch, no ratio or clipping;
        the advantage actor-critic used for Gopher-based dialogue agents.
  ptx   InstructGPT (Ouyang et al. 2022) eq. 2: + gamma * E_pretrain[log pi(x)];
        here `ptx_coef` times the per-token mean CLM loss.
"""

from __future__ import annotations

import jax.numpy as jnp

from research.objectives import clm
from research.objectives.advantages import masked_mean


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float):
  """max(-A r, -A clip(r, 1-eps, 1+eps)) with r = pi / pi_old; and its diagnostics."""
  log_ratio = jnp.where(mask, logp - old_logp, 0.0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  return loss, {"policy/clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
                # Schulman's k2 estimate of KL(pi_old || pi): the step size.
                "policy/approxkl": masked_mean(0.5 * jnp.square(log_ratio), mask),
                "val/ratio": masked_mean(ratio, mask)}


def a2c_policy_loss(logp, advantages, mask):
  return masked_mean(-advantages * logp, mask), {}


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
  vf, vf_metrics = value_loss(values, batch["old_values"], batch["returns"], mask, value_clip)
  ent = masked_mean(entropy, mask)
  loss = pg + o.vf_coef * vf - o.entropy_coef * ent
  metrics = {**pg_metrics, **vf_metrics, "loss/policy": pg, "loss/value": vf,
             "policy/entropy": ent, "num_tokens": mask.sum()}
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

  def ppo(logp, mask):
    return ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask,
                           config.objective.clip)
  return _actor_critic_loss(params, batch, model=model, config=config, policy_loss=ppo,
                            value_clip=config.objective.value_clip)


def a2c_fn(params, batch, rng, *, model, config):
  del rng

  def a2c(logp, mask):
    return a2c_policy_loss(logp, batch["advantages"], mask)
  return _actor_critic_loss(params, batch, model=model, config=config, policy_loss=a2c,
                            value_clip=None)


LOSSES = {"ppo": ppo_fn, "a2c": a2c_fn}
