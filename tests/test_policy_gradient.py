"""RLHF estimators and losses against plain-numpy references, and the sharded PPO step."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import rlhf as rlhf_config
from research import objectives
from research.models import config as model_config, logprobs
from research.models.decoder import Decoder
from research.objectives import advantages as adv, policy_gradient as pg
from research.rlhf.actor_critic import ActorCritic
from research.training import partitioning
from tests import trainers

RULES = partitioning.DEFAULT_RULES


def response_mask(b=4, t=12, seed=0):
  """Rows with a prompt of 2-4 tokens, a response of 1..rest tokens, then padding."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, t), bool)
  for i in range(b):
    start = rng.integers(2, 5)
    mask[i, start:start + rng.integers(1, t - start + 1)] = True
  return mask


# --- numpy references (independent of the library code) ---------------------------

def np_gae(rewards, values, mask, gamma, lam):
  adv_out, ret_out = np.zeros_like(rewards), np.zeros_like(rewards)
  for i in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[i])
    running = 0.0
    for k in reversed(range(len(idx))):
      t = idx[k]
      next_value = values[i, idx[k + 1]] if k + 1 < len(idx) else 0.0
      delta = rewards[i, t] + gamma * next_value - values[i, t]
      running = delta + gamma * lam * running
      adv_out[i, t] = running
      ret_out[i, t] = running + values[i, t]
  return adv_out, ret_out


def np_whiten(x, mask, shift_mean=True):
  v = x[mask]
  out = (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8)
  if not shift_mean:
    out = out + v.mean()
  full = np.zeros_like(x)
  full[mask] = out
  return full


def test_gae_matches_numpy_over_variable_length_rows():
  mask = response_mask(6, 16)
  rng = np.random.default_rng(1)
  rewards, values = rng.normal(size=(2, 6, 16))
  for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0)):
    got_a, got_r = adv.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                           gamma, lam)
    want_a, want_r = np_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-5, atol=1e-5)


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_value():
  mask = response_mask(3, 10, seed=3)
  rng = np.random.default_rng(2)
  rewards, values = rng.normal(size=(2, 3, 10))
  got_a, _ = adv.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1.0, 1.0)
  future = np.where(mask, rewards, 0.0)[:, ::-1].cumsum(1)[:, ::-1]  # sum of r_t' for t' >= t
  np.testing.assert_allclose(got_a, np.where(mask, future - values, 0.0), atol=1e-5)


def test_whitening_matches_numpy():
  mask = response_mask(5, 14, seed=4)
  x = np.random.default_rng(5).normal(3.0, 2.0, (5, 14))
  for shift in (True, False):
    got = adv.whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=shift)
    np.testing.assert_allclose(got, np_whiten(x, mask, shift), rtol=1e-5, atol=1e-5)
  white = np.asarray(adv.whiten(jnp.asarray(x), jnp.asarray(mask)))[mask]
  assert abs(white.mean()) < 1e-5 and abs(white.std(ddof=1) - 1) < 1e-4


def test_kl_estimators_match_numpy_and_their_expectations():
  rng = np.random.default_rng(6)
  logp, ref = np.log(rng.uniform(0.05, 1, (2, 3, 7)))
  mask = np.ones((3, 7), bool)
  log_r = ref - logp
  want = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": np.exp(log_r) - 1 - log_r}
  for name, value in want.items():
    np.testing.assert_allclose(adv.kl_per_token(jnp.asarray(logp), jnp.asarray(ref),
                                                jnp.asarray(mask), name), value, rtol=1e-5)
  # k1 and k3 are unbiased for KL(p || q) when tokens come from p.
  p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
  x = np.random.default_rng(7).choice(3, 200_000, p=p)
  exact = float(np.sum(p * np.log(p / q)))
  lp, lq = np.log(p[x])[None], np.log(q[x])[None]
  ones = np.ones_like(lp, bool)
  for name in ("k1", "k3"):
    est = float(np.mean(adv.kl_per_token(jnp.asarray(lp), jnp.asarray(lq), jnp.asarray(ones),
                                         name)))
    assert abs(est - exact) < 0.01, (name, est, exact)
  with pytest.raises(ValueError, match="k1"):
    adv.kl_per_token(jnp.asarray(lp), jnp.asarray(lq), jnp.asarray(ones), "k4")


