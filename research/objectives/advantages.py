"""Per-token rewards, KL estimators, advantage estimators, whitening and the KL
controllers of RLHF.

Arrays are BxT over the full rollout row (prompt, response, padding), aligned
with `models.logprobs.sequence_token_logprobs`: index t holds the quantities of
*emitting* token t (its log-prob, and the value of the state before it).
`mask` marks the response tokens (EOS included), which are contiguous.

References: Ziegler et al. 2019 (lm-human-preferences: the per-token reward,
the adaptive KL controller); Schulman et al. 2016 (GAE, eq. 16); Schulman 2020,
"Approximating KL divergence" (k1, k2, k3); Huang et al. 2024, "The N+
implementation details of RLHF with PPO" (whitening).

Advantage estimators (registered in `research.objectives`, chosen by
`config.objective.advantage`) map `Inputs` to (advantages_BxT, returns_BxT):

  gae           Schulman et al. 2016 eq. 16 with the critic's values (PPO, A2C).
  grpo          Shao et al. 2024 (DeepSeekMath) sec. 4.1.2, outcome supervision:
                A_i = (r_i - mean(group)) / std(group) on every token of response i.
  dr_grpo       Liu et al. 2025 ("Understanding R1-Zero-like training") eq. 3:
                A_i = r_i - mean(group), no std normalisation.
  rloo          Ahmadian et al. 2024 sec. 3.2 (REINFORCE leave-one-out):
                A_i = r_i - 1/(G-1) sum_{j != i} r_j.
  reinforce_pp  Hu 2025 (REINFORCE++) eq. 7-8: returns-to-go of the per-token
                KL-penalised rewards, normalised over the whole batch (no critic,
                no group baseline).

r_i is the sequence reward: the score plus the summed per-token KL penalty when
the KL is in the reward (`config.objective.kl.placement='reward'`). Groups are
`G = config.rollout.samples_per_prompt` consecutive rows (one prompt each).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logp_BxT, ref_logp_BxT, mask_BxT, estimator: str = "k1"):
  """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

  With log r = log pi_ref - log pi:  k1 = -log r (unbiased, can be negative),
  k2 = (log r)^2 / 2 (biased, low variance), k3 = (r - 1) - log r (unbiased,
  never negative). Zero where `mask` is False.
  """
  log_r = ref_logp_BxT - logp_BxT
  if estimator == "k1":
    kl = -log_r
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_r)
  elif estimator == "k3":
    kl = jnp.expm1(log_r) - log_r
  else:
    raise ConfigError(f"config.objective.kl.estimator={estimator!r}; expected one of "
                      f"{KL_ESTIMATORS}")
  return jnp.where(mask_BxT.astype(bool), kl, 0.0)


def last_index(mask_BxT):
  """Index of each row's last True (its EOS or final response token)."""
  t = mask_BxT.shape[1]
  return jnp.max(jnp.where(mask_BxT.astype(bool), jnp.arange(t)[None], 0), axis=1)


def token_rewards(scores_B, kl_BxT, mask_BxT, beta):
  """r_t = -beta * KL_t on response tokens, plus the sequence score at the last one
  (Ziegler et al. 2019, sec. 2.2; InstructGPT eq. 2 without the ptx term).

  Returns (rewards_BxT, non_score_reward_BxT)."""
  non_score = jnp.where(mask_BxT.astype(bool), -beta * kl_BxT, 0.0)
  t = mask_BxT.shape[1]
  at_last = jnp.arange(t)[None] == last_index(mask_BxT)[:, None]
  return non_score + jnp.where(at_last, scores_B[:, None], 0.0), non_score


def soft_overlong_punishment(lengths_B, max_len: int, buffer: int, factor: float = 1.0):
  """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the score:
  0 up to max_len - buffer tokens, then falling linearly to -factor at max_len
  (and -factor beyond; a sampler stops at max_len). `buffer` 0: off."""
  lengths = np.asarray(lengths_B, np.float32)
  if buffer <= 0:
    return np.zeros_like(lengths)
  over = lengths - (max_len - buffer)
  return (factor * np.clip(-over / buffer, -1.0, 0.0)).astype(np.float32)


def gae(rewards_BxT, values_BxT, mask_BxT, gamma: float = 1.0, lam: float = 0.95):
  """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over masked rows.

  delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last response token;
  A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages_BxT, returns_BxT =
  A + V), zero outside the mask. The reverse scan runs over T; entries outside
  the mask never leak in.
  """
  m = mask_BxT.astype(bool)
  values = jnp.where(m, values_BxT, 0.0)
  rewards = jnp.where(m, rewards_BxT, 0.0)
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
  next_mask = jnp.pad(m[:, 1:], ((0, 0), (0, 1)), constant_values=False)
  deltas = rewards + gamma * jnp.where(next_mask, next_values, 0.0) - values

  def step(carry_B, xs):
    delta_B, next_valid_B, valid_B = xs
    adv_B = delta_B + gamma * lam * jnp.where(next_valid_B, carry_B, 0.0)
    adv_B = jnp.where(valid_B, adv_B, 0.0)
    return adv_B, adv_B

  _, adv_TxB = jax.lax.scan(step, jnp.zeros(rewards.shape[0], rewards.dtype),
                            (deltas.T, next_mask.T, m.T), reverse=True)
  advantages = adv_TxB.T
  return advantages, jnp.where(m, advantages + values, 0.0)


