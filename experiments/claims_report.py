"""The claims experiment's table rows, verdicts, `claims.md` and plots.

`row_reader(root)` turns a finished point's summary (and, for RL runs, its
metrics.jsonl) into the quantities the claims compare; `write(rows, root,
claims)` groups them by arm over seeds, judges each claim (experiments/verdicts.py)
and writes `root/claims.md` and `root/claim_<name>.png`.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from experiments import plots
from experiments import verdicts as v
from research.rlhf.best_of_n import kl_bound
from research.training import writers


def _late_mean(history: list[dict], key: str, share: float = 0.25) -> float | None:
  values = [h[key] for h in history if key in h]
  if not values:
    return None
  return float(np.mean(values[-max(1, int(len(values) * share)):]))


def row_reader(root: str):
  def row(point, summary: dict) -> dict:
    stage = point.config.stage
    if stage == "rlhf":
      end, start = summary.get("eval", {}), summary.get("eval_at_start", {})
      history = [m for _, m in sorted(writers.read_metrics(os.path.join(root, point.name))
                                      .items())]
      out = {"pass1_start": start.get("pass@1"), "pass1_end": end.get("pass@1"),
             "pass8_start": start.get("pass@8"), "pass8_end": end.get("pass@8"),
             "len_incorrect_start": start.get("length/incorrect"),
             "len_incorrect_end": end.get("length/incorrect"),
             "entropy_late": _late_mean(history, "objective/entropy_per_token"),
             "zero_std_share": _late_mean(history, "objective/zero_std_groups", share=1.0),
             "reward_end": summary.get("curves", {}).get("objective/raw_scores", {}).get("end")}
      if "pretrain_loss" in summary:
        loss = summary["pretrain_loss"]
        out.update(lm_loss=loss["policy"], lm_loss_sft=loss["reference"],
                   lm_loss_increase=loss["policy"] - loss["reference"])
      return out
    if stage == "evaluate":
      out = {"kl": summary.get("kl"), "ground_truth": summary.get("sampled/ground_truth")}
      checked = summary.get("verifiable", {}).get("policy", {})
      out.update(pass1=checked.get("pass@1"), pass8=checked.get("pass@8"))
      return out
    return {}
  return row


def arms_of(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
  """arm -> quantity -> values over seeds (seed order)."""
  out: dict = defaultdict(lambda: defaultdict(list))
  for r in sorted((r for r in rows if r.get("arm")), key=lambda r: int(r["seed"])):
    quantities = out[r["arm"]]  # a finished arm is known even if it measures nothing
    for key, value in r.items():
      if key not in ("point", "stage", "arm", "seed") and value not in (None, ""):
        quantities[key].append(float(value))
  return out


def arm(data, name: str, key: str, label: str) -> v.Arm:
  return v.Arm(label, v.finite(data.get(name, {}).get(key, [])))


def diff(a: v.Arm, b: v.Arm, label: str) -> v.Arm:
  """Per-seed a - b (same seeds)."""
  n = min(len(a.values), len(b.values))
  return v.Arm(label, [x - y for x, y in zip(a.values[:n], b.values[:n])])


# Each judge: arms data -> (measurement, comparisons, plot panels); None if not run.

def dpo_frontier(data):
  """With one point per method, "on or above the frontier" is read as the ground truth
  gained over the SFT model per nat of KL (the slope from the SFT point), per seed."""
  sft = arm(data, "eval_bon1", "ground_truth", "SFT")
  gt = [arm(data, "eval_dpo", "ground_truth", "DPO"), arm(data, "eval_ppo", "ground_truth", "PPO")]
  kl = [arm(data, "eval_dpo", "kl", "DPO"), arm(data, "eval_ppo", "kl", "PPO")]
  slope = [v.Arm(g.label, [(x - base) / max(k, 1e-6) for x, base, k in
                           zip(g.values, sft.values, d.values)]) for g, d in zip(gt, kl)]
  comps = [v.greater(slope[0], slope[1], digits=4)]
  at = lambda k: f"{k.mean:.2f} ± {k.sd:.2f}"
  text = (f"ground truth {gt[0].text()} at KL {at(kl[0])} nats, {gt[1].text()} at KL "
          f"{at(kl[1])} (SFT {sft.mean:.3f}); gained per nat {slope[0].text(4)}, "
          f"{slope[1].text(4)}")
  return text, comps, [("ground truth of samples", [sft] + gt), ("KL to SFT (nats)", kl),
                       ("ground truth gained per nat", slope)]


def rises_then_falls(points: list[tuple[v.Arm, str]], what: str) -> list[v.Comparison]:
  """`points`: (ground truth, label) in order of growing KL; the peak must exceed both
  the first point and the last, each beyond the spread."""
  gts = [g for g, _ in points]
  peak = max(range(len(gts)), key=lambda i: gts[i].mean)
  comps = [v.greater(gts[peak], gts[0])]
  if peak < len(gts) - 1:
    comps.append(v.greater(gts[peak], gts[-1]))
  else:
    comps.append(v.Comparison(f"{what}: a fall after the peak: none, the ground truth still "
                              f"rises at {gts[-1].label}", False, 0.0))
  return comps


def overoptimisation(data):
  best_of = sorted(int(a[len("eval_bon"):]) for a in data if a.startswith("eval_bon"))
  bon = [arm(data, f"eval_bon{n}", "ground_truth", f"N={n}") for n in best_of]
  rl = [arm(data, "eval_bon1", "ground_truth", "SFT")]
  kls = [0.0]
  for name, label in (("eval_ppo", "PPO beta 0.1"), ("eval_ppo_beta0.02", "PPO beta 0.02"),
                      ("eval_ppo_beta0.005", "PPO beta 0.005")):
    if name in data:
      rl.append(arm(data, name, "ground_truth", label))
      kls.append(arm(data, name, "kl", label).mean)
  order = sorted(range(len(rl)), key=lambda i: kls[i])
  rl, kls = [rl[i] for i in order], [kls[i] for i in order]
  comps = (rises_then_falls([(g, g.label) for g in bon], "best-of-N")
           + rises_then_falls([(g, g.label) for g in rl], "PPO"))
  text = ("best-of-N: " + "; ".join(f"{g.text()} (KL {kl_bound(n):.2f})"
                                    for g, n in zip(bon, best_of))
          + ". PPO: " + "; ".join(f"{g.text()} (KL {k:.1f})" for g, k in zip(rl, kls)))
  return text, comps, [("best-of-N: ground truth", bon), ("PPO: ground truth (by KL)", rl)]


def rloo(data):
  names = (("rloo4", "RLOO k=4"), ("rloo2", "RLOO k=2"),
           ("reinforce_baseline", "REINFORCE+baseline"), ("vanilla_pg", "vanilla PG"))
  got = [arm(data, a, "pass1_end", label) for a, label in names]
  comps = [v.greater(a, b) for a, b in zip(got, got[1:])]
  start = arm(data, "rloo4", "pass1_start", "SFT")
  return ("held-out pass@1 " + ", ".join(g.text() for g in got) + f" (from {start.mean:.3f})",
          comps, [("held-out pass@1", got)])


def dr_grpo(data):
  deltas = [diff(arm(data, a, "len_incorrect_end", ""), arm(data, a, "len_incorrect_start", ""),
                 label) for a, label in (("grpo", "GRPO"), ("dr_grpo", "Dr. GRPO"))]
  comps = [v.greater(deltas[0], v.Arm("no change", [0.0] * len(deltas[0].values)), digits=1),
           v.greater(deltas[0], deltas[1], digits=1)]
  starts = arm(data, "grpo", "len_incorrect_start", "")
  return (f"length of incorrect responses, change over training (tokens): "
          f"{deltas[0].text(1)}, {deltas[1].text(1)} (from {starts.mean:.1f})", comps,
          [("incorrect length: end - start", deltas)])


def dapo(data):
  ent = [arm(data, "clip_higher", "entropy_late", "clip-higher"),
         arm(data, "grpo", "entropy_late", "symmetric")]
  tied = [arm(data, "grpo", "zero_std_share", "without"),
          arm(data, "dynamic_sampling", "zero_std_share", "dynamic sampling")]
  comps = [v.greater(ent[0], ent[1], digits=4), v.greater(tied[0], tied[1])]
  return (f"entropy per token, last quarter of training: {ent[0].text(4)}, {ent[1].text(4)}; "
          f"share of zero-variance groups trained on: {tied[0].text()}, {tied[1].text()}",
          comps, [("entropy (late training)", ent), ("zero-variance groups", tied)])


def rft(data):
  got = [arm(data, "eval_rft", "pass1", "RFT"), arm(data, "eval_online_rft", "pass1", "online RFT"),
         arm(data, "eval_grpo", "pass1", "GRPO")]
  comps = [v.greater(got[1], got[0]), v.greater(got[2], got[1])]
  return ("held-out pass@1 " + ", ".join(g.text() for g in got), comps,
          [("held-out pass@1", got)])


def yue(data):
  p1 = [arm(data, "grpo", "pass1_end", "GRPO"), arm(data, "grpo", "pass1_start", "SFT")]
  p8 = [arm(data, "grpo", "pass8_start", "SFT"), arm(data, "grpo", "pass8_end", "GRPO")]
  comps = [v.greater(p1[0], p1[1]), v.no_worse(p8[0], p8[1])]
  return (f"pass@1 {p1[0].text()}, {p1[1].text()}; pass@8 {p8[1].text()}, {p8[0].text()}",
          comps, [("pass@1", p1), ("pass@8", p8[::-1])])


def ptx(data):
  rise = [arm(data, "ppo_gt", "lm_loss_increase", "PPO"),
          arm(data, "ppo_ptx", "lm_loss_increase", "PPO-ptx")]
  reward = [arm(data, "ppo_gt", "reward_end", "PPO"), arm(data, "ppo_ptx", "reward_end", "PPO-ptx")]
  comps = [v.greater(rise[0], rise[1]), v.no_worse(reward[1], reward[0])]
  return (f"held-out LM loss above the SFT model's (nats/token): {rise[0].text()}, "
          f"{rise[1].text()}; reward at the end: {reward[0].text()}, {reward[1].text()}", comps,
          [("LM loss - SFT's", rise), ("reward (last iterations)", reward)])


def kto(data):
  gt = [arm(data, "eval_kto", "ground_truth", "KTO"), arm(data, "eval_dpo", "ground_truth", "DPO")]
  kl = [arm(data, "eval_kto", "kl", "KTO"), arm(data, "eval_dpo", "kl", "DPO")]
  return (f"ground truth {gt[0].text()}, {gt[1].text()}; KL {kl[0].text(2)}, {kl[1].text(2)}",
          [v.no_worse(gt[0], gt[1])], [("ground truth of samples", gt), ("KL to SFT", kl)])


JUDGES = {"dpo_frontier": dpo_frontier, "overoptimisation": overoptimisation, "rloo": rloo,
          "dr_grpo": dr_grpo, "dapo": dapo, "rft": rft, "yue": yue, "ptx": ptx, "kto": kto}


def write(rows: list[dict], root: str, claims: list, seeds) -> list[dict]:
  """Judges every claim (`claims.Claim`) whose arms have finished; -> claims.md, plots."""
  data = arms_of(rows)
  results = []
  for claim in claims:
    name = claim.name
    if not all(a in data for a in claim.arms):
      results.append({"claim": name, "paper": claim.paper, "statement": claim.statement,
                      "measurement": "not run (points missing: "
                      f"{sorted(a for a in claim.arms if a not in data)})", "verdict": "",
                      "comparisons": []})
      continue
    measurement, comps, panels = JUDGES[name](data)
    plots.arms(panels, os.path.join(root, f"claim_{name}.png"), title=claim.paper)
    results.append({"claim": name, "paper": claim.paper, "statement": claim.statement,
                    "measurement": measurement, "verdict": v.verdict(comps),
                    "comparisons": [(c.text, c.holds) for c in comps],
                    "margins": [c.margin for c in comps]})
  lines = [f"# Paper claims at this size ({len(seeds)} seeds: mean ± sd)", "",
           "A comparison holds when the difference exceeds the seed spread (the larger "
           "standard deviation of the two arms) in the paper's direction "
           "(experiments/verdicts.py).", "",
           "| claim | paper | measurement | verdict |", "|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['statement']} | {r['paper']} | {r['measurement']} | "
                 f"**{r['verdict']}** |" if r["verdict"] else
                 f"| {r['statement']} | {r['paper']} | {r['measurement']} | |")
  lines.append("")
  for r in results:
    if r["comparisons"]:
      lines.append(f"## {r['claim']}: {r['verdict']}")
      lines.append("")
      lines += [f"- {text}: {'holds' if ok else 'does not hold'}" for text, ok in r["comparisons"]]
      lines += ["", f"![{r['claim']}](claim_{r['claim']}.png)", ""]
  with open(os.path.join(root, "claims.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return results
