"""Preference-model pretraining (PMP): does a reward model pretrained on a large, noisy
preference set need fewer human pairs? (Askell et al. 2021, sec. 4 and Fig. 14;
Bai et al. 2022, sec. 2.)

  python -m experiments.run experiments/pmp.py            # -> runs/pmp/pmp.md, pmp.png

On the embedded task: the `pmp` point fits a reward model (trunk from the SFT run)
to 3,800 pairs of *other* films (`corpus_seed` 1) with a quarter of the labels
flipped: the cheap, plentiful, noisy set. Then, for each number n of clean pairs
of the target films (`corpus_seed` 0, `data.max_train_records`), two arms train
the same steps at the same learning rate:

  scratch   trunk from the SFT run, a fresh head (today's reward stage);
  pmp       trunk and head from the `pmp` run (`init_head=True`).

Each point's held-out pairwise accuracy is measured on the same 200 clean pairs.
The paper's claim: PMP helps most at small n, and the gap closes as n grows.
"""

from __future__ import annotations

import copy
import os

from experiments import chain, plots, verdicts as v
from experiments.runner import Experiment, Point

SIZES = (50, 100, 200, 400, 800)
SEEDS = (0, 1, 2)
ARMS = ("scratch", "pmp")


def pretraining(s, init_from: str):
  """The large, noisy preference set: other films, 25% of the labels flipped."""
  c = chain.reward(s, init_from)
  c.data.update(num_responses=2, corpus_seed=1, corpus_size=4000, label_noise=0.25)
  return c


def finetune(s, init_from: str, n: int, seed: int, pmp: bool):
  """n clean pairs of the target films; 120 steps of 8 pairs whatever n (both arms)."""
  c = chain.reward(s, init_from)
  c.init_head = pmp
  c.seed = seed
  c.data.update(num_responses=2, corpus_seed=0, corpus_size=4000, max_train_records=n)
  if s["name"] != "smoke":
    c.train.update(steps=120, eval_every=120, checkpoint_every=120)
    c.optimizer.update(lr=3e-4, warmup_steps=12)
  return c


def row(point, summary: dict) -> dict:
  held_out = summary.get("held_out", {})
  return {"accuracy": held_out.get("pairwise_accuracy"),
          "spearman": held_out.get("spearman_vs_ground_truth")}


def arms_by_size(rows: list[dict]) -> dict[int, dict[str, v.Arm]]:
  out: dict[int, dict[str, v.Arm]] = {}
  for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
    if r.get("arm") in ARMS:
      arm = out.setdefault(int(r["n"]), {}).setdefault(r["arm"], v.Arm(r["arm"], []))
      arm.values.extend(v.finite([r["accuracy"]]))
  return dict(sorted(out.items()))


def report(rows: list[dict], root: str) -> str:
  """pmp.md: accuracy per n and arm, and the verdict of 'PMP > scratch' at each n."""
  by_size = arms_by_size(rows)
  pre = next((r for r in rows if r.get("point") == "pmp"), {})
  lines = ["# Preference-model pretraining (Askell et al. 2021, Fig. 14)", "",
           f"PMP run alone (3,800 noisy pairs of other films), held-out accuracy on its own "
           f"clean pairs: {float(pre.get('accuracy') or float('nan')):.3f}", "",
           "| clean pairs n | scratch | PMP | PMP - scratch (spread) | PMP > scratch |",
           "|---|---|---|---|---|"]
  for n, arms in by_size.items():
    if set(arms) != set(ARMS):
      continue
    c = v.greater(arms["pmp"], arms["scratch"])
    lines.append(f"| {n} | {arms['scratch'].mean:.3f} ± {arms['scratch'].sd:.3f} | "
                 f"{arms['pmp'].mean:.3f} ± {arms['pmp'].sd:.3f} | "
                 f"{c.text.split('=', 1)[1].strip()} | {'holds' if c.holds else 'no'} |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(root, "pmp.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def analyse(rows: list[dict], root: str) -> None:
  by_size = arms_by_size(rows)
  if not by_size:
    return
  report(rows, root)
  curves = {arm: [(n, arms[arm]) for n, arms in by_size.items() if arm in arms] for arm in ARMS}
  plots.curves_with_spread(curves, os.path.join(root, "pmp.png"),
                           xlabel="clean preference pairs for fine-tuning (log scale)",
                           ylabel="held-out pairwise accuracy", logx=True,
                           title="Preference-model pretraining (mean ± sd over seeds)")


def experiment(size: str = "tiny", root: str = "runs/pmp", seeds: tuple[int, ...] = SEEDS,
               sizes: tuple[int, ...] = SIZES) -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  points = [Point("clm", chain.clm(s)),
            Point("sft", chain.sft(s, d("clm")), needs=("clm",)),
            Point("pmp", pretraining(s, d("sft")), needs=("sft",))]
  for n in sizes:
    for seed in seeds:
      for arm in ARMS:
        base = ("pmp",) if arm == "pmp" else ("sft",)
        points.append(Point(f"{arm}_n{n}_s{seed}",
                            copy.deepcopy(finetune(s, d(base[0]), n, seed, arm == "pmp")),
                            needs=base, tags={"arm": arm, "n": n, "seed": seed}))
  return Experiment("pmp", points, row=row, analyse=analyse)