def test_token_rewards_put_the_score_on_the_last_response_token():
  mask = response_mask(4, 10, seed=8)
  kl = np.random.default_rng(9).normal(size=(4, 10))
  scores = np.array([1.0, -2.0, 0.5, 3.0])
  rewards, non_score = adv.token_rewards(jnp.asarray(scores), jnp.asarray(kl), jnp.asarray(mask),
                                         0.1)
  want = np.where(mask, -0.1 * kl, 0.0)
  np.testing.assert_allclose(non_score, want, rtol=1e-6)
  for i in range(4):
    want[i, np.flatnonzero(mask[i])[-1]] += scores[i]
  np.testing.assert_allclose(rewards, want, rtol=1e-6)


def test_adaptive_kl_controller_follows_ziegler_et_al():
  ctl = adv.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
  ctl.update(kl=9.0, n_steps=64)  # e = clip(0.5, -0.2, 0.2) = 0.2
  assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
  ctl.update(kl=5.4, n_steps=100)  # e = -0.1
  assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000) * (1 - 0.1 * 100 / 10000))
  fixed = adv.kl_controller(ml_collections.ConfigDict({"beta": 0.05, "target": 0.0,
                                                       "horizon": 1}))
  fixed.update(100.0, 1000)
  assert fixed.value == 0.05


# --- PPO / A2C losses on hand-made ratios ------------------------------------------

RATIOS = np.array([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5])
ADVS = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])


def test_ppo_loss_and_gradient_inside_and_outside_the_clip_range():
  eps = 0.2
  old = np.log(np.full((1, 9), 0.3))
  logp = old + np.log(RATIOS)[None]
  mask = np.ones((1, 9), bool)
  fn = lambda lp: pg.ppo_policy_loss(lp, jnp.asarray(old), jnp.asarray(ADVS[None]),
                                     jnp.asarray(mask), eps)
  (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logp))
  clipped_r = np.clip(RATIOS, 1 - eps, 1 + eps)
  per_token = np.maximum(-ADVS * RATIOS, -ADVS * clipped_r)
  np.testing.assert_allclose(loss, per_token.mean(), rtol=1e-6)
  # The gradient is -A * r / n where the unclipped term is the max (inside the
  # range, or outside it on the pessimistic side), and zero where clipping holds.
  active = -ADVS * RATIOS >= -ADVS * clipped_r
  want_grad = np.where(active, -ADVS * RATIOS, 0.0) / 9
  np.testing.assert_allclose(grad[0], want_grad, rtol=1e-5, atol=1e-7)
  # Clipped: A>0 with r=1.5, A<0 with r=0.5; A>0 with r=0.5 is not (pessimism).
  assert np.flatnonzero(np.asarray(grad[0]) == 0).tolist() == [4, 5]
  assert metrics["policy/clipfrac"] == pytest.approx(2 / 9)
  np.testing.assert_allclose(metrics["policy/approxkl"], np.mean(0.5 * np.log(RATIOS) ** 2),
                             rtol=1e-5)


def test_ppo_ignores_masked_tokens_even_when_they_are_nan():
  old = np.zeros((1, 4))
  logp = np.array([[0.1, -0.1, np.nan, np.inf]])
  mask = np.array([[True, True, False, False]])
  loss, _ = pg.ppo_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.ones((1, 4)),
                               jnp.asarray(mask), 0.2)
  assert np.isfinite(loss)


def test_value_loss_clipped_matches_numpy():
  rng = np.random.default_rng(10)
  values, old, returns = rng.normal(size=(3, 2, 8))
  mask = np.ones((2, 8), bool)
  loss, metrics = pg.value_loss(jnp.asarray(values), jnp.asarray(old), jnp.asarray(returns),
                                jnp.asarray(mask), 0.2)
  clipped = old + np.clip(values - old, -0.2, 0.2)
  want = 0.5 * np.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["val/error"], ((values - returns) ** 2).mean(), rtol=1e-5)
  unclipped, _ = pg.value_loss(jnp.asarray(values), jnp.asarray(old), jnp.asarray(returns),
                               jnp.asarray(mask), None)
  np.testing.assert_allclose(unclipped, 0.5 * ((values - returns) ** 2).mean(), rtol=1e-5)


