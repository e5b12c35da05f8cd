"""Elo ratings between runs (research/stages/rate.py, research/rate.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import rate as rate_config
from research.errors import ConfigError
from research.stages import rate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(runs: list[str], names: str = "", **rate_overrides):
  c = rate_config.get_config("smoke")
  c.runs, c.names = ",".join(runs), names
  c.rate.update(num_prompts=6, samples_per_prompt=2, max_new_tokens=24, bootstrap=200,
                **rate_overrides)
  return c


def test_rate_by_ground_truth_ties_a_run_with_itself(tiny_base, tiny_sft, tmp_path):
  """The SFT run under two names samples the same responses (same seed): all their
  games are ties and they rate the same; every number is re-derived from the games."""
  workdir = str(tmp_path / "elo")
  summary = rate.run(_config([tiny_base, tiny_sft, tiny_sft], "clm,sft,sft_again"), workdir)
  assert summary["games"] == 3 * 6 * 2
  elo = {r["name"]: r for r in summary["ratings"]}
  assert elo["sft"]["elo"] == pytest.approx(elo["sft_again"]["elo"], abs=1e-6)
  assert summary["win_matrix"]["sft"]["sft_again"] == 0.5
  assert np.mean([r["elo"] for r in summary["ratings"]]) == pytest.approx(1000.0)
  for r in summary["ratings"]:
    assert r["lo"] <= r["elo"] <= r["hi"]
  # The SFT model writes more positive reviews than the CLM model's continuations.
  assert summary["mean_score"]["sft"] > summary["mean_score"]["clm"]
  # Two equal players and a third: the ordering is the head-to-head result's.
  beats = summary["win_matrix"]["sft"]["clm"] > 0.5
  assert (elo["sft"]["elo"] > elo["clm"]["elo"]) == beats
  for name in ("ratings.md", "ratings.png", "summary.json"):
    assert os.path.exists(os.path.join(workdir, name))
  table = open(os.path.join(workdir, "ratings.md"), encoding="utf-8").read()
  assert "sft_again" in table and "ground_truth" in table


def test_rate_by_a_generative_judge_is_position_fair(tiny_base, tiny_sft, tmp_path):
  summary = rate.run(_config([tiny_sft, tiny_base], "sft,clm", judge="generative",
                             judge_run=tiny_sft), str(tmp_path / "elo"))
  assert summary["games"] == 6 * 2
  matrix = summary["win_matrix"]
  assert 0 < matrix["sft"]["clm"] < 1
  assert matrix["sft"]["clm"] + matrix["clm"]["sft"] == pytest.approx(1.0)


@pytest.mark.parametrize("runs,names,judge,fragment", [
    (["A"], "", {}, "at least two runs"),
    (["A", "missing"], "", {}, "is not the workdir of a run"),
    (["A", "A"], "x", {}, "one distinct name per run"),
    (["A", "A"], "x,y", {"judge": "generative"}, "needs config.rate.judge_run"),
    (["A", "A"], "x,y", {"judge": "oracle"}, "config.rate.judge='oracle'"),
])
def test_bad_rate_configs_are_named(tiny_sft, tmp_path, runs, names, judge, fragment):
  paths = [tiny_sft if r == "A" else str(tmp_path / r) for r in runs]
  with pytest.raises(ConfigError, match=fragment):
    rate.run(_config(paths, names, **judge), str(tmp_path / "elo"))


def test_rate_cli_user_errors_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "research.rate", "--runs=a,b", "--judge=oracle",
                         f"--workdir={tmp_path}/elo"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --judge='oracle'")
