"""RLAIF: preferences labelled by a generative judge instead of the ground truth
(Bai et al. 2022b, sec. 4; Lee et al. 2023, "RLAIF vs. RLHF").

  python -m experiments.run experiments/rlaif.py            # -> runs/rlaif/rlaif.md

  judge_sft     the SFT model fine-tuned on comparisons of *other* films
                (`embedded_judge`, corpus_seed 1) in the judge's A/B prompt;
  agree_*       each judge (the plain SFT model, zero-shot, and judge_sft) on 400
                held-out pairs of the target films: accuracy in one order and with
                both orders averaged, and its position bias (configs/judge.py);
  prefs_gt/ai   the same 4 samples per prompt from the SFT model (same seed),
                ranked by the ground truth (RLHF's "human") or by judge_sft (RLAIF);
  dpo_gt/ai     DPO (beta 0.1) on each, per seed, evaluated on held-out prompts;
  elo_*         SFT, DPO-gt and DPO-ai rated against each other, judged once by the
                ground truth and once by judge_sft.

Lee et al.'s claims: position bias is real and the swap removes it; a policy
trained on AI labels is about as good as one trained on human labels.
"""

from __future__ import annotations

import copy
import os

from configs import judge as judge_config
from configs import rate as rate_config
from experiments import chain, verdicts as v
from experiments.runner import Experiment, Point

SEEDS = (0, 1, 2)


def judge_sft(s, init_from: str):
  """The judge: SFT on 3,800 A/B comparisons of other films, labelled by the ground truth."""
  c = chain.sft(s, init_from, source="embedded_judge")
  c.data.update(corpus_seed=1, corpus_size=4000, seq_len=512)
  if s["name"] != "smoke":
    c.train.update(steps=400, eval_every=400, checkpoint_every=400)
  return c


def agreement(s, judge: str):
  c = judge_config.get_config(s["name"])
  c.judge = judge
  if s["name"] == "smoke":
    c.num_pairs = 16
  return c


def labels(s, policy: str, judge: str = ""):
  c = chain.preferences(s, policy)
  if judge:
    c.reward.update(source="judge", judge=judge,
                    judge_question=judge_config.get_config(s["name"]).question)
  return c


def rating(s, d, seed: int, judge: str = ""):
  c = rate_config.get_config(s["name"])
  c.runs = ",".join([d("sft"), d(f"dpo_gt_s{seed}"), d(f"dpo_ai_s{seed}")])
  c.names, c.seed = "sft,dpo_gt,dpo_ai", seed
  if judge:
    c.rate.update(judge="generative", judge_run=judge)
  return c


def row(point, summary: dict) -> dict:
  stage = point.config.stage
  if stage == "judge":
    return {k: summary.get(k) for k in ("accuracy_one_order", "accuracy_both_orders",
                                         "share_answering_A", "orders_agree")}
  if stage == "evaluate":
    return {"ground_truth": summary.get("sampled/ground_truth"), "kl": summary.get("kl")}
  if stage == "rate":
    return {f"elo_{r['name']}": r["elo"] for r in summary.get("ratings", [])}
  if stage == "preferences":
    return {"kept_prompts": summary.get("kept_prompts")}
  if stage == "sft":
    tuned = summary.get("generate", {}).get("tuned", {})
    return {"judge_exact_match": tuned.get("exact_match/judge")}
  return {}


def label_agreement(root: str) -> float | None:
  """Share of the AI-ranked pairs ordered as the ground truth orders them (same samples)."""
  import json  # pylint: disable=g-import-not-at-top
  files = [os.path.join(root, n, "preferences.jsonl") for n in ("prefs_gt", "prefs_ai")]
  if not all(os.path.exists(f) for f in files):
    return None
  gt, ai = ([json.loads(line) for line in open(f, encoding="utf-8")] for f in files)
  ai_by_prompt = {json.dumps(r["prompt"]): r for r in ai}
  agree = total = 0
  for r in gt:
    other = ai_by_prompt.get(json.dumps(r["prompt"]))
    if other is None or other["responses"] != r["responses"]:
      continue
    for i in range(len(r["ranking"])):
      for j in range(i + 1, len(r["ranking"])):
        if r["ranking"][i] != r["ranking"][j]:
          total += 1
          agree += (r["ranking"][i] < r["ranking"][j]) == (other["ranking"][i] < other["ranking"][j])
  return agree / total if total else None


