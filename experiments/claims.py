"""Paper claims, reproduced: each method's headline ablation on the embedded tasks at
the `tiny` size, over seeds, with a verdict (experiments/verdicts.py).

  python -m experiments.run experiments/claims.py                 # every claim -> claims.md
  python -m experiments.run experiments/claims.py --only=kto      # one claim and what it needs
  python -m experiments.run experiments/claims.py --collect       # claims.md and plots only

Two shared starting points: the sentiment chain (CLM -> SFT -> 4 SFT samples per
prompt ranked by the ground truth -> a reward model on them, as the DPO frontier)
and the arithmetic SFT model of the verifiable-rewards recipe (README, "Reasoning
RL with verifiable rewards"). Each arm is then trained and evaluated once per
seed (`config.seed`: data order, sampling, evaluation samples) from the same
starting point, so the spread is the method's, not the starting model's.

Claims (name: paper, what is measured):

  dpo_frontier  Rafailov et al. 2023, Fig. 2: DPO (beta 0.1) against PPO on the
                learned reward (beta 0.1): the ground truth of samples gained over the
                SFT model's per nat of KL to it (one point per method: its slope)
  overoptimisation  Gao et al. 2023, Fig. 1: on the learned reward, the ground truth
                of best-of-N (N = 1, 4, 16, 64; KL = log N - (N - 1) / N) and of PPO at
                beta 0.1, 0.02, 0.005, against KL
  rloo          Ahmadian et al. 2024, Fig. 2 / Table 2: 64 samples per iteration as
                RLOO k=4, RLOO k=2, REINFORCE with a moving-average baseline and
                without; held-out pass@1 on arithmetic
  dr_grpo       Liu et al. 2025, Fig. 5: the length of incorrect responses, change
                over training, GRPO against Dr. GRPO
  dapo          Yu et al. 2025, Fig. 2 and sec. 3.2: the policy's entropy late in
                training with clip-higher (0.28) against symmetric clipping; the
                share of groups whose rewards all tie with and without dynamic sampling
  rft           Shao et al. 2024 (DeepSeekMath), Fig. 5: RFT (one round of
                rejection sampling on the SFT model) <= online RFT (4 rounds from the
                live policy) <= GRPO, at equal samples; held-out pass@1
  yue           Yue et al. 2025, Fig. 2: GRPO's pass@1 above the SFT model's, while the
                SFT model's pass@8 catches up with (or passes) the policy's
  ptx           Ouyang et al. 2022, sec. 4.1 / Fig. 28: PPO-ptx keeps the held-out
                LM loss closer to the SFT model's than PPO, at a similar reward
  kto           Ethayarajh et al. 2024, Fig. 3: KTO on the pairs cut into unpaired
                desirable / undesirable examples against DPO on the pairs; ground truth
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Callable

from configs import best_of_n as bon_config
from configs import common
from configs import evaluate as evaluate_config
from configs import rlhf as rlhf_config
from configs import rlvr as rlvr_config
from configs import sft as sft_config
from experiments import chain, claims_report
from experiments.runner import Experiment, Point

SEEDS = (0, 1, 2)
BEST_OF = (1, 4, 16, 64)


@dataclasses.dataclass
class Claim:
  name: str
  paper: str
  statement: str
  arms: tuple[str, ...]  # the arm points (x seeds) this claim reads


CLAIMS = {c.name: c for c in (
    Claim("dpo_frontier", "Rafailov et al. 2023 (DPO), Fig. 2",
          "DPO's reward/KL frontier lies on or above PPO's",
          ("dpo", "ppo", "eval_dpo", "eval_ppo", "eval_bon1")),
    Claim("overoptimisation", "Gao et al. 2023, Fig. 1",
          "with a learned reward, the ground truth first rises then falls as KL grows, for "
          "best-of-N and for RL",
          tuple(f"eval_bon{n}" for n in BEST_OF)
          + tuple(f"{p}ppo{b}" for b in ("", "_beta0.02", "_beta0.005") for p in ("", "eval_"))),
    Claim("rloo", "Ahmadian et al. 2024 (RLOO), Fig. 2",
          "at equal samples, RLOO k=4 > RLOO k=2 > REINFORCE with a baseline > vanilla PG",
          ("rloo4", "rloo2", "reinforce_baseline", "vanilla_pg")),
    Claim("dr_grpo", "Liu et al. 2025 (Dr. GRPO), Fig. 5",
          "under GRPO incorrect responses grow longer over training; under Dr. GRPO they do not",
          ("grpo", "dr_grpo")),
    Claim("dapo", "Yu et al. 2025 (DAPO), Fig. 2b and sec. 3.2",
          "clip-higher keeps the entropy above symmetric clipping; dynamic sampling removes "
          "zero-variance groups", ("grpo", "clip_higher", "dynamic_sampling")),
    Claim("rft", "Shao et al. 2024 (DeepSeekMath), Fig. 5",
          "RFT < online RFT < GRPO on held-out pass@1",
          ("rft", "online_rft", "grpo", "eval_rft", "eval_online_rft", "eval_grpo")),
    Claim("yue", "Yue et al. 2025, Fig. 2",
          "RL raises pass@1 above the SFT model's, while at large k the SFT model's pass@k "
          "catches up with or passes the RL policy's", ("grpo",)),
    Claim("ptx", "Ouyang et al. 2022 (InstructGPT), Fig. 28",
          "PPO-ptx keeps the held-out LM loss closer to the SFT model's than PPO, at a similar "
          "reward", ("ppo_gt", "ppo_ptx")),
    Claim("kto", "Ethayarajh et al. 2024 (KTO), Fig. 3",
          "KTO on unpaired desirable/undesirable examples roughly matches DPO on the pairs "
          "they came from", ("dpo", "kto", "eval_dpo", "eval_kto")),
)}


def seeded(config, seed: int):
  c = copy.deepcopy(config)
  c.seed = seed
  return c


def arith_sft(s):
  """The verifiable-rewards recipe's step 1: SFT from scratch on slipping solutions."""
  c = sft_config.get_config(s["name"])
  c.init_from = ""
  c.model.vocab_size = 40
  c.data.update(source="arithmetic:3:10:0.3", template="chat")
  return c


