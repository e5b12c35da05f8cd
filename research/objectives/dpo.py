"""Direct preference optimisation and its variants, on sequence log-probs.

A batch holds pairs (chosen y_w, rejected y_l) as tokens Bx2xL with `mask`
(real tokens) and `response_mask` (response tokens incl. EOS, never the prompt
or padding), or those rows packed end to end (`research/data/packing.py`), plus
`ref_logps` Bx2 (the frozen reference's summed response log-probs, precomputed
once; zeros for reference-free losses; a LoRA policy without them computes them
in the step, its adapters off). One forward pass
runs over the 2B rows. With pi = log pi(y|x), ref = log pi_ref(y|x) (sums) and
n = response length:

  dpo    -log sigma(beta * delta),  delta = (pi_w - ref_w) - (pi_l - ref_l)
         (Rafailov et al. 2023, eq. 7)
  cdpo   -(1 - eps) log sigma(beta delta) - eps log sigma(-beta delta)
         (conservative DPO / label smoothing, Mitchell 2023)
  ipo    (delta_bar - 1 / (2 beta))^2, delta_bar with per-token averaged log
         ratios (pi - ref) / n (Azar et al. 2023, eq. 17)
  slic   max(0, 1 - beta delta)  (hinge, SLiC-HF, Zhao et al. 2023)
  simpo  -log sigma(beta pi_w / n_w - beta pi_l / n_l - gamma), no reference
         (Meng et al. 2024, eq. 6)
  orpo   NLL(y_w) + lambda * -log sigma(log odds(y_w) - log odds(y_l)),
         odds(y) = P / (1 - P), P = exp(pi / n), no reference (Hong et al. 2024, eq. 6)

Any of them can add `nll_coef` * NLL(y_w) (per token), the usual counter to
DPO lowering the log-probs of both responses.

One loss reads unpaired examples (x, y, desirable or not) instead of pairs; its
batch rows are (x, y) and (x, y'), y' another example's completion (for the KL
reference point), with `label` B (1 desirable, 0 undesirable):

  kto    lambda_y - v(x, y), r = pi - ref,  z0 = max(0, mean over the batch of
         pi(y'|x) - ref(y'|x)) without gradient,  v = lambda_D sigma(beta (r - z0))
         if desirable, lambda_U sigma(beta (z0 - r)) if not
         (Ethayarajh et al. 2024, sec. 4.1: the KTO loss and its batch estimate of z0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.models import lora
from research.models.logprobs import packed_response_sums, sequence_token_logprobs
from research.objectives.advantages import masked_mean


def policy_logps(params, batch, model):
  """Summed response log-probs (Bx2), lengths (Bx2), per-token NLL of chosen (scalar).
  The batch's rows are BxKxL, or packed (`research/data/packing.py`)."""
  if "packed" in batch:
    b, two = batch["ranks"].shape
    sums, lengths = packed_response_sums(model, params, batch["packed"], b * two)
  else:
    b, two, l = batch["tokens"].shape
    flat = lambda x: x.reshape(b * two, l)
    logp_NxL, _ = sequence_token_logprobs(model, params, flat(batch["tokens"]),
                                          flat(batch["mask"]))
    response = flat(batch["response_mask"]).astype(bool)
    sums, lengths = jnp.where(response, logp_NxL, 0.0).sum(-1), response.sum(-1)
  sums, lengths = sums.reshape(b, two), lengths.reshape(b, two).astype(jnp.float32)
  nll_chosen = -sums[:, 0].sum() / jnp.maximum(lengths[:, 0].sum(), 1.0)
  return sums, jnp.maximum(lengths, 1.0), nll_chosen


def reference_logps(params, batch, model):
  """The frozen reference's summed response log-probs (Bx2): the batch's
  `ref_logps`, or for a LoRA policy without them the same parameters with the
  adapters off (the base model), without gradient and with no copy of the weights."""
  if "ref_logps" in batch:
    return batch["ref_logps"].astype(jnp.float32)
  if not lora.has_adapters(params):
    raise KeyError("the batch has no ref_logps and the policy no LoRA adapters to switch off")
  sums, _, _ = policy_logps(lora.disabled(jax.lax.stop_gradient(params)), batch, model)
  return jax.lax.stop_gradient(sums)


# --- pure losses on arrays: per-pair loss, chosen reward, rejected reward -------

def dpo_loss(pi_w, pi_l, ref_w, ref_l, beta, label_smoothing=0.0):
  delta = (pi_w - ref_w) - (pi_l - ref_l)
  loss = (-(1 - label_smoothing) * jax.nn.log_sigmoid(beta * delta)
          - label_smoothing * jax.nn.log_sigmoid(-beta * delta))
  return loss, beta * (pi_w - ref_w), beta * (pi_l - ref_l)


def ipo_loss(pi_w, pi_l, ref_w, ref_l, n_w, n_l, beta):
  delta_bar = (pi_w - ref_w) / n_w - (pi_l - ref_l) / n_l
  return (jnp.square(delta_bar - 1.0 / (2.0 * beta)), beta * (pi_w - ref_w) / n_w,
          beta * (pi_l - ref_l) / n_l)


def slic_loss(pi_w, pi_l, ref_w, ref_l, beta):
  delta = (pi_w - ref_w) - (pi_l - ref_l)
  return jax.nn.relu(1.0 - beta * delta), beta * (pi_w - ref_w), beta * (pi_l - ref_l)


def simpo_loss(pi_w, pi_l, n_w, n_l, beta, gamma):
  r_w, r_l = beta * pi_w / n_w, beta * pi_l / n_l
  return -jax.nn.log_sigmoid(r_w - r_l - gamma), r_w, r_l


