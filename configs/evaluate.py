"""Evaluate a policy (any stage's run) against its reference on held-out prompts.

  python -m research.main --config=configs/evaluate.py --config.policy=runs/dpo \
      --config.evaluate.reward_model=runs/reward
  python -m research.main --config=configs/evaluate.py --config.policy=runs/sft \
      --config.evaluate.best_of_n=16          # best-of-16 sampling from the SFT model

By default the policy run says what to evaluate on: its reference (the run a DPO,
RL or best-of-n run is regularised to; an SFT or CLM run is its own), its data
(source, fields, splits, prompt limits) and its template. Set config.init_from,
config.data.source or config.data.template to evaluate against something else.
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("evaluate", run)
  c.policy = ""                   # the run to evaluate
  c.init_from = ""                # the reference (and its tokenizer); "": the policy run's
  c.model = common.model(model_preset)
  c.evaluate = common.evaluate(run)
  # Held-out prompts; source "" / template "": the policy run's data and template.
  c.data = common.preference_data(source="", template="")
  # The checker's options (config.evaluate.checker names reward functions).
  c.reward = common.reward("functions", "")
  return c
