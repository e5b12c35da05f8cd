"""KTO (Ethayarajh et al. 2024): the loss against numpy, the unpaired layout, pairs cut
into halves, and a run from the command line on an unpaired file."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import kto as kto_config
from research import objectives
from research.data import layouts, preferences
from research.errors import DataError
from research.objectives import dpo
from research.stages import dpo as dpo_stage
from tests.devices import xla_flags
from tests.test_dpo import pair_batch, response_logp_sums, tiny_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def numpy_kto(pi, ref, pi_kl, ref_kl, desirable, beta, lam_d, lam_u):
  """The paper's loss, sec. 4.1: lambda_y - v(x, y), z0 clamped at 0."""
  z0 = max(0.0, float(np.mean(pi_kl - ref_kl)))
  r = pi - ref
  v = np.where(desirable, lam_d * sigmoid(beta * (r - z0)), lam_u * sigmoid(beta * (z0 - r)))
  return np.where(desirable, lam_d, lam_u) - v, z0


@pytest.mark.parametrize("shift", [-5.0, 5.0])  # z0 clamped to 0, and z0 > 0
def test_kto_loss_matches_numpy(shift):
  rng = np.random.default_rng(0)
  pi, pi_kl = rng.uniform(-60, -10, 8), rng.uniform(-60, -10, 8)
  ref, ref_kl = pi + rng.normal(0, 2, 8), pi_kl - shift + rng.normal(0, 1, 8)
  desirable = rng.random(8) < 0.5
  want, z0 = numpy_kto(pi, ref, pi_kl, ref_kl, desirable, 0.3, 1.0, 1.5)
  loss, rewards, got_z0 = dpo.kto_loss(pi, ref, pi_kl, ref_kl, desirable, 0.3, 1.0, 1.5)
  np.testing.assert_allclose(np.asarray(loss, np.float64), want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(rewards, 0.3 * (pi - ref), rtol=1e-5)
  np.testing.assert_allclose(got_z0, z0, rtol=1e-5, atol=1e-6)
  assert (z0 == 0.0) == (shift < 0)


def test_kto_reference_point_carries_no_gradient_and_desirable_is_pushed_up():
  grads = jax.grad(lambda pi, pi_kl: dpo.kto_loss(pi, np.zeros(2), pi_kl, np.full(2, -3.0),
                                                  np.array([True, False]), 0.5)[0].sum(),
                   argnums=(0, 1))(np.array([-1.0, -1.0]), np.array([-2.0, -1.0]))
  assert np.all(np.asarray(grads[1]) == 0.0)
  assert grads[0][0] < 0 < grads[0][1]  # raise the desirable's log-prob, lower the other's


def test_registered_kto_matches_numpy_on_a_padded_batch():
  """`objectives.get('kto')` on a padded batch (rows: completion, KL completion)
  against numpy on log-probs from plain forward passes over the unpadded rows."""
  model, params = tiny_policy(3)
  batch, rows = pair_batch(left_pad=True)
  pi = response_logp_sums(model, params, rows)
  ref = pi + np.random.default_rng(0).normal(0, 1.5, (2, 2))
  batch.update(ref_logps=ref.astype(np.float32), label=np.array([1.0, 0.0], np.float32))
  config = kto_config.get_config("tiny")
  config.objective.update(beta=0.7, desirable_weight=1.2, undesirable_weight=0.8, nll_coef=0.0)
  loss, metrics = objectives.get("kto")(params, batch, None, model=model, config=config)
  want, z0 = numpy_kto(pi[:, 0], ref[:, 0], pi[:, 1], ref[:, 1], np.array([True, False]),
                       0.7, 1.2, 0.8)
  np.testing.assert_allclose(float(loss), want.mean(), rtol=2e-4)
  np.testing.assert_allclose(metrics["kl"], z0, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(metrics["rewards/chosen"], 0.7 * (pi - ref)[0, 0], rtol=1e-3)
  np.testing.assert_allclose(metrics["rewards/rejected"], 0.7 * (pi - ref)[1, 0], rtol=1e-3)


def test_unpaired_layout_and_its_errors():
  got = layouts.unpaired({"prompt": "p", "completion": "c", "label": 0}, "f:1")
  assert got == {"prompt": "p", "completion": "c", "label": False, "where": "f:1"}
  chat = layouts.unpaired({"prompt": [{"role": "user", "content": "hi"}],
                           "completion": [{"role": "assistant", "content": "yo"}],
                           "label": True}, "f:2")
  assert chat["completion"] == "yo" and chat["prompt"][0]["content"] == "hi"
  with pytest.raises(DataError, match=r"f:3: field 'label' is str \"yes\"; expected true"):
    layouts.unpaired({"prompt": "p", "completion": "c", "label": "yes"}, "f:3")
  with pytest.raises(DataError, match=r"f:4: an unpaired .* only --config.objective.name=kto"):
    layouts.preference({"prompt": "p", "completion": "c", "label": True}, "f:4")


def test_rankings_split_into_halves_and_ties_at_the_median_are_left_out():
  records = [{"prompt": "a", "responses": ["w", "x", "y", "z"], "ranks": [2, 0, 3, 1]},
             {"prompt": "b", "responses": ["c", "r"], "ranks": [0, 1]},
             {"prompt": "t", "responses": ["p", "q", "s", "u"], "ranks": [0, 1, 1, 2]},
             {"prompt": "e", "responses": ["g", "h"], "ranks": [0, 0]}]
  got = {(r["prompt"], r["completion"]): r["label"] for r in preferences.split_ranked(records)}
  assert got == {("a", "x"): True, ("a", "z"): True, ("a", "w"): False, ("a", "y"): False,
                 ("b", "c"): True, ("b", "r"): False, ("t", "p"): True, ("t", "u"): False}


def test_kl_completions_come_from_other_examples():
  records = [{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 2 == 0, "where": str(i)}
             for i in range(7)]
  rows = dpo_stage.unpaired_records(records, seed=3)
  assert [r["responses"][0] for r in rows] == [f"c{i}" for i in range(7)]
  others = [r["responses"][1] for r in rows]
  assert sorted(others) == sorted(f"c{i}" for i in range(7))  # each used once
  assert all(r["responses"][0] != r["responses"][1] for r in rows)
  assert [r["label"] for r in rows] == [i % 2 == 0 for i in range(7)]


def test_kto_trains_from_the_cli_on_an_unpaired_file(tiny_sft, tmp_path):
  """Embedded pairs written as TRL's unpaired layout (each pair's chosen
  desirable, its rejected undesirable, shuffled so no pair stays together); 100 KTO
  steps from the tiny SFT model open a held-out implicit-reward margin between
  desirable and undesirable completions (0 at the start; seen 0.34) and lower the
  held-out loss (0.5 at the start; seen 0.464). The embedded run of the claims
  experiment is where KTO's effect on the policy is measured."""
  config = kto_config.get_config("tiny")
  config.data.num_responses = 2  # pairs: a response is desirable or not, never both
  pairs = preferences.pairs(preferences.embedded(config.data, "train")
                            + preferences.embedded(config.data, "validation"))
  rng = np.random.default_rng(0)
  rows = [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
          for p in pairs for key in ("chosen", "rejected")]
  path = tmp_path / "unpaired.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in rng.permutation(len(rows)):
      f.write(json.dumps(rows[i]) + "\n")
  workdir = tmp_path / "kto"
  proc = subprocess.run(
      [sys.executable, "-m", "research.main", "--config=configs/kto.py:tiny",
       f"--workdir={workdir}", f"--config.init_from={tiny_sft}", f"--config.data.source={path}",
       "--config.train.steps=100", "--config.train.eval_every=100", "--config.optimizer.lr=3e-4",
       "--config.train.checkpoint_every=100", "--config.train.eval_batches=10",
       "--config.evaluate.num_prompts=0"],
      cwd=ROOT, env={**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT},
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  held_out = len(range(0, len(rows), 20))  # every 20th record: config.data.holdout_every
  assert f"data: train examples: {len(rows) - held_out:,} read" in proc.stderr
  with open(workdir / "summary.json", encoding="utf-8") as f:
    s = json.load(f)
  assert s["objective"] == "kto" and s["eval_at_start"]["rewards/margins"] == 0.0
  assert s["eval_at_start"]["loss"] == pytest.approx(0.5)  # 1 - sigmoid(0) per example
  assert s["eval"]["rewards/margins"] > 0.1 and s["eval"]["loss"] < 0.497