def rlvr(s, init_from: str, **overrides):
  """configs/rlvr.py from `init_from`, with dotted overrides ('objective.clip_high')."""
  c = rlvr_config.get_config(s["name"])
  c.init_from = init_from
  return common.override(c, overrides)


def rft(s, init_from: str, rounds: int):
  """Rejection-sampling fine-tuning on the math checker: 2,560 samples in all (as
  many as GRPO's 40 iterations of 8 prompts x 8), 40 steps in all, in `rounds`."""
  c = bon_config.get_config(s["name"])
  c.init_from = init_from
  c.reward = rlvr_config.get_config(s["name"]).reward
  c.data.update(source="arithmetic", template="chat", seq_len=128, batch_size=8)
  c.best_of_n.update(n=8, rounds=rounds, prompts_per_round=320 // rounds, max_new_tokens=64,
                     # smoke models answer nothing right: the wiring only
                     min_score=None if s["name"] == "smoke" else 0.5)
  c.train.update(steps=40 // rounds, checkpoint_every=40 // rounds)
  c.optimizer.update(lr=1e-4, warmup_steps=2)
  c.evaluate.num_prompts = 0  # evaluated by an evaluate point, like the others
  return c


def arith_evaluate(s, policy: str):
  """pass@k of the policy and its reference (the arithmetic SFT model) on the
  held-out questions, as the README's step 3."""
  c = evaluate_config.get_config(s["name"])
  c.policy = policy
  c.evaluate.update(checker="math", pass_k_samples=8, num_prompts=64, max_new_tokens=64)
  return c


def ptx_arm(s, init_from: str, ptx_coef: float):
  """PPO on the ground truth (as the tests' tiny PPO), the held-out corpus loss measured."""
  c = rlhf_config.on_ground_truth(rlhf_config.get_config(s["name"]))
  c.init_from = init_from
  c.objective.ptx_coef = ptx_coef
  c.evaluate.update(num_prompts=0, pretrain_batches=4)
  return c


def arm_configs(s, d: Callable[[str], str]) -> dict[str, tuple[object, tuple[str, ...]]]:
  """Arm name -> (config builder of a seed's point, the points it needs); `{seed}` in
  a need names the same seed's point."""
  prefs = os.path.join(d("preferences"), "preferences.jsonl")
  ev = lambda name: (chain.evaluate(s, d(name), d("sft"), d("reward")),
                     (name, "sft", "reward"))
  arith_ev = lambda name: (arith_evaluate(s, d(name)), (name, "arith_sft"))
  arms = {
      "dpo": (chain.dpo(s, d("sft"), prefs, beta=0.1), ("sft", "preferences")),
      "kto": (chain.dpo(s, d("sft"), prefs, name="kto", beta=0.1), ("sft", "preferences")),
      "ppo": (chain.rlhf(s, d("sft"), d("reward"), kl={"beta": 0.1}), ("sft", "reward")),
      # Smaller KL penalties travel further on the learned reward (Gao et al.'s RL half).
      "ppo_beta0.02": (chain.rlhf(s, d("sft"), d("reward"), kl={"beta": 0.02}),
                       ("sft", "reward")),
      "ppo_beta0.005": (chain.rlhf(s, d("sft"), d("reward"), kl={"beta": 0.005}),
                        ("sft", "reward")),
      "ppo_gt": (ptx_arm(s, d("sft"), 0.0), ("sft",)),
      "ppo_ptx": (ptx_arm(s, d("sft"), 1.0), ("sft",)),
      "grpo": (rlvr(s, d("arith_sft")), ("arith_sft",)),
      "dr_grpo": (rlvr(s, d("arith_sft"), **{"objective.advantage": "dr_grpo",
                                             "objective.loss_agg": "seq_mean_token_sum",
                                             "objective.kl.beta": 0.0}), ("arith_sft",)),
      "clip_higher": (rlvr(s, d("arith_sft"), **{"objective.clip_high": 0.28}),
                      ("arith_sft",)),
      "dynamic_sampling": (rlvr(s, d("arith_sft"), **{"rollout.dynamic_sampling": True}),
                           ("arith_sft",)),
      "rft": (rft(s, d("arith_sft"), 1), ("arith_sft",)),
      "online_rft": (rft(s, d("arith_sft"), 4), ("arith_sft",)),
  }
  # Ahmadian et al.'s comparison at 64 samples per iteration, one pass each.
  for name, group, advantage, norm in (("rloo4", 4, "rloo", "none"),
                                       ("rloo2", 2, "rloo", "none"),
                                       ("reinforce_baseline", 1, "reinforce", "baseline"),
                                       ("vanilla_pg", 1, "reinforce", "none")):
    arms[name] = (rlvr(s, d("arith_sft"), **{
        "objective.name": "reinforce", "objective.advantage": advantage,
        "objective.score_norm": norm, "ppo.epochs": 1, "rollout.samples_per_prompt": group,
        "data.batch_size": 64 // group}), ("arith_sft",))
  for name in ("dpo", "kto", "ppo", "ppo_beta0.02", "ppo_beta0.005"):
    arms[f"eval_{name}"] = ev(name)
  for name in ("rft", "online_rft", "grpo"):
    arms[f"eval_{name}"] = arith_ev(name)
  for n in BEST_OF:
    arms[f"eval_bon{n}"] = (chain.evaluate(s, d("sft"), d("sft"), d("reward"), best_of_n=n),
                            ("sft", "reward"))
  return arms


BASES = {  # name -> (builder, needs)
    "clm": (lambda s, d: chain.clm(s), ()),
    "sft": (lambda s, d: chain.sft(s, d("clm")), ("clm",)),
    "preferences": (lambda s, d: chain.preferences(s, d("sft")), ("sft",)),
    "reward": (lambda s, d: chain.reward(s, d("sft"), os.path.join(d("preferences"),
                                                                    "preferences.jsonl")),
               ("sft", "preferences")),
    "arith_sft": (lambda s, d: arith_sft(s), ()),
}


def closure(names: set[str], needs: Callable[[str], tuple[str, ...]]) -> set[str]:
  """`names` and everything they need, transitively."""
  out, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name not in out:
      out.add(name)
      todo.extend(needs(name))
  return out


def experiment(size: str = "tiny", root: str = "runs/claims", only: str = "",
               seeds: tuple[int, ...] = SEEDS) -> Experiment:
  s = chain.size(size)
  d = lambda name: os.path.join(root, name)
  chosen = [c.strip() for c in only.split(",") if c.strip()] or list(CLAIMS)
  unknown = [c for c in chosen if c not in CLAIMS]
  if unknown:
    raise ValueError(f"--only={only!r}: no claim {unknown}; claims: {sorted(CLAIMS)}")
  arms = arm_configs(s, lambda name: d(name))
  # An evaluation needs its policy arm; an arm needs its bases.
  wanted = closure({a for c in chosen for a in CLAIMS[c].arms},
                   lambda a: tuple(n for n in arms[a][1] if n in arms))
  bases = closure({b for a in wanted for b in arms[a][1] if b in BASES},
                  lambda b: BASES[b][1])
  points = [Point(name, builder(s, d), needs=needs)
            for name, (builder, needs) in BASES.items() if name in bases]
  for arm in [a for a in arms if a in wanted and not a.startswith("eval_")] + \
             [a for a in arms if a in wanted and a.startswith("eval_")]:
    config, needs = arms[arm]
    for seed in seeds:
      # An evaluation point reads its own seed's policy (or a base, shared by all seeds).
      seed_needs = tuple(f"{n}_s{seed}" if n in arms else n for n in needs)
      c = seeded(config, seed)
      if arm.startswith("eval_") and arm[5:] in arms:
        c.policy = d(f"{arm[5:]}_s{seed}")
      points.append(Point(f"{arm}_s{seed}", c, needs=seed_needs,
                          tags={"arm": arm, "seed": seed}))
  return Experiment("claims", points, row=claims_report.row_reader(root),
                    analyse=lambda rows, out: claims_report.write(
                        rows, out, [CLAIMS[c] for c in chosen], seeds))
