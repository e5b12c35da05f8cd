"""Iterated online RLHF's pieces: a preferences round that continues the earlier
rounds' file on new prompts, and RL that starts from an earlier RL run's policy;
the experiment end to end at the smoke size (slow)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import preferences as preferences_config
from configs import rlhf as rlhf_config
from research import runs
from research.stages import preferences as preferences_stage, rlhf as rlhf_stage


def _labels(policy: str, workdir: str, **settings):
  c = preferences_config.get_config("smoke")
  c.init_from = policy
  c.mesh.num_devices = 1
  c.preferences.update(num_prompts=6, k=2, max_new_tokens=16, **settings)
  return preferences_stage.run(c, workdir)


def _lines(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "preferences.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_a_round_labels_new_prompts_and_keeps_the_earlier_rounds(tiny_sft, tmp_path):
  first = str(tmp_path / "r1")
  _labels(tiny_sft, first)
  second = _labels(tiny_sft, str(tmp_path / "r2"), prompt_offset=6, accumulate=first)
  old, both = _lines(first), _lines(str(tmp_path / "r2"))
  assert both[:len(old)] == old and len(both) == len(old) + second["kept_prompts"]
  assert second["accumulated"] == {"from": first, "records": len(old)}
  assert not {r["prompt"] for r in old} & {r["prompt"] for r in both[len(old):]}
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="config.preferences.accumulate="):
    _labels(tiny_sft, str(tmp_path / "r3"), accumulate=str(tmp_path / "nothing"))


def _ppo(init_from: str, lr: float):
  c = rlhf_config.on_ground_truth(rlhf_config.get_config("smoke"))
  c.init_from = init_from
  c.mesh.num_devices = 1
  c.train.steps = 1
  c.optimizer.update(lr=lr, warmup_steps=0)
  c.evaluate.update(num_prompts=0, pretrain_batches=0)
  return c


def test_rl_starts_from_an_earlier_rl_runs_policy(tiny_sft, tmp_path):
  """At learning rate 0 a round changes nothing: its policy is the earlier round's
  policy bit for bit (and not the SFT model the earlier round started from)."""
  first, second = str(tmp_path / "ppo1"), str(tmp_path / "ppo2")
  rlhf_stage.run(_ppo(tiny_sft, 1e-3), first)
  rlhf_stage.run(_ppo(first, 0.0), second)
  load = lambda run: runs.load_policy(run)[1]
  before, after, sft = load(first), load(second), load(tiny_sft)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(sft),
                                                       jax.tree.leaves(after)))


@pytest.mark.slow
def test_online_rlhf_experiment_runs_and_rates_its_rounds(tiny_base, tiny_sft, tmp_path):
  """Two rounds and the single-round arm at the smoke size (wiring: smoke models
  learn nothing), on the session's tiny CLM and SFT runs."""
  from experiments import online_rlhf, runner  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "online")
  os.makedirs(root)
  shutil.copytree(tiny_base, os.path.join(root, "clm"))
  shutil.copytree(tiny_sft, os.path.join(root, "sft"))
  exp = online_rlhf.experiment("smoke", root, seeds=(0,), rounds=2)
  rows = runner.run(exp, root)
  elo = next(r for r in rows if r["point"] == "elo_s0")
  assert {k for k in elo if k.startswith("elo_")} == {
      "elo_sft", "elo_round1", "elo_round2", "elo_single"}
  prefs = {r["point"]: r for r in rows if r["stage"] == "preferences"}
  assert prefs["prefs_r2_s0"]["labelled_prompts"] > prefs["prefs_r1_s0"]["labelled_prompts"]
  report = open(os.path.join(root, "online_rlhf.md"), encoding="utf-8").read()
  assert "round2" in report and "single" in report