def analyse(rows: list[dict], root: str) -> None:
  by = {r["point"]: r for r in rows}
  fmt = lambda x: "-" if x in (None, "") else f"{float(x):.3f}"
  lines = ["# RLAIF: a generative judge's labels against the ground truth's", "",
           "| judge | one order | both orders | answers 'A' | orders agree |", "|---|---|---|---|---|"]
  for name, point in (("SFT model, zero-shot", "agree_sft"), ("judge_sft (trained)", "agree_judge")):
    r = by.get(point, {})
    lines.append(f"| {name} | {fmt(r.get('accuracy_one_order'))} | "
                 f"{fmt(r.get('accuracy_both_orders'))} | {fmt(r.get('share_answering_A'))} | "
                 f"{fmt(r.get('orders_agree'))} |")
  agree = label_agreement(root)
  if agree is not None:
    lines += ["", f"AI labels of the SFT model's samples agree with the ground truth's on "
                  f"{agree:.3f} of their pairs."]
  arms = {}
  for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
    if r.get("arm") and r.get("ground_truth") not in (None, ""):
      arms.setdefault(r["arm"], {}).setdefault("gt", v.Arm(r["arm"], [])).values.append(
          float(r["ground_truth"]))
      arms[r["arm"]].setdefault("kl", v.Arm(r["arm"], [])).values.append(float(r["kl"]))
  if {"dpo_gt", "dpo_ai"} <= set(arms):
    c = v.no_worse(arms["dpo_ai"]["gt"], arms["dpo_gt"]["gt"])
    lines += ["", "| policy | ground truth | KL to SFT |", "|---|---|---|"]
    lines += [f"| {a} | {arms[a]['gt'].text().split(' ', 1)[1]} | "
              f"{arms[a]['kl'].text().split(' ', 1)[1]} |" for a in ("dpo_gt", "dpo_ai")]
    lines += ["", f"RLAIF no worse than RLHF (ground truth): {c.text} -> {v.verdict([c])}"]
  for judge in ("ground_truth", "judge"):
    elo_rows = [r for r in rows if r.get("stage") == "rate" and r.get("judge") == judge]
    if elo_rows:
      means = {n: v.Arm(n, v.finite([r.get(f"elo_{n}") for r in elo_rows]))
               for n in ("sft", "dpo_gt", "dpo_ai")}
      lines.append(f"\nElo judged by {judge.replace('_', ' ')}: " + ", ".join(
          a.text(0) for a in means.values()))
  with open(os.path.join(root, "rlaif.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def experiment(size: str = "tiny", root: str = "runs/rlaif",
               seeds: tuple[int, ...] = SEEDS) -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  prefs = lambda name: os.path.join(d(name), "preferences.jsonl")
  points = [Point("clm", chain.clm(s)),
            Point("sft", chain.sft(s, d("clm")), needs=("clm",)),
            Point("judge_sft", judge_sft(s, d("sft")), needs=("sft",)),
            Point("agree_sft", agreement(s, d("sft")), needs=("sft",)),
            Point("agree_judge", agreement(s, d("judge_sft")), needs=("judge_sft",)),
            Point("prefs_gt", labels(s, d("sft")), needs=("sft",)),
            Point("prefs_ai", labels(s, d("sft"), d("judge_sft")), needs=("sft", "judge_sft"))]
  for seed in seeds:
    for arm in ("gt", "ai"):
      c = copy.deepcopy(chain.dpo(s, d("sft"), prefs(f"prefs_{arm}"), beta=0.1))
      c.seed = seed
      points.append(Point(f"dpo_{arm}_s{seed}", c, needs=("sft", f"prefs_{arm}"),
                          tags={"seed": seed}))
      e = chain.evaluate(s, d(f"dpo_{arm}_s{seed}"), d("sft"))
      e.seed = seed
      points.append(Point(f"eval_{arm}_s{seed}", e, needs=(f"dpo_{arm}_s{seed}", "sft"),
                          tags={"arm": f"dpo_{arm}", "seed": seed}))
    needs = ("sft", f"dpo_gt_s{seed}", f"dpo_ai_s{seed}")
    points.append(Point(f"elo_gt_s{seed}", rating(s, d, seed), needs=needs,
                        tags={"seed": seed, "judge": "ground_truth"}))
    points.append(Point(f"elo_judge_s{seed}", rating(s, d, seed, d("judge_sft")),
                        needs=needs + ("judge_sft",), tags={"seed": seed, "judge": "judge"}))
  return Experiment("rlaif", points, row=row, analyse=analyse)
