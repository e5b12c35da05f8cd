"""The group-based RL methods and the registries they plug into.

Numpy references (written independently, with loops) for every advantage
estimator, the loss aggregations, clip-higher and the KL-in-the-loss gradient;
the missing-EOS score; config validation and `config.imports`; and tiny end-to-end
runs in which GRPO, Dr. GRPO, RLOO and REINFORCE++ raise the ground-truth reward.
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dr_grpo as dr_grpo_config
from configs import grpo as grpo_config
from configs import reinforce_pp as reinforce_pp_config
from configs import rlhf as rlhf_config
from configs import rloo as rloo_config
from research import objectives
from research.objectives import advantages as adv, policy_gradient as pg
from research.rlhf import online
from research.stages import rlhf as rlhf_stage


def rollout_arrays(b=8, t=12, seed=0):
  """Random per-token rewards on contiguous response masks of varying length."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, t), bool)
  for i in range(b):
    start = rng.integers(1, 4)
    mask[i, start:start + rng.integers(2, t - start)] = True
  rewards = (rng.normal(size=(b, t)) * mask).astype(np.float32)
  values = (rng.normal(size=(b, t)) * mask).astype(np.float32)
  return rewards, values, mask


def config_with(**objective):
  c = rlhf_config.get_config("tiny")
  c.objective.update(objective)
  return c


def broadcast(adv_b, mask):
  return np.where(mask, np.asarray(adv_b, np.float64)[:, None], 0.0)


# --- advantage estimators against numpy ------------------------------------------

