"""The whole pipeline on the embedded default, each stage from the previous checkpoint:

  pretrain -> SFT -> reward model -> {PPO, A2C, DPO, best-of-n}

then every policy (and the SFT model itself) evaluated the same way, and a
report (report.md + report.png) comparing them by ground-truth score,
reward-model score, KL to the SFT model, win rate against the SFT model
(judged by the ground truth) and response length.

  python -m experiments.run experiments/pipeline.py                  # --size=tiny
  python -m experiments.run experiments/pipeline.py --size=smoke     # wiring check, minutes
"""

from __future__ import annotations

import os

from experiments import chain, plots
from experiments.runner import Experiment, Point

METHODS = ("sft", "ppo", "a2c", "dpo", "best_of_n")
COLUMNS = {"ground_truth": "sampled/ground_truth", "greedy_ground_truth": "policy/ground_truth",
           "reward_model": "sampled/reward_model", "kl": "kl",
           "win_rate": "win_rate_vs_reference", "length": "sampled/length"}


def experiment(size: str = "tiny", root: str = "runs/pipeline") -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  points = [
      Point("clm", chain.clm(s)),
      Point("sft", chain.sft(s, d("clm")), needs=("clm",)),
      Point("reward", chain.reward(s, d("sft")), needs=("sft",)),
      Point("ppo", chain.rlhf(s, d("sft"), d("reward")), needs=("sft", "reward")),
      Point("a2c", chain.rlhf(s, d("sft"), d("reward"), name="a2c"), needs=("sft", "reward")),
      Point("dpo", chain.dpo(s, d("sft")), needs=("sft",)),
      Point("best_of_n", chain.best_of_n(s, d("sft"), d("reward")), needs=("sft", "reward")),
  ]
  points[4].config.ppo.epochs = 1  # A2C: one pass per rollout
  for method in METHODS:
    points.append(Point(f"eval_{method}", chain.evaluate(s, d(method), d("sft"), d("reward")),
                        needs=(method, "sft", "reward"), tags={"method": method}))
  return Experiment("pipeline", points, row=row, analyse=report)


def row(point: Point, summary: dict) -> dict:
  if point.config.stage != "evaluate":
    return {}
  return {name: summary.get(key) for name, key in COLUMNS.items()}


def report(rows: list[dict], root: str) -> None:
  evals = [r for r in rows if r.get("method")]
  if not evals:
    return
  lines = ["# Pipeline report", "",
           "Held-out prompts; temperature-1 samples unless marked greedy. KL(policy || SFT) "
           "in nats per response; win rate against the SFT model's greedy response, judged "
           "by the ground-truth scorer (ties count a half).", "",
           "| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
  for r in evals:
    cells = ["-" if r.get(c) is None else f"{float(r[c]):.3f}" for c in COLUMNS]
    lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
  lines += ["", "![comparison](report.png)", ""]
  with open(os.path.join(root, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  plots.bars(evals, "method", ["ground_truth", "reward_model", "kl", "win_rate", "length"],
             os.path.join(root, "report.png"), title="Policies against the SFT model")