def masked_mean(x, mask, axis=None):
  mask = mask.astype(x.dtype)
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_var(x, mask):
  """Unbiased (Bessel-corrected) variance over the masked entries."""
  mean = masked_mean(x, mask)
  n = mask.astype(x.dtype).sum()
  centred = jnp.where(mask.astype(bool), x - mean, 0.0)
  return jnp.square(centred).sum() / jnp.maximum(n - 1.0, 1.0)


def whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / std over the masked entries; `shift_mean=False` puts the mean back
  (how rewards are whitened: the scale changes, the sign of the mean does not)."""
  mean, var = masked_mean(x, mask), masked_var(x, mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask.astype(bool), out, 0.0)


@dataclasses.dataclass
class FixedKLController:
  value: float

  def update(self, kl: float, n_steps: int) -> None:
    del kl, n_steps

  def state_dict(self) -> dict:
    return {"value": self.value}

  def load_state_dict(self, state: dict) -> None:
    self.value = float(state["value"])


@dataclasses.dataclass
class AdaptiveKLController:
  """Ziegler et al. 2019, sec. 2.2: e = clip(KL / target - 1, -0.2, 0.2);
  beta <- beta * (1 + e * n_steps / horizon), where n_steps counts the episodes
  (sequences) of the batch that measured KL."""

  value: float
  target: float
  horizon: float

  def update(self, kl: float, n_steps: int) -> None:
    error = min(max(kl / self.target - 1.0, -0.2), 0.2)
    self.value *= 1.0 + error * n_steps / self.horizon

  def state_dict(self) -> dict:
    return {"value": self.value}

  def load_state_dict(self, state: dict) -> None:
    self.value = float(state["value"])


def kl_controller(cfg):
  """From `config.objective.kl`: {beta, target (0 or None = fixed), horizon}."""
  if cfg.get("target"):
    return AdaptiveKLController(float(cfg.beta), float(cfg.target), float(cfg.horizon))
  return FixedKLController(float(cfg.beta))


# --- advantage estimators -----------------------------------------------------

class Inputs(NamedTuple):
  """What an advantage estimator sees of one rollout (BxT over the rollout rows)."""
  rewards: jax.Array   # BxT per-token rewards: the score on the last response token,
                       #     -beta * KL_t on each one when the KL is in the reward
  values: jax.Array    # BxT the critic's values (zeros without a critic)
  mask: jax.Array      # BxT response tokens
  group_size: int      # G responses per prompt, consecutive rows


def sequence_rewards(inputs: Inputs):
  """r_i = sum_t rewards_it: the score plus the summed KL penalty."""
  return jnp.where(inputs.mask.astype(bool), inputs.rewards, 0.0).sum(1)


def _groups(x_B, group_size: int):
  if x_B.shape[0] % group_size:
    raise ValueError(f"{x_B.shape[0]} rollout rows are not whole groups of "
                     f"config.rollout.samples_per_prompt={group_size}")
  return x_B.reshape(-1, group_size)


def on_tokens(adv_B, r_B, mask):
  """(A_i on every response token of row i, r_i likewise as the returns): the
  output of a sequence-level estimator."""
  m = mask.astype(bool)
  return (jnp.where(m, adv_B[:, None], 0.0), jnp.where(m, r_B[:, None], 0.0))


def gae_estimator(inputs: Inputs, *, config):
  o = config.objective
  return gae(inputs.rewards, inputs.values, inputs.mask, o.gamma, o.lam)


def grpo_estimator(inputs: Inputs, *, config, eps: float = 1e-4):
  """(r - group mean) / (group std + eps); std with Bessel's correction (as TRL)."""
  del config
  r = sequence_rewards(inputs)
  g = _groups(r, inputs.group_size)
  adv = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + eps)
  return on_tokens(adv.reshape(-1), r, inputs.mask)


def dr_grpo_estimator(inputs: Inputs, *, config):
  del config
  r = sequence_rewards(inputs)
  g = _groups(r, inputs.group_size)
  return on_tokens((g - g.mean(1, keepdims=True)).reshape(-1), r, inputs.mask)


def rloo_estimator(inputs: Inputs, *, config):
  """r_i minus the mean of the other G - 1 rewards of its group: an unbiased baseline."""
  del config
  r = sequence_rewards(inputs)
  g = _groups(r, inputs.group_size)
  others = (g.sum(1, keepdims=True) - g) / (inputs.group_size - 1)
  return on_tokens((g - others).reshape(-1), r, inputs.mask)


def reinforce_estimator(inputs: Inputs, *, config):
  """A_i = r_i: REINFORCE with no baseline (Williams 1992), the "vanilla policy
  gradient" of Ahmadian et al. 2024; with objective.score_norm='baseline', the
  scores carry a moving-average baseline (their "REINFORCE with baseline")."""
  del config
  r = sequence_rewards(inputs)
  return on_tokens(r, r, inputs.mask)


def reinforce_pp_estimator(inputs: Inputs, *, config):
  """Returns-to-go G_t = sum_{s >= t} gamma^(s-t) r_s, whitened over the batch."""
  zeros = jnp.zeros_like(inputs.values)
  _, returns = gae(inputs.rewards, zeros, inputs.mask, config.objective.gamma, 1.0)
  return whiten(returns, inputs.mask), returns


ESTIMATORS = {
    "gae": {"fn": gae_estimator, "needs_critic": True},
    "grpo": {"fn": grpo_estimator, "min_group_size": 2},
    "dr_grpo": {"fn": dr_grpo_estimator, "min_group_size": 2},
    "rloo": {"fn": rloo_estimator, "min_group_size": 2},
    "reinforce": {"fn": reinforce_estimator},
    "reinforce_pp": {"fn": reinforce_pp_estimator},
}
