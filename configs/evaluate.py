"""Evaluate a policy (any stage's run) against the SFT reference on held-out prompts.

  python -m research.main --config=configs/evaluate.py --config.policy=runs/dpo \
      --config.init_from=runs/sft --config.evaluate.reward_model=runs/reward
  python -m research.main --config=configs/evaluate.py --config.policy=runs/sft \
      --config.evaluate.best_of_n=16          # best-of-16 sampling from the SFT model
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset."""
  run = presets.run(arg)
  preset = run["model"]
  c = common.base("evaluate", run)
  c.policy = ""                   # the run to evaluate
  c.init_from = "runs/sft"        # the reference (and its tokenizer)
  c.model = common.model(preset)
  c.evaluate = common.evaluate(run)
  c.data = common.preference_data()  # held-out prompts
  return c