def log_odds(mean_logp):
  """log(P / (1 - P)) for P = exp(mean_logp) < 1, computed stably."""
  return mean_logp - jnp.log(-jnp.expm1(jnp.minimum(mean_logp, -1e-6)))


def orpo_loss(pi_w, pi_l, n_w, n_l, lam):
  """Odds-ratio term only (the SFT term is added by the loss_fn)."""
  ratio = log_odds(pi_w / n_w) - log_odds(pi_l / n_l)
  return lam * -jax.nn.log_sigmoid(ratio), pi_w / n_w, pi_l / n_l


def kto_loss(pi, ref, pi_kl, ref_kl, desirable, beta, lambda_d=1.0, lambda_u=1.0):
  """Per-example KTO loss, implicit rewards beta * r, and the reference point z0."""
  r = pi - ref
  z0 = jax.lax.stop_gradient(jnp.maximum(jnp.mean(pi_kl - ref_kl), 0.0))
  loss = jnp.where(desirable, lambda_d * (1.0 - jax.nn.sigmoid(beta * (r - z0))),
                   lambda_u * (1.0 - jax.nn.sigmoid(beta * (z0 - r))))
  return loss, beta * r, z0


# --- registered loss_fns ----------------------------------------------------------

def finish(losses_B, rewards_w, rewards_l, sums, nll_chosen, extra_nll_coef):
  """(loss, metrics) from per-pair losses and implicit rewards: the shared tail of
  every pair objective (a new one can reuse it; see colabs/new_objective.ipynb)."""
  loss = losses_B.mean() + extra_nll_coef * nll_chosen
  metrics = {"rewards/chosen": rewards_w.mean(), "rewards/rejected": rewards_l.mean(),
             "rewards/margins": (rewards_w - rewards_l).mean(),
             "rewards/accuracies": (rewards_w > rewards_l).mean(),
             "logps/chosen": sums[:, 0].mean(), "logps/rejected": sums[:, 1].mean(),
             "nll/chosen": nll_chosen, "num_examples": jnp.asarray(sums.shape[0])}
  return loss, metrics


def pieces(params, batch, model):
  """Policy sums, lengths, chosen NLL, and (pi_w, pi_l, ref_w, ref_l) of a pair batch."""
  sums, lengths, nll = policy_logps(params, batch, model)
  ref = reference_logps(params, batch, model)
  return sums, lengths, nll, (sums[:, 0], sums[:, 1], ref[:, 0], ref[:, 1])


def dpo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, _, nll, (pw, pl, rw, rl) = pieces(params, batch, model)
  return finish(*dpo_loss(pw, pl, rw, rl, o.beta), sums, nll, o.nll_coef)


def cdpo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, _, nll, (pw, pl, rw, rl) = pieces(params, batch, model)
  return finish(*dpo_loss(pw, pl, rw, rl, o.beta, o.label_smoothing), sums, nll, o.nll_coef)


def ipo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, n, nll, (pw, pl, rw, rl) = pieces(params, batch, model)
  return finish(*ipo_loss(pw, pl, rw, rl, n[:, 0], n[:, 1], o.beta), sums, nll, o.nll_coef)


def slic_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, _, nll, (pw, pl, rw, rl) = pieces(params, batch, model)
  return finish(*slic_loss(pw, pl, rw, rl, o.beta), sums, nll, o.nll_coef)


def simpo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, n, nll = policy_logps(params, batch, model)
  return finish(*simpo_loss(sums[:, 0], sums[:, 1], n[:, 0], n[:, 1], o.beta, o.simpo_gamma),
                 sums, nll, o.nll_coef)


def orpo_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, n, nll = policy_logps(params, batch, model)
  # ORPO's own SFT term is the chosen NLL with weight 1, plus any extra nll_coef.
  return finish(*orpo_loss(sums[:, 0], sums[:, 1], n[:, 0], n[:, 1], o.orpo_lambda),
                 sums, nll, 1.0 + o.nll_coef)


def kto_fn(params, batch, rng, *, model, config):
  del rng
  o = config.objective
  sums, lengths, _ = policy_logps(params, batch, model)
  ref = reference_logps(params, batch, model)
  desirable = batch["label"] > 0.5
  losses, rewards, z0 = kto_loss(sums[:, 0], ref[:, 0], sums[:, 1], ref[:, 1], desirable,
                                 o.beta, o.desirable_weight, o.undesirable_weight)
  nll = -sums[:, 0] / lengths[:, 0]
  good, bad = masked_mean(rewards, desirable), masked_mean(rewards, ~desirable)
  loss = losses.mean() + o.nll_coef * masked_mean(nll, desirable)
  return loss, {"rewards/chosen": good, "rewards/rejected": bad, "rewards/margins": good - bad,
                "kl": z0, "logps/chosen": masked_mean(sums[:, 0], desirable),
                "logps/rejected": masked_mean(sums[:, 0], ~desirable),
                "nll/chosen": masked_mean(nll, desirable),
                "num_examples": jnp.asarray(sums.shape[0])}


# name -> the loss and its properties (see `research.objectives.Objective`).
LOSSES = {"dpo": {"fn": dpo_fn}, "cdpo": {"fn": cdpo_fn}, "ipo": {"fn": ipo_fn},
          "slic": {"fn": slic_fn},
          "simpo": {"fn": simpo_fn, "reference_free": True},
          "orpo": {"fn": orpo_fn, "reference_free": True},
          "kto": {"fn": kto_fn, "unpaired": True}}