def test_group_estimators_match_numpy():
  rewards, values, mask = rollout_arrays()
  g = 4
  r = [sum(rewards[i, t] for t in range(rewards.shape[1]) if mask[i, t]) for i in range(8)]
  grpo, dr, rloo = [], [], []
  for i in range(8):
    group = [r[j] for j in range(8) if j // g == i // g]
    mean = sum(group) / g
    std = np.sqrt(sum((x - mean) ** 2 for x in group) / (g - 1))
    others = [r[j] for j in range(8) if j // g == i // g and j != i]
    grpo.append((r[i] - mean) / (std + 1e-4))
    dr.append(r[i] - mean)
    rloo.append(r[i] - sum(others) / (g - 1))
  inputs = adv.Inputs(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), g)
  config = config_with()
  for name, want in (("grpo", grpo), ("dr_grpo", dr), ("rloo", rloo)):
    got, returns = objectives.get(name, kind="advantage")(inputs, config=config)
    np.testing.assert_allclose(got, broadcast(want, mask), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(returns, broadcast(r, mask), rtol=1e-5, atol=1e-6)
  # RLOO is GRPO's mean baseline rescaled by G / (G - 1) (Ahmadian et al. 2024).
  np.testing.assert_allclose(np.asarray(rloo), np.asarray(dr) * g / (g - 1), rtol=1e-6)


def test_reinforce_has_no_baseline_and_the_moving_baseline_uses_earlier_scores_only():
  rewards, values, mask = rollout_arrays(seed=3)
  r = np.where(mask, rewards, 0.0).sum(1)
  inputs = adv.Inputs(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1)
  got, returns = objectives.get("reinforce", kind="advantage")(inputs, config=config_with())
  np.testing.assert_allclose(got, broadcast(r, mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(returns, broadcast(r, mask), rtol=1e-5, atol=1e-6)
  cfg = ml_collections.ConfigDict({"score_norm": "baseline", "missing_eos_score": None})
  moments, ended = online.RunningMoments(), np.ones(3, bool)
  first, second, third = np.array([1.0, 0, 0]), np.array([1.0, 1, 0]), np.array([0.0, 0, 0])
  np.testing.assert_allclose(online.shape_scores(first, ended, cfg, moments), first)
  np.testing.assert_allclose(online.shape_scores(second, ended, cfg, moments), second - 1 / 3)
  np.testing.assert_allclose(online.shape_scores(third, ended, cfg, moments), third - 0.5,
                             rtol=1e-6)


def test_reinforce_pp_is_batch_whitened_returns_to_go():
  rewards, values, mask = rollout_arrays(seed=1)
  gamma = 0.9
  returns = np.zeros_like(rewards, np.float64)
  for i in range(rewards.shape[0]):
    acc = 0.0
    for t in reversed(range(rewards.shape[1])):
      if mask[i, t]:
        acc = rewards[i, t] + gamma * acc
        returns[i, t] = acc
  flat = returns[mask]
  want = np.where(mask, (returns - flat.mean()) / flat.std(ddof=1), 0.0)
  inputs = adv.Inputs(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1)
  got, got_returns = adv.reinforce_pp_estimator(inputs, config=config_with(gamma=gamma))
  np.testing.assert_allclose(got_returns, returns, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # It never reads the critic.
  other = adv.Inputs(jnp.asarray(rewards), jnp.zeros_like(values), jnp.asarray(mask), 1)
  np.testing.assert_allclose(adv.reinforce_pp_estimator(other, config=config_with(gamma=gamma))[0],
                             got, rtol=1e-6)


def test_gae_estimator_is_gae():
  rewards, values, mask = rollout_arrays(seed=2)
  inputs = adv.Inputs(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1)
  got = adv.gae_estimator(inputs, config=config_with(gamma=0.99, lam=0.9))
  want = adv.gae(rewards, values, mask, 0.99, 0.9)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-6)


# --- losses against numpy --------------------------------------------------------

@pytest.mark.parametrize("how", pg.AGGREGATIONS)
def test_loss_aggregations_match_numpy(how):
  rewards, _, mask = rollout_arrays(seed=3)
  x = rewards + 5.0 * ~mask  # garbage outside the mask must not leak in
  rows = [[x[i, t] for t in range(x.shape[1]) if mask[i, t]] for i in range(x.shape[0])]
  want = {"token_mean": sum(map(sum, rows)) / sum(map(len, rows)),
          "seq_mean_token_mean": np.mean([sum(r) / len(r) for r in rows]),
          "seq_mean_token_sum": np.mean([sum(r) for r in rows])}[how]
  assert float(pg.aggregate(jnp.asarray(x), jnp.asarray(mask), how)) == pytest.approx(want,
                                                                                     rel=1e-5)


def test_clip_higher_matches_numpy_and_ignores_high_ratios_only_above_its_bound():
  rng = np.random.default_rng(4)
  _, _, mask = rollout_arrays(seed=4)
  old = rng.normal(-2, 0.5, mask.shape).astype(np.float32)
  logp = (old + rng.normal(0, 0.3, mask.shape)).astype(np.float32)
  a = rng.normal(size=mask.shape).astype(np.float32)
  terms = []
  for i, t in zip(*np.nonzero(mask)):
    ratio = np.exp(float(logp[i, t]) - float(old[i, t]))
    terms.append(max(-a[i, t] * ratio, -a[i, t] * min(max(ratio, 0.8), 1.28)))
  got, _ = pg.ppo_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(a),
                              jnp.asarray(mask), 0.2, 0.28)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)
  sym, _ = pg.ppo_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(a),
                              jnp.asarray(mask), 0.2)
  assert float(sym) != pytest.approx(float(got))  # the bound changed something here


def test_k3_penalty_in_the_loss_has_the_deepseekmath_gradient():
  """d/dlogp of k3 = pi_ref/pi - log(pi_ref/pi) - 1 is 1 - pi_ref/pi (Shao et al. eq. 4)."""
  rng = np.random.default_rng(5)
  _, _, mask = rollout_arrays(seed=5)
  logp = rng.normal(-2, 0.5, mask.shape).astype(np.float32)
  ref = (logp + rng.normal(0, 0.2, mask.shape)).astype(np.float32)
  f = lambda lp: pg.aggregate(adv.kl_per_token(lp, ref, mask, "k3"), mask, "token_mean")
  got = jax.grad(f)(jnp.asarray(logp))
  want = np.where(mask, 1.0 - np.exp(ref.astype(np.float64) - logp), 0.0) / mask.sum()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_missing_eos_score_goes_to_responses_without_eos():
  """The bug: `np.where(ended, penalty, scores)` penalised the finished responses."""
  cfg = ml_collections.ConfigDict({"score_norm": "none", "missing_eos_score": -1.0})
  raw = np.asarray([0.5, 0.7, 0.9], np.float32)
  ended = np.asarray([True, False, True])
  got = online.shape_scores(raw, ended, cfg, online.RunningMoments())
  np.testing.assert_array_equal(got, np.float32([0.5, -1.0, 0.9]))
  cfg.missing_eos_score = None
  np.testing.assert_array_equal(online.shape_scores(raw, ended, cfg, online.RunningMoments()), raw)


def test_group_stats_see_groups_that_cannot_teach():
  scores = np.asarray([1, 1, 1, 1, 0, 1, 0, 1], np.float32)
  stats = online.group_stats(scores, 4)
  assert stats["objective/zero_std_groups"] == 0.5
  assert stats["objective/group_std"] == pytest.approx(0.25)


# --- registries, validation, config.imports -------------------------------------

def test_registries_name_what_is_known():
  assert {"gae", "grpo", "dr_grpo", "rloo", "reinforce", "reinforce_pp"} <= set(
      objectives.ADVANTAGES)
  assert objectives.get("simpo").reference_free and not objectives.get("dpo").reference_free
  assert objectives.get("a2c").single_pass and not objectives.get("ppo").single_pass
  keys = objectives.get("ppo").keys(grpo_config.get_config("tiny"))
  assert "ref_logp" in keys and "old_values" not in keys
  assert "returns" in objectives.get("ppo").keys(rlhf_config.get_config("tiny"))
  with pytest.raises(ValueError, match="config.objective.advantage='nope'.*config.imports"):
    objectives.get("nope", kind="advantage")


def test_a_module_in_config_imports_registers_its_estimator(tmp_path, monkeypatch):
  (tmp_path / "my_estimators.py").write_text(
      "from research import objectives\n"
      "@objectives.register('mean_baseline', kind='advantage')\n"
      "def mean_baseline(inputs, *, config):\n"
      "  r = objectives.advantages.sequence_rewards(inputs)\n"
      "  return objectives.advantages.on_tokens(r - r.mean(), r, inputs.mask)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  config = grpo_config.get_config("tiny")
  config.imports = "my_estimators"
  config.objective.advantage = "mean_baseline"
  try:
    assert objectives.import_modules(config) == ["my_estimators"]
    assert objectives.get("mean_baseline", kind="advantage").min_group_size == 1
    config.init_from = "runs/sft"
    loss, estimator = rlhf_stage._validate(config)  # pylint: disable=protected-access
    assert estimator.name == "mean_baseline" and loss.name == "ppo"
  finally:
    objectives.ADVANTAGES.pop("mean_baseline", None)
    sys.modules.pop("my_estimators", None)
  config.imports = "no_such_module_here"
  with pytest.raises(ImportError, match="config.imports: cannot import 'no_such_module_here'"):
    objectives.import_modules(config)


@pytest.mark.parametrize("change,message", [
    ({"objective.critic": "none"}, "reads the critic's values"),
    ({"objective.advantage": "grpo"}, "never reads"),
    ({"objective.advantage": "rloo", "objective.critic": "none"}, "samples_per_prompt must be >= 2"),
    ({"objective.name": "a2c"}, "config.ppo.epochs=1"),
    ({"objective.name": "dpo"}, "not an online loss"),
    ({"objective.kl.placement": "both"}, "kl.placement"),
    ({"ppo.minibatch_size": 12}, "multiple of config.ppo.minibatch_size"),
    ({"train.steps": 1, "ppo.epochs": 2}, r"below the 8 optimizer updates"),
])
def test_config_mismatches_are_named(change, message):
  config = rlhf_config.get_config("tiny")
  for key, value in change.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  with pytest.raises(ValueError, match=message):
    rlhf_stage._validate(config)  # pylint: disable=protected-access


# --- tiny end-to-end runs on the ground-truth reward ------------------------------

def tiny_online(module, init_from, steps=30, **objective):
  """The method's tiny config on the tiny SFT model and the ground-truth reward."""
  config = rlhf_config.on_ground_truth(module.get_config("tiny"))
  config.init_from = init_from
  config.mesh.num_devices = 1
  config.objective.update(objective)
  config.train.update(steps=steps, checkpoint_every=steps)
  config.evaluate.update(num_prompts=0, pretrain_batches=0)
  return config


# Seen (30 iterations x 8 prompts x G=4, 2 CPU cores, ~30 s each), raw ground truth
# of the first and last 3 iterations: GRPO 0.49 -> 0.92, Dr. GRPO 0.51 -> 0.99, RLOO
# 0.51 -> 0.81, REINFORCE++ (G=1, 32 prompts, beta 0.01) 0.51 -> 1.00. The take-off
# comes at a seed- and machine-dependent iteration: on an AVX-512 machine GRPO's
# seed 0 stayed at 0.59 after 30 iterations (seeds 1, 2: 0.95, 1.00) and reached
# 0.88 after 40, so the runs are 40 iterations long.
# Dr. GRPO and REINFORCE++ differ from these two only in their estimator and loss
# aggregation (numpy-checked above); their runs are `-m slow` to keep the suite short.
@pytest.mark.parametrize("module,gain", [
    (grpo_config, 0.2), pytest.param(rloo_config, 0.2, marks=pytest.mark.slow),
    pytest.param(dr_grpo_config, 0.2, marks=pytest.mark.slow),
    pytest.param(reinforce_pp_config, 0.2, marks=pytest.mark.slow)])
def test_group_methods_raise_the_ground_truth_reward(tiny_sft, tmp_path, module, gain):
  s = rlhf_stage.run(tiny_online(module, tiny_sft, steps=40), str(tmp_path))
  curve = s["curves"]["objective/raw_scores"]
  assert curve["end"] > curve["start"] + gain, curve
  assert s["compilations"] == 1 and s["critic"] == "none"
  assert s["optimizer_steps"] == 40 * 4
  for key in ("objective/kl", "policy/clipfrac", "advantages/var", "loss"):
    assert np.isfinite(s["last"][key]), key
  if s["samples_per_prompt"] > 1:
    assert 0 <= s["last"]["objective/zero_std_groups"] < 1


def test_a_loss_gets_the_rollout_keys_it_declares(tiny_sft, tmp_path):
  objectives.register("needs_foo", lambda *a, **k: None, batch_keys=("tokens", "foo"))
  try:
    with pytest.raises(ValueError, match=r"needs batch keys \['foo'\]"):
      rlhf_stage.run(tiny_online(grpo_config, tiny_sft, steps=3, name="needs_foo"),
                     str(tmp_path))
  finally:
    objectives.LOSSES.pop("needs_foo")
