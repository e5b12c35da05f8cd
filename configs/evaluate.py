"""Evaluate a policy (any stage's run) against the SFT reference on held-out prompts.

  python -m research.main --config=configs/evaluate.py --config.policy=runs/dpo \
      --config.init_from=runs/sft --config.evaluate.reward_model=runs/reward
  python -m research.main --config=configs/evaluate.py --config.policy=runs/sft \
      --config.evaluate.best_of_n=16          # best-of-16 sampling from the SFT model
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "small"
  c = common.base("evaluate")
  c.policy = ""                   # the run to evaluate
  c.init_from = "runs/sft"        # the reference (and its tokenizer)
  c.model = common.model(preset)
  c.evaluate = ml_collections.ConfigDict({
      "num_prompts": 64, "max_new_tokens": 192, "samples_per_prompt": 2,
      "reward_model": "",         # also report this reward model's scores
      "best_of_n": 0,             # > 1: evaluate best-of-n sampling from `policy`
      "select_by": "reward_model",  # best-of-n: reward_model | ground_truth
      "sample_batch": 64,
  })
  c.data = common.preference_data()  # held-out prompts
  return c
