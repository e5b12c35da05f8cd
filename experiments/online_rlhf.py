"""Iterated online RLHF (Bai et al. 2022, sec. 4.5): rounds of sample -> label ->
refresh the reward model -> RL from the latest policy, against one round of the
same budget; the rounds rated against each other in Elo.

  python -m experiments.run experiments/online_rlhf.py     # -> runs/online_rlhf/online_rlhf.md

Per seed, `ROUNDS` rounds; round r:

  prefs_r      `PROMPTS` new training prompts, 4 samples each from the latest policy
               (the SFT model in round 1), ranked by the ground truth (the "human"
               labels), appended to every earlier round's (`preferences.accumulate`);
  rm_r         a reward model fitted to all comparisons so far (trunk from SFT);
  ppo_r        PPO (beta 0.1) from the latest policy on rm_r, `ITERATIONS` iterations;
  eval_r       its held-out ground truth and KL to the SFT model (chain.evaluate).

The single-round arm spends the same budget at once: ROUNDS x PROMPTS prompts
labelled from the SFT model, one reward model, ROUNDS x ITERATIONS PPO iterations
from the SFT model. `elo` plays the SFT model, every round's policy and the single
round against each other on held-out prompts, judged by the ground truth
(`research/stages/rate.py`).

What Bai et al. report: the online rounds keep the reward model calibrated where
the policy now samples, so later rounds improve on what one offline round reaches.
"""

from __future__ import annotations

import copy
import functools
import os

from configs import rate as rate_config
from experiments import chain, plots, verdicts as v
from experiments.runner import Experiment, Point

ROUNDS = 3
PROMPTS = 200
ITERATIONS = 30
SEEDS = (0, 1, 2)


def seeded(config, seed: int):
  c = copy.deepcopy(config)
  c.seed = seed
  return c


def labels(s, policy: str, prompts: int, offset: int, accumulate: str = ""):
  c = chain.preferences(s, policy)
  c.preferences.update(num_prompts=prompts, prompt_offset=offset, accumulate=accumulate)
  return c


def ppo(s, policy: str, reward_model: str, iterations: int):
  c = chain.rlhf(s, policy, reward_model, kl={"beta": 0.1})
  if s["name"] != "smoke":
    c.train.update(steps=iterations, checkpoint_every=iterations)
  return c


def reward_model(s, sft: str, prefs: str):
  """A reward model on a round's file (trunk from SFT); smoke files are small, so half
  of them is held out to fill one evaluation batch."""
  c = chain.reward(s, sft, os.path.join(prefs, "preferences.jsonl"))
  if s["name"] == "smoke":
    c.data.holdout_every = 2
  return c


def names(rounds: int) -> list[str]:
  return ["sft"] + [f"round{r}" for r in range(1, rounds + 1)] + ["single"]


def rating(s, d, seed: int, rounds: int):
  c = rate_config.get_config(s["name"])
  paths = [d("sft")] + [d(f"ppo_r{r}_s{seed}") for r in range(1, rounds + 1)] + \
      [d(f"single_ppo_s{seed}")]
  c.runs, c.names, c.seed = ",".join(paths), ",".join(names(rounds)), seed
  return c


def row(point, summary: dict) -> dict:
  if point.config.stage == "evaluate":
    return {"ground_truth": summary.get("sampled/ground_truth"), "kl": summary.get("kl"),
            "reward_model": summary.get("sampled/reward_model")}
  if point.config.stage == "rate":
    return {f"elo_{r['name']}": r["elo"] for r in summary.get("ratings", [])}
  if point.config.stage == "preferences":
    return {"labelled_prompts": summary.get("kept_prompts", 0)
            + summary.get("accumulated", {}).get("records", 0)}
  return {}


def _arms(rows: list[dict], key: str) -> dict[str, v.Arm]:
  out: dict[str, v.Arm] = {}
  for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
    if r.get("arm") and r.get(key) not in (None, ""):
      out.setdefault(r["arm"], v.Arm(r["arm"], [])).values.extend(v.finite([r[key]]))
  return out