def test_a2c_gradient_is_minus_advantage_over_tokens():
  logp = jnp.asarray(np.log(RATIOS * 0.3))[None]
  mask = jnp.ones((1, 9), bool)
  grad = jax.grad(lambda lp: pg.a2c_policy_loss(lp, jnp.asarray(ADVS[None]), mask)[0])(logp)
  np.testing.assert_allclose(grad[0], -ADVS / 9, rtol=1e-6)


# --- the actor-critic forward and the sharded PPO step -------------------------------

def tiny_actor_critic(critic):
  return ActorCritic(Decoder(model_config.DecoderConfig(**model_config.preset("tiny"))), critic)


def rollout_batch(model, params, b=8, t=24, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 512, (b, t)).astype(np.int32)
  mask = np.ones((b, t), bool)
  mask[: b // 2, :3] = False  # left-padded prompts
  resp = np.zeros((b, t), bool)
  resp[:, 8:] = True
  resp[::3, 20:] = False      # shorter responses, padded after
  mask[::3, 20:] = False
  logp, _, values, _ = model.forward(params, tokens, mask)
  return {"tokens": tokens, "mask": mask, "response_mask": resp,
          "old_logp": np.asarray(logp), "old_values": np.asarray(values),
          "advantages": rng.normal(size=(b, t)).astype(np.float32) * resp,
          "returns": rng.normal(size=(b, t)).astype(np.float32) * resp,
          "ref_logp": (np.asarray(logp) + rng.normal(0, 0.1, (b, t))).astype(np.float32) * resp,
          "kl_beta": np.full(b, 0.1, np.float32)}


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_forward_aligns_logprobs_and_values_with_tokens(critic):
  model = tiny_actor_critic(critic)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32)))
  batch = rollout_batch(model, params)
  want, _ = logprobs.sequence_token_logprobs(model.policy, params["policy"], batch["tokens"],
                                             batch["mask"])
  np.testing.assert_allclose(batch["old_logp"], want, atol=1e-5)
  # At the start the ratio is 1: no clipping, no step size.
  config = rlhf_config.get_config("tiny")
  loss, metrics = pg.ppo_fn(params, batch, None, model=model, config=config)
  assert np.isfinite(loss)
  assert metrics["policy/clipfrac"] == 0 and metrics["policy/approxkl"] < 1e-10
  assert metrics["val/ratio"] == pytest.approx(1.0, abs=1e-5)


def _ppo_run(mesh_shape, devices, name, critic, steps=2):
  model = tiny_actor_critic(critic)
  config = rlhf_config.get_config("tiny")
  config.objective.update(name=name, critic=critic, ptx_coef=0.5)
  if critic == "none":  # GRPO's shape: the KL in the loss, per-sequence aggregation
    config.objective.update(loss_agg="seq_mean_token_mean", clip_high=0.28)
    config.objective.kl.update(placement="loss", estimator="k3")
  loss = functools.partial(objectives.get(name), model=model, config=config)
  assert len(devices) == math.prod(mesh_shape)  # the build takes the first N devices
  built = trainers.build(model, loss, mesh_shape, config,
                         init_params=lambda rng: model.init(rng, jnp.ones((1, 8), jnp.int32)))
  state, step, mesh = built.state, built.train_step, built.mesh
  host_params = jax.device_get(state.params)
  out = []
  for i in range(steps):
    batch = rollout_batch(model, host_params, seed=i)
    batch = {k: batch[k] for k in objectives.get(name).keys(config)}
    ptx = np.random.default_rng(i).integers(4, 512, (8, 17)).astype(np.int32)
    batch["ptx"] = {"inputs": ptx[:, :-1], "targets": ptx[:, 1:],
                    "segment_ids": np.ones((8, 16), np.int32),
                    "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                    "loss_mask": np.ones((8, 16), np.int32)}
    state, metrics = step(state, partitioning.shard_batch(batch, mesh, RULES))
    out.append((float(metrics["loss"]), float(metrics["ptx/loss"])))
  return out, jax.device_get(state.params), step


@pytest.mark.parametrize("name,critic", [("ppo", "shared"), ("a2c", "separate"),
                                         ("ppo", "none")])
def test_ppo_step_on_8_devices_matches_one(devices, name, critic):
  ref, ref_params, _ = _ppo_run((1, 1, 1), devices[:1], name, critic)
  got, params, step = _ppo_run((2, 2, 2), devices, name, critic)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), params,
               ref_params)
  assert step.compilations() == 1
