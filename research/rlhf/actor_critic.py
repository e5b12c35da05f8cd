"""The policy and its critic as one parameter tree: {'policy': ..., 'value': ...}.

critic = 'separate'  'value' is a `ScalarModel` (own trunk + head), initialised
                     from the reward model (InstructGPT sec. 3.5);
critic = 'shared'    'value' is a zero-initialised `ScalarHead` on the policy's
                     trunk (one forward pass yields logits and values);
critic = 'none'      no 'value' (GRPO, RLOO, REINFORCE++: baselines from the
                     rewards themselves); the values are zeros.

`forward` returns per-token arrays aligned like `models.logprobs`: index t holds
log pi(token_t | tokens_<t), the entropy of that distribution, and the value of
the state before token t (read at position t-1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.models.config import DecoderConfig
from research.models.decoder import Decoder
from research.models.heads import ScalarHead, ScalarModel
from research.models.logprobs import positions_from_mask, token_logprobs

CRITICS = ("separate", "shared", "none")


def _shift_right(x_BxT):
  return jnp.pad(x_BxT[:, :-1], ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class ActorCritic:
  policy: Decoder
  critic: str = "separate"
  critic_cfg: DecoderConfig | None = None  # separate critic's size (default: the policy's)

  def __post_init__(self):
    if self.critic not in CRITICS:
      raise ConfigError(f"config.objective.critic={self.critic!r}; expected one of {CRITICS}")

  @property
  def value_module(self):
    if self.critic == "none":
      return None
    return (ScalarModel(self.critic_cfg or self.policy.cfg, head_init="zeros")
            if self.critic == "separate" else ScalarHead("zeros"))

  def init(self, rng, tokens_BxL):
    """Boxed {'policy', 'value'} params (for abstract shapes and shardings); no
    'value' without a critic."""
    policy_rng, value_rng = jax.random.split(rng)
    policy = self.policy.init(policy_rng, tokens_BxL)["params"]
    if self.critic == "none":
      return {"policy": policy}
    if self.critic == "separate":
      value = self.value_module.init(value_rng, tokens_BxL)["params"]
    else:
      hidden = jnp.zeros((*tokens_BxL.shape, self.policy.cfg.d_model), jnp.float32)
      value = self.value_module.init(value_rng, hidden)["params"]
    return {"policy": policy, "value": value}

  def forward(self, params, tokens_BxT, mask_BxT, temperature: float = 1.0):
    """(logp_BxT, entropy_BxT, values_BxT, logits_BxTxV); zero where `mask` is False
    (the logits are unmasked, aligned with the input positions)."""
    mask = mask_BxT.astype(bool)
    positions = positions_from_mask(mask_BxT)
    segments = mask_BxT.astype(jnp.int32)
    hidden = self.policy.apply({"params": params["policy"]}, tokens_BxT, positions, segments,
                               method=Decoder.trunk)
    logits = self.policy.apply({"params": params["policy"]}, hidden, method=Decoder.logits)
    if self.critic == "none":
      values = jnp.zeros(tokens_BxT.shape, jnp.float32)
    elif self.critic == "shared":
      values = self.value_module.apply({"params": params["value"]}, hidden)
    else:
      values = self.value_module.apply({"params": params["value"]}, tokens_BxT, mask_BxT,
                                       positions)[0]
    # The distribution over token t is read at position t - 1, scaled by the
    # sampling temperature (the ratio and the KL must use what was sampled from).
    scaled = logits[:, :-1].astype(jnp.float32) / temperature
    logp, log_z = token_logprobs(scaled, tokens_BxT[:, 1:])
    probs = jax.nn.softmax(scaled, axis=-1)
    entropy = log_z - jnp.sum(probs * scaled, axis=-1)
    pad = lambda x: jnp.where(mask, jnp.pad(x, ((0, 0), (1, 0))), 0.0)
    return pad(logp), pad(entropy), jnp.where(mask, _shift_right(values), 0.0), logits
