"""The experiment runner (skip finished points, CSV, plots, cluster commands) and the
whole pipeline at the `smoke` size."""

import os

import pytest

from experiments import chain, dpo_frontier, pipeline, runner
from experiments import run as run_cli
from experiments.runner import Experiment, Point


def test_points_must_come_after_what_they_need():
  c = chain.clm(chain.size("smoke"))
  with pytest.raises(ValueError, match="must come earlier"):
    Experiment("bad", [Point("b", c, needs=("a",)), Point("a", c)])
  with pytest.raises(ValueError, match="two points"):
    Experiment("bad", [Point("a", c), Point("a", c)])
  with pytest.raises(ValueError, match="known sizes"):
    chain.size("huge")


def test_frontier_points_and_waves():
  exp = dpo_frontier.experiment("tiny", "/r")
  names = [p.name for p in exp.points]
  assert names[:4] == ["clm", "sft", "preferences", "reward"]
  assert {f"dpo_beta{b:g}" for b in dpo_frontier.DPO_BETAS} <= set(names)
  assert {f"eval_best_of_{n}" for n in dpo_frontier.BEST_OF} <= set(names)
  waves = exp.waves()
  assert waves[0] == ["clm"] and waves[1] == ["sft"]
  # Every method's training runs in one wave, after the reward model's.
  assert set(waves.pop(-1)) <= {n for n in names if n.startswith("eval_")}
  dpo = exp.point("dpo_beta0.1").config
  assert dpo.data.source == "/r/preferences/preferences.jsonl" and dpo.init_from == "/r/sft"


def test_list_prints_one_command_per_point(capsys):
  run_cli.main(["experiments/pipeline.py", "--size=smoke", "--root=/tmp/x", "--list"])
  out = capsys.readouterr().out
  commands = [l for l in out.splitlines() if l.startswith("python")]
  assert len(commands) == len(pipeline.experiment("smoke", "/tmp/x").points)
  assert "--point=clm" in commands[0] and "# wave 2" in out


def test_runner_skips_finished_points_and_collects_a_table(tmp_path):
  root = str(tmp_path)
  s = chain.size("smoke")
  analysed = []

  def clm(steps):
    c = chain.clm(s)
    c.train.update(steps=steps, checkpoint_every=steps)
    c.optimizer.warmup_steps = 1
    c.data.corpus_size = 200
    return c

  exp = Experiment("two", [Point("a", clm(4), tags={"steps": 4}),
                           Point("b", clm(8), needs=("a",), tags={"steps": 8})],
                   row=lambda p, summ: {"loss": summ["eval"]["nll"]},
                   analyse=lambda rows, out: analysed.append(len(rows)))
  with pytest.raises(RuntimeError, match="needs 'a'"):
    runner.run(exp, root, only="b")
  rows = runner.run(exp, root)
  assert [(r["point"], r["steps"]) for r in rows] == [("a", 4), ("b", 8)]
  assert rows[1]["loss"] < rows[0]["loss"] and analysed == [2]
  stamp = os.path.getmtime(os.path.join(root, "a", "summary.json"))
  runner.run(exp, root)
  assert os.path.getmtime(os.path.join(root, "a", "summary.json")) == stamp
  assert [t["point"] for t in runner.read_csv(os.path.join(root, "results.csv"))] == ["a", "b"]


@pytest.mark.slow
def test_pipeline_smoke_runs_end_to_end_and_reruns_skip(tmp_path):
  """~3 min: every stage and the report (the tour colab covers most of it by default)."""
  root = str(tmp_path)
  exp = pipeline.experiment("smoke", root)
  rows = runner.run(exp, root)
  methods = [r["method"] for r in rows if r.get("method")]
  assert methods == list(pipeline.METHODS)
  for r in rows:
    if r.get("method"):
      assert 0 <= r["ground_truth"] <= 1 and 0 <= r["win_rate"] <= 1, r
  assert os.path.exists(os.path.join(root, "report.md"))
  assert os.path.getsize(os.path.join(root, "report.png")) > 10_000
  table = runner.read_csv(os.path.join(root, "results.csv"))
  assert [t["point"] for t in table] == [p.name for p in exp.points]
  # A rerun finds every point finished and only rebuilds the table.
  stamp = os.path.getmtime(os.path.join(root, "ppo", "summary.json"))
  runner.run(exp, root)
  assert os.path.getmtime(os.path.join(root, "ppo", "summary.json")) == stamp


@pytest.mark.parametrize("size", ["smoke", "tiny", "small"])
def test_chains_train_what_the_stage_configs_train(size):
  """Run sizes live in configs/presets.py alone: a chain at a size builds the stage
  configs at that size, steps and sampling budgets unchanged."""
  from configs import dpo as dpo_config, presets, rlhf as rlhf_config, sft as sft_config
  s, run = chain.size(size), presets.RUNS[size]
  assert chain.clm(s).train.steps == run["clm"]
  assert chain.sft(s, "x").train.steps == sft_config.get_config(size).train.steps == run["sft"]
  assert chain.dpo(s, "x").train.steps == dpo_config.get_config(size).train.steps == run["dpo"]
  assert chain.rlhf(s, "x").train.steps == rlhf_config.get_config(size).train.steps == run["rlhf"]
  bon = chain.best_of_n(s, "x")
  assert (bon.train.steps, bon.best_of_n.rounds) == (run["best_of_n"], run["best_of_n_rounds"])
  ev = chain.evaluate(s, "p", "r")
  assert (ev.evaluate.num_prompts, ev.evaluate.max_new_tokens) == (run["eval_prompts"],
                                                                   run["new_tokens"])
  assert chain.preferences(s, "x").preferences.num_prompts == run["preferences"]


def test_default_workdirs_follow_the_run_size_not_the_model_preset():
  """`configs/grpo.py:smoke` starts from runs/sft_smoke (its model preset is `tiny`,
  but the smoke run is not the tiny run); the default size from runs/sft."""
  from configs import dpo, grpo, sft  # pylint: disable=g-import-not-at-top
  assert grpo.get_config("smoke").init_from == "runs/sft_smoke"
  assert grpo.get_config("smoke").reward.model == "runs/reward_smoke"
  assert grpo.get_config("smoke").model.preset == "tiny"
  assert dpo.get_config("tiny").init_from == "runs/sft_tiny"
  assert sft.get_config().init_from == "runs/clm"
  assert sft.get_config("125m").init_from == "runs/clm_125m"
