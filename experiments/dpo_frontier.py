"""Figure 2 (left) of the DPO paper (Rafailov et al. 2023, arXiv 2305.18290) on the
embedded controlled-sentiment task: ground-truth reward against KL(policy || SFT).

As in the paper's IMDb setup: an SFT model; 4 samples per prompt from it, ranked
by the ground-truth scorer (the paper's sentiment classifier), all 6 pairs used;
a reward model fitted to those rankings. Then

  DPO           over beta (the paper's grid: 0.05, 0.1, 1, 5);
  PPO           on the learned reward over beta;
  PPO-GT        on the ground-truth reward over beta;
  GRPO, RLOO    4 samples per prompt, no critic, on the learned and on the
                ground-truth reward (-GT), at their configs' beta;
  Best-of-N     sampling from the SFT model, chosen by the learned reward, over N
                (KL: the bound log N - (N - 1) / N);
  Preferred-FT  SFT on the chosen (best) responses;

each evaluated on the same held-out prompts: mean ground truth of temperature-1
samples against their summed per-token KL to the SFT model.

  python -m experiments.run experiments/dpo_frontier.py          # ~15 min on 2 CPU cores
  python -m experiments.run experiments/dpo_frontier.py --size=small
"""

from __future__ import annotations

import os

from configs import grpo as grpo_config
from configs import rloo as rloo_config
from experiments import chain, plots
from experiments.runner import Experiment, Point

DPO_BETAS = (0.05, 0.1, 1.0, 5.0)
PPO_BETAS = (0.02, 0.1, 0.5)
PPO_GT_BETAS = (0.1, 0.5)
BEST_OF = (4, 16, 64)


def experiment(size: str = "tiny", root: str = "runs/dpo_frontier") -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  prefs = os.path.join(d("preferences"), "preferences.jsonl")
  preferred = os.path.join(d("preferences"), "preferred.jsonl")
  points = [
      Point("clm", chain.clm(s)),
      Point("sft", chain.sft(s, d("clm")), needs=("clm",)),
      Point("preferences", chain.preferences(s, d("sft")), needs=("sft",)),
      Point("reward", chain.reward(s, d("sft"), prefs), needs=("sft", "preferences")),
  ]
  policies = []  # (point name, tags)
  for beta in DPO_BETAS:
    name = f"dpo_beta{beta:g}"
    points.append(Point(name, chain.dpo(s, d("sft"), prefs, beta=beta),
                        needs=("sft", "preferences")))
    policies.append((name, {"method": "DPO", "setting": f"beta={beta:g}"}))
  for beta in PPO_BETAS:
    name = f"ppo_beta{beta:g}"
    points.append(Point(name, chain.rlhf(s, d("sft"), d("reward"), kl={"beta": beta}),
                        needs=("sft", "reward")))
    policies.append((name, {"method": "PPO", "setting": f"beta={beta:g}"}))
  for beta in PPO_GT_BETAS:
    name = f"ppo_gt_beta{beta:g}"
    points.append(Point(name, chain.rlhf(s, d("sft"), kl={"beta": beta}), needs=("sft",)))
    policies.append((name, {"method": "PPO-GT", "setting": f"beta={beta:g}"}))
  for method, module in (("GRPO", grpo_config), ("RLOO", rloo_config)):
    for suffix, rm in (("", d("reward")), ("-GT", "")):
      name = f"{method.lower()}{suffix.lower().replace('-', '_')}"
      beta = module.get_config("tiny").objective.kl.beta
      points.append(Point(name, chain.rlhf(s, d("sft"), rm, method=module),
                          needs=("sft", "reward") if rm else ("sft",)))
      policies.append((name, {"method": method + suffix, "setting": f"beta={beta:g}"}))
  pft = chain.sft(s, d("sft"), preferred)
  pft.train.update(steps=max(s["sft"] // 6, 5), checkpoint_every=max(s["sft"] // 6, 5))
  pft.optimizer.update(lr=5e-4, warmup_steps=2)
  points.append(Point("preferred_ft", pft, needs=("sft", "preferences")))
  policies.append(("preferred_ft", {"method": "Preferred-FT", "setting": ""}))
  policies.append(("sft", {"method": "SFT", "setting": ""}))

  for name, tags in policies:
    points.append(Point(f"eval_{name}", chain.evaluate(s, d(name), d("sft"), d("reward")),
                        needs=(name, "sft", "reward"), tags=tags))
  for n in BEST_OF:
    points.append(Point(f"eval_best_of_{n}",
                        chain.evaluate(s, d("sft"), d("sft"), d("reward"), best_of_n=n),
                        needs=("sft", "reward"),
                        tags={"method": "Best-of-N", "setting": f"N={n}"}))
  return Experiment("dpo_frontier", points, row=row, analyse=analyse)


def row(point: Point, summary: dict) -> dict:
  if point.config.stage != "evaluate":
    return {}
  return {"kl": summary["kl"], "ground_truth": summary["sampled/ground_truth"],
          "reward_model": summary.get("sampled/reward_model"),
          "win_rate": summary.get("win_rate_vs_reference"),
          "length": summary.get("sampled/length")}


def analyse(rows: list[dict], root: str) -> None:
  evals = [r for r in rows if r.get("method")]
  if evals:
    plots.frontier(evals, os.path.join(root, "frontier.png"), label="setting",
                   title="Controlled sentiment: reward vs KL (DPO paper, Fig. 2)")
