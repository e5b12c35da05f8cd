"""The claims experiment (experiments/claims.py): its points per claim, the verdict
rule against hand-worked numbers, and claims.md from a table of seed results.
The claims themselves run under `-m slow` (test_claims_slow.py)."""

import os

import pytest

from experiments import claims, claims_report, verdicts
from experiments import run as run_cli


def test_greater_holds_only_beyond_the_larger_seed_spread():
  a, b = verdicts.Arm("a", [0.60, 0.62, 0.64]), verdicts.Arm("b", [0.50, 0.55, 0.60])
  # mean difference 0.07, spreads 0.02 and 0.05: holds.
  got = verdicts.greater(a, b)
  assert got.holds and "+0.070 (spread 0.050)" in got.text
  assert not verdicts.greater(b, a).holds
  wide = verdicts.Arm("w", [0.40, 0.60, 0.80])  # mean 0.6, sd 0.2
  assert not verdicts.greater(a, wide).holds and not verdicts.greater(wide, b).holds
  assert not verdicts.greater(verdicts.Arm("one", [0.9]), b).holds  # one seed: no spread
  # "no worse": a >= b - spread.
  assert verdicts.no_worse(b, a).holds is False      # 0.55 vs 0.62, spread 0.05
  assert not verdicts.no_worse(verdicts.Arm("c", [0.58, 0.59, 0.60]), a).holds  # -0.03 < -0.02
  assert verdicts.no_worse(verdicts.Arm("d", [0.60, 0.61, 0.62]), a).holds  # -0.01 >= -0.02
  assert verdicts.verdict([]) == verdicts.NOT_REPRODUCED
  assert verdicts.verdict([got]) == verdicts.HOLDS


def test_only_keeps_a_claims_arms_and_what_they_need():
  exp = claims.experiment("tiny", "/r", only="kto")
  names = [p.name for p in exp.points]
  assert names[:4] == ["clm", "sft", "preferences", "reward"] and "arith_sft" not in names
  seeds = claims.SEEDS
  assert {f"{a}_s{s}" for a in ("dpo", "kto", "eval_dpo", "eval_kto") for s in seeds} == \
      set(names[4:])
  kto = exp.point("kto_s1").config
  assert kto.objective.name == "kto" and kto.seed == 1 and kto.init_from == "/r/sft"
  ev = exp.point("eval_kto_s1")
  assert ev.config.policy == "/r/kto_s1" and "kto_s1" in ev.needs and ev.config.seed == 1
  arith = claims.experiment("tiny", "/r", only="rft")
  names = [p.name for p in arith.points]
  assert names[0] == "arith_sft" and "clm" not in names
  assert {"rft_s0", "online_rft_s2", "grpo_s1", "eval_grpo_s1"} <= set(names)
  online = arith.point("online_rft_s0").config.best_of_n
  assert online.rounds * online.prompts_per_round == 320 and online.min_score == 0.5
  with pytest.raises(ValueError, match="no claim"):
    claims.experiment("tiny", "/r", only="nope")


def test_rloo_arms_see_the_same_number_of_samples():
  exp = claims.experiment("tiny", "/r", only="rloo")
  rows = {}
  for arm in ("rloo4", "rloo2", "reinforce_baseline", "vanilla_pg"):
    c = exp.point(f"{arm}_s0").config
    rows[arm] = c.data.batch_size * c.rollout.samples_per_prompt
    assert c.objective.name == "reinforce" and c.ppo.epochs == 1
  assert set(rows.values()) == {64}
  assert exp.point("reinforce_baseline_s0").config.objective.score_norm == "baseline"
  assert exp.point("vanilla_pg_s0").config.objective.advantage == "reinforce"


def test_every_claim_is_judged_from_seed_rows(tmp_path):
  """claims.md from synthetic rows: one claim that holds, one that does not, one
  whose points are missing."""
  rows = []
  for seed, (dpo, kto, kl) in enumerate(((0.60, 0.61, 4.0), (0.62, 0.60, 4.2),
                                         (0.64, 0.63, 3.9))):
    rows += [{"arm": "eval_dpo", "seed": seed, "ground_truth": dpo, "kl": kl},
             {"arm": "eval_kto", "seed": seed, "ground_truth": kto, "kl": kl + 1},
             {"arm": "dpo", "seed": seed}, {"arm": "kto", "seed": seed}]
    rows += [{"arm": "grpo", "seed": seed, "pass1_start": 0.5, "pass1_end": 0.5 + 0.01 * seed,
              "pass8_start": 0.94, "pass8_end": 0.88}]
  chosen = [claims.CLAIMS[n] for n in ("kto", "yue", "rloo")]
  results = claims_report.write(rows, str(tmp_path), chosen, claims.SEEDS)
  by = {r["claim"]: r for r in results}
  assert by["kto"]["verdict"] == verdicts.HOLDS  # 0.613 vs 0.620, spread 0.02
  assert by["yue"]["verdict"] == verdicts.NOT_REPRODUCED  # pass@1 +0.01, spread 0.01
  assert by["rloo"]["measurement"].startswith("not run")
  text = open(os.path.join(tmp_path, "claims.md"), encoding="utf-8").read()
  assert "| KTO on unpaired" in text and "**holds**" in text
  assert "**not reproduced at this scale**" in text
  assert os.path.exists(os.path.join(tmp_path, "claim_kto.png"))


def test_only_is_refused_by_an_experiment_without_subsets():
  with pytest.raises(SystemExit, match="no named subsets"):
    run_cli.main(["experiments/pipeline.py", "--only=x", "--list"])