def analyse(rows: list[dict], root: str, rounds: int = ROUNDS) -> None:
  evals = [r for r in rows if r.get("stage") == "evaluate"]
  truth, kl = _arms(evals, "ground_truth"), _arms(evals, "kl")
  elo_rows = [r for r in rows if r.get("stage") == "rate"]
  policies = names(rounds)
  elo = {n: v.Arm(n, v.finite([r.get(f"elo_{n}") for r in elo_rows])) for n in policies}
  last, single = truth.get(f"round{rounds}"), truth.get("single")
  seeds = sorted({r.get("seed") for r in evals})
  lines = ["# Iterated online RLHF (Bai et al. 2022, sec. 4.5)", "",
           f"{rounds} rounds of {PROMPTS} newly labelled prompts and {ITERATIONS} PPO iterations "
           f"against one round of {rounds * PROMPTS} prompts and {rounds * ITERATIONS} "
           f"iterations; {len(seeds)} seeds; held-out prompts.", "",
           "| policy | ground truth | KL to SFT | Elo (ground-truth judge) |", "|---|---|---|---|"]
  for n in policies:
    t, k = truth.get(n), kl.get(n)
    lines.append(f"| {n} | {t.text().split(' ', 1)[1] if t else '-'} | "
                 f"{k.text().split(' ', 1)[1] if k else '-'} | "
                 f"{elo[n].text(0).split(' ', 1)[1] if elo[n].values else '-'} |")
  if last and single:
    c = v.greater(last, single)
    lines += ["", f"Iterated beats one round of the same budget (ground truth): "
                  f"{c.text} -> {v.verdict([c])}"]
  if rounds > 1 and elo[f"round{rounds}"].values and elo["round1"].values:
    c = v.greater(elo[f"round{rounds}"], elo["round1"], digits=0)
    lines += [f"Later rounds rate higher (Elo): {c.text} -> {v.verdict([c])}"]
  with open(os.path.join(root, "online_rlhf.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  per_round = [(r, truth[f"round{r}"]) for r in range(1, rounds + 1) if f"round{r}" in truth]
  if per_round:
    curves = {"iterated (per round)": per_round}
    if single:
      curves[f"single round (same budget, at x={rounds})"] = [(rounds, single)]
    plots.curves_with_spread(curves, os.path.join(root, "online_rlhf.png"),
                             xlabel="round", ylabel="held-out ground truth (samples)",
                             title="Iterated online RLHF vs one round (mean ± sd over seeds)")


def experiment(size: str = "tiny", root: str = "runs/online_rlhf",
               seeds: tuple[int, ...] = SEEDS, rounds: int = ROUNDS) -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  prompts = PROMPTS if s["name"] != "smoke" else 16
  points = [Point("clm", chain.clm(s)), Point("sft", chain.sft(s, d("clm")), needs=("clm",))]
  add = lambda name, config, needs, seed, **tags: points.append(
      Point(name, seeded(config, seed), needs=needs, tags={**tags, "seed": seed}))
  for seed in seeds:
    policy = "sft"
    for r in range(1, rounds + 1):
      prefs, rm, rl = f"prefs_r{r}_s{seed}", f"rm_r{r}_s{seed}", f"ppo_r{r}_s{seed}"
      earlier = f"prefs_r{r - 1}_s{seed}" if r > 1 else ""
      add(prefs, labels(s, d(policy), prompts, (r - 1) * prompts, d(earlier) if earlier else ""),
          (policy,) + ((earlier,) if earlier else ()), seed, round=r)
      add(rm, reward_model(s, d("sft"), d(prefs)), ("sft", prefs), seed, round=r)
      add(rl, ppo(s, d(policy), d(rm), ITERATIONS), (policy, rm), seed, round=r)
      add(f"eval_r{r}_s{seed}", chain.evaluate(s, d(rl), d("sft"), d(rm)), (rl, "sft", rm),
          seed, arm=f"round{r}", round=r)
      policy = rl
    add(f"single_prefs_s{seed}", labels(s, d("sft"), rounds * prompts, 0), ("sft",), seed)
    add(f"single_rm_s{seed}", reward_model(s, d("sft"), d(f"single_prefs_s{seed}")),
        ("sft", f"single_prefs_s{seed}"), seed)
    add(f"single_ppo_s{seed}", ppo(s, d("sft"), d(f"single_rm_s{seed}"), rounds * ITERATIONS),
        ("sft", f"single_rm_s{seed}"), seed)
    add(f"eval_single_s{seed}", chain.evaluate(s, d(f"single_ppo_s{seed}"), d("sft"),
                                                d(f"single_rm_s{seed}")),
        (f"single_ppo_s{seed}", "sft", f"single_rm_s{seed}"), seed, arm="single")
    add(f"elo_s{seed}", rating(s, d, seed, rounds),
        ("sft", *(f"ppo_r{r}_s{seed}" for r in range(1, rounds + 1)), f"single_ppo_s{seed}"),
        seed)
  return Experiment("online_rlhf", points, row=row,
                    analyse=functools.partial(analyse, rounds=rounds))
