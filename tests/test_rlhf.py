"""End to end on the tiny SFT model with the embedded ground-truth reward (positivity
of the review the policy writes): PPO, A2C, PPO-ptx, a large beta, best-of-n,
and an interrupted run that resumes exactly."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import best_of_n as bon_config
from configs import grpo as grpo_config
from configs import rlhf as rlhf_config
from research import runs
from research.rlhf import best_of_n, online, rewards
from research.stages import best_of_n as bon_stage, rlhf as rlhf_stage


def tiny_rlhf(init_from, module=rlhf_config, **objective):
  """Ground-truth reward, scores standardised per batch (their raw std is ~0.1, so the
  KL term would otherwise dominate a tiny run), a separate critic from the policy."""
  config = rlhf_config.on_ground_truth(module.get_config("tiny"))
  config.init_from = init_from
  config.mesh.num_devices = 1
  config.objective.update(objective)
  config.evaluate.update(num_prompts=0, pretrain_batches=4)
  return config


def _rl_configs(tiny_sft):
  """The runs compared below, by name."""
  big_beta = tiny_rlhf(tiny_sft)
  big_beta.objective.kl.beta = 1.0
  # A2C: one pass per rollout, a value head on the policy's trunk.
  a2c = tiny_rlhf(tiny_sft, name="a2c", critic="shared")
  a2c.ppo.epochs = 1
  a2c.optimizer.lr = 3e-4
  a2c.train.steps = 50
  a2c.evaluate.pretrain_batches = 0
  return {"ppo": tiny_rlhf(tiny_sft), "ptx": tiny_rlhf(tiny_sft, ptx_coef=1.0),
          "big_beta": big_beta, "a2c": a2c}


@pytest.fixture(scope="module")
def rl_runs(tiny_sft, tmp_path_factory):
  """name -> summary, each run trained the first time a test asks for it (the
  default suite trains PPO only; the comparisons are `-m slow`)."""
  configs, done = _rl_configs(tiny_sft), {}
  # A2C's reward is a plain Python function of the texts.
  texts_reward = lambda prompts, responses: [
      rewards.ground_truth(p, r, "instruction") for p, r in zip(prompts, responses)]

  def get(name):
    if name not in done:
      done[name] = rlhf_stage.run(configs[name], str(tmp_path_factory.mktemp(name)),
                                  reward=texts_reward if name == "a2c" else None)
    return done[name]
  return get


def test_ppo_raises_the_reward_with_a_bounded_kl(rl_runs):
  """30 iterations x 4 epochs x 4 minibatches = 480 steps. Seen: raw ground truth
  0.50 -> 0.87 (means of the first and last 3 iterations), KL(pi || SFT) 0.8 -> 20
  nats (before the sampler's inverse-CDF draws, another random stream: 0.49 -> 0.66,
  KL 12.7)."""
  s = rl_runs("ppo")
  curves = s["curves"]
  assert curves["objective/raw_scores"]["end"] > curves["objective/raw_scores"]["start"] + 0.1
  assert 0.3 < curves["objective/kl"]["end"] < 30
  assert s["compilations"] == 1 and s["optimizer_steps"] == 480
  last = s["last"]
  for key in ("objective/kl", "objective/entropy", "objective/scores", "policy/clipfrac",
              "policy/approxkl", "val/clipfrac", "val/error", "returns/mean",
              "advantages/mean", "response/length", "objective/beta"):
    assert np.isfinite(last[key]), key
  assert 0 < last["policy/clipfrac"] < 0.5 and last["policy/approxkl"] < 0.1


@pytest.mark.slow
def test_a2c_raises_the_reward(rl_runs):
  """50 iterations x 4 minibatch steps, one pass each. Seen: 0.50 -> 0.79, KL 15."""
  s = rl_runs("a2c")
  curves = s["curves"]
  assert curves["objective/raw_scores"]["end"] > curves["objective/raw_scores"]["start"] + 0.1
  assert curves["objective/kl"]["end"] < 40
  assert s["optimizer_steps"] == 200 and s["critic"] == "shared"


@pytest.mark.slow
def test_a_large_beta_keeps_the_policy_near_the_reference(rl_runs):
  """beta 1.0 against 0.05 on the same run. Seen: KL 3.6 against 20 nats, reward
  0.49 -> 0.50 against 0.50 -> 0.87 (other random streams and float orders: KL 3.5-4.4
  against 12.7-20)."""
  big = rl_runs("big_beta")["curves"]["objective/kl"]
  small = rl_runs("ppo")["curves"]["objective/kl"]
  print(f"KL end: beta 1.0 {big['end']:.2f}, beta 0.05 {small['end']:.2f}")
  assert big["end"] < 5.0 and big["end"] < small["end"] / 2


@pytest.mark.slow
def test_ptx_keeps_the_pretraining_loss_lower(rl_runs):
  """Held-out corpus NLL. Seen: SFT 2.15, PPO 2.40, PPO-ptx (coef 1) 1.74."""
  plain, ptx = rl_runs("ppo")["pretrain_loss"], rl_runs("ptx")["pretrain_loss"]
  assert plain["policy"] > plain["reference"]  # plain PPO forgets some of the corpus
  assert ptx["policy"] < plain["policy"]
  assert rl_runs("ptx")["last"]["ptx/loss"] > 0


def test_best_of_n_raises_the_reward_of_the_fine_tuned_policy(tiny_sft, tmp_path):
  """2 rounds of best-of-8 on 64 prompts, 40 SFT steps each. Seen: sampled ground truth
  on held-out prompts 0.56 -> 0.61 -> 0.68 by round, KL to the SFT model 0 -> 6 -> 14."""
  config = bon_config.get_config("tiny")
  config.init_from = tiny_sft
  config.mesh.num_devices = 1
  config.reward.source = "ground_truth"
  config.evaluate.update(num_prompts=32, samples_per_prompt=1)
  s = bon_stage.run(config, str(tmp_path))
  rounds = s["rounds"]
  assert [r["round"] for r in rounds] == [0, 1, 2]
  assert rounds[1]["best/score"] > rounds[1]["pool/score"] + 0.1
  assert s["curves"]["sampled/reward"]["end"] > s["curves"]["sampled/reward"]["start"] + 0.05
  assert s["curves"]["kl"]["end"] > 0.1
  # A rerun skips finished rounds; the final policy loads like any stage's.
  again = bon_stage.run(config, str(tmp_path))
  assert again["rounds"][1:] == rounds[1:]
  _, params = runs.load_policy(str(tmp_path))
  assert jax.tree.leaves(params)


@pytest.mark.parametrize("module", [rlhf_config,
                                    pytest.param(grpo_config, marks=pytest.mark.slow)],
                         ids=["ppo", "grpo"])
def test_interrupted_run_resumes_exactly(tiny_sft, tmp_path, module):
  """SIGTERM after iteration 2 saves and stops; the rerun continues to 4 and matches an
  uninterrupted run (policy, critic, Adam state, KL controller, ptx data position);
  GRPO: groups of 4, the adaptive beta inside the loss."""
  def config():
    c = tiny_rlhf(tiny_sft, module, ptx_coef=0.5)
    c.objective.kl.update(target=3.0, horizon=100)  # adaptive beta: its state must resume
    c.objective.score_norm = "running"
    c.train.update(steps=4, checkpoint_every=4)
    c.evaluate.pretrain_batches = 0
    return c

  full = rlhf_stage.run(config(), str(tmp_path / "full"))

  def stop_at_2(iteration):
    if iteration == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  part = rlhf_stage.run(config(), str(tmp_path / "part"), hooks=[stop_at_2])
  assert part["preempted"] and part["iteration"] == 2
  resumed = rlhf_stage.run(config(), str(tmp_path / "part"))
  assert resumed["iteration"] == 4 and not resumed["preempted"]
  for key in ("loss", "objective/kl", "objective/beta", "objective/scores", "ptx/loss"):
    np.testing.assert_allclose(resumed["last"][key], full["last"][key], rtol=1e-5, err_msg=key)
  _, a = runs.load_policy(str(tmp_path / "full"))
  _, b = runs.load_policy(str(tmp_path / "part"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), jax.device_get(a),
               jax.device_get(b))


def test_bad_reward_and_config_errors_are_clear(tiny_sft, tmp_path):
  c = tiny_rlhf(tiny_sft)
  c.train.steps = 1
  with pytest.raises(ValueError, match="non-finite scores at iteration 0"):
    rlhf_stage.run(c, str(tmp_path / "nan"), reward=lambda p, r: [float("nan")] * len(r))
  c = tiny_rlhf(tiny_sft, name="a2c")
  with pytest.raises(ValueError, match="config.ppo.epochs=1"):
    rlhf_stage.run(c, str(tmp_path / "a2c"))
  c = tiny_rlhf(tiny_sft, critic_init="reward_model")
  c.reward.model = ""
  with pytest.raises(ValueError, match="config.reward.model"):
    rlhf_stage.run(c, str(tmp_path / "critic"))


def test_prompt_stream_covers_every_prompt_once_per_epoch():
  seen = np.concatenate([online.prompt_indices(i, 8, 20, seed=3) for i in range(5)])  # 40 = 2 epochs
  assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:]) == list(range(20))
  assert not np.array_equal(seen[:20], seen[20:])


def test_running_moments_match_numpy():
  x = np.random.default_rng(0).normal(2.0, 3.0, 100)
  m = online.RunningMoments()
  for chunk in np.split(x, [10, 45, 80]):
    m.update(chunk)
  assert m.mean == pytest.approx(x.mean()) and m.std == pytest.approx(x.std(ddof=1))
  json.dumps(m.state_dict())  # checkpointable


def test_best_records_keep_only_responses_at_min_score():
  """Rejection-sampling fine-tuning on a checker: a prompt none of whose ended
  responses is correct trains nothing."""
  scores = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  ended = np.array([[True, True, True], [True, True, True], [False, True, True]])
  texts = [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0", "c1", "c2"]]
  records, stats = best_of_n.best_records(["p", "q", "r"], texts, scores, ended, True, 0.5)
  assert [(r["prompt"], r["completion"]) for r in records] == [("p", "a1"), ("r", "c1")]
  assert stats["kept"] == 2
  everything, _ = best_of_n.best_records(["p", "q", "r"], texts, scores, ended, True)
  assert len(everything) == 3
