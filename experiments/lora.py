"""LoRA without regret (Schulman et al. 2025, Thinking Machines "LoRA Without
Regret"; Hu et al. 2021): at a learning rate about 10x full fine-tuning's, LoRA on
every linear layer comes close to full fine-tuning's SFT loss, while LoRA on the
attention projections alone falls behind.

  python -m experiments.run experiments/lora.py            # -> runs/lora/lora.md, lora.png

From the same CLM run, SFT on the embedded instruction data with the same steps,
data and schedule, over seeds; arms:

  full            every weight, at the SFT config's learning rate (lr)
  full_blocks     every weight of the blocks, at lr: the embedding, unembedding and
                  final norm frozen (`config.train.freeze`), as LoRA leaves them
  all             LoRA rank 8 on q/k/v/o and gate/up/down, at 10 x lr
  attention       LoRA rank 8 on q/k/v/o only, at 10 x lr
  all_same_lr     LoRA rank 8 on every projection at lr (the 10x is what it needs)

Measured: the held-out SFT loss (response tokens' NLL) at the end. The claim
holds when `all` is no worse than `full_blocks` beyond the seed spread and
`attention` is worse than `all` beyond it. The comparison is with the blocks'
full fine-tuning because the tiny model is half embedding and unembedding
(131k of 230k weights), which LoRA leaves as they are; in a 7B model they are
4% of the weights. `full` against `full_blocks` shows how much that part moves
the loss here.
"""

from __future__ import annotations

import copy
import os

from experiments import chain, plots, verdicts as v
from experiments.runner import Experiment, Point

SEEDS = (0, 1)
RANK, ALPHA = 8, 16.0
# arm -> (lora_targets, learning-rate multiple, config.train.freeze)
OUTSIDE_BLOCKS = "embedding,unembed/*,final_norm/*"
ARMS = {"full": ("", 1.0, ""), "full_blocks": ("", 1.0, OUTSIDE_BLOCKS),
        "all": ("all", 10.0, ""), "attention": ("attention", 10.0, ""),
        "all_same_lr": ("all", 1.0, "")}


def arm_config(s, init_from: str, arm: str, seed: int):
  c = chain.sft(s, init_from)
  c.seed = seed
  targets, lr_multiple, freeze = ARMS[arm]
  if targets:
    c.model.update(lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets)
  c.optimizer.lr *= lr_multiple
  c.train.freeze = freeze
  c.generate.num_examples = 0
  return c


def row(point, summary: dict) -> dict:
  return {"nll": (summary.get("eval") or {}).get("nll"),
          "nll_at_start": (summary.get("eval_at_start") or {}).get("nll")}


def arms(rows: list[dict]) -> dict[str, v.Arm]:
  out = {name: v.Arm(name, []) for name in ARMS}
  for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
    if r.get("arm") in out:
      out[r["arm"]].values.extend(v.finite([r.get("nll")]))
  return out


def report(rows: list[dict], root: str) -> str:
  a = arms(rows)
  # Lower loss is better: compare negated losses.
  neg = {k: v.Arm(k, [-x for x in arm.values]) for k, arm in a.items()}
  close = v.no_worse(neg["all"], neg["full_blocks"])
  behind = v.greater(neg["all"], neg["attention"])
  outside = v.greater(neg["full"], neg["full_blocks"])
  lines = ["# LoRA without regret (Schulman et al. 2025)", "",
           f"SFT from the same CLM run, rank {RANK}, alpha {ALPHA:g}; held-out NLL of the "
           f"response tokens at the end (mean ± sd over {len(SEEDS)} seeds).", "",
           "| arm | trains | learning rate | held-out NLL |", "|---|---|---|---|"]
  for name, (targets, multiple, freeze) in ARMS.items():
    lr = "lr" if multiple == 1 else f"{multiple:g} x lr"
    what = targets or ("full fine-tuning" + (", embeddings frozen" if freeze else ""))
    lines.append(f"| {name} | {what} | {lr} | {a[name].mean:.3f} ± {a[name].sd:.3f} |")
  lines += ["", f"- LoRA on all layers no worse than full fine-tuning of the same matrices: "
                f"{'holds' if close.holds else 'no'} ({close.text})",
            f"- attention-only LoRA behind all-layer LoRA: {'holds' if behind.holds else 'no'} "
            f"({behind.text})",
            f"- verdict: {v.verdict([close, behind])}",
            f"- what LoRA does not train (the embedding, unembedding and final norm; "
            f"{'a large part' if outside.holds else 'little'} of this model): full "
            f"fine-tuning with them frozen vs not: {outside.text}"]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(root, "lora.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def analyse(rows: list[dict], root: str) -> None:
  if not any(r.get("arm") in ARMS for r in rows):
    return
  report(rows, root)
  a = arms(rows)
  plots.arms([("held-out SFT NLL (lower is better)", [arm for arm in a.values() if arm.values])],
             os.path.join(root, "lora.png"), title="LoRA without regret (mean ± sd over seeds)")


def experiment(size: str = "tiny", root: str = "runs/lora",
               seeds: tuple[int, ...] = SEEDS) -> Experiment:
  s = chain.size(size)
  points = [Point("clm", chain.clm(s))]
  for arm in ARMS:
    for seed in seeds:
      points.append(Point(f"{arm}_s{seed}", copy.deepcopy(
          arm_config(s, os.path.join(root, "clm"), arm, seed)), needs=("clm",),
          tags={"arm": arm, "seed": seed}))
  return Experiment("lora", points, row=row, analyse=analyse)
