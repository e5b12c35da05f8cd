"""Elo ratings between policy runs, judged pairwise on the same held-out prompts.

  python -m research.rate --runs=runs/sft,runs/dpo,runs/rlhf             # ground truth
  python -m research.rate --runs=runs/sft,runs/dpo --judge=reward:runs/reward
  python -m research.rate --runs=runs/sft,runs/dpo --judge=judge:runs/judge_sft
  python -m research.main --config=configs/rate.py:tiny --config.runs=a,b,c --workdir=runs/elo
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`): how many prompts and tokens."""
  run = presets.run(arg)
  c = common.base("rate", run)
  c.runs = ""                     # the policy runs to rate, comma-separated
  c.names = ""                    # their labels, comma-separated ("": the workdirs' names)
  c.model = common.model(run["model"])  # unused: each run builds its own model
  # Held-out prompts (the embedded set's, in the SFT template, as chain.evaluate).
  c.data = common.preference_data(source="embedded", template="alpaca")
  c.rate = ml_collections.ConfigDict({
      "num_prompts": run["eval_prompts"],
      "samples_per_prompt": 2,        # games per pair of runs and prompt
      "max_new_tokens": run["new_tokens"],
      "temperature": 1.0,
      # Who judges a game: ground_truth (the embedded scorer) | reward_model
      # (`reward_model`, a reward run) | generative (`judge`, a language-model run
      # asked "A or B?" in both orders, research/rlhf/judge.py).
      "judge": "ground_truth",
      "reward_model": "",
      "judge_run": "",
      "judge_question": "Which review is more positive?",
      "tie_tolerance": 0.0,           # score judges: |difference| <= this is a tie
      "bootstrap": 1000,              # resamples of the prompts for the 95% intervals
      "l2": 1e-3,                     # Bradley-Terry ridge (keeps a clean sweep finite)
  })
  return c
