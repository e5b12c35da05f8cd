"""A preference set sampled from the SFT model and labelled by the ground truth.

  python -m research.main --config=configs/preferences.py --workdir=runs/prefs   # from runs/sft
  python -m research.main --config=configs/dpo.py --config.data.source=runs/prefs/preferences.jsonl
  python -m research.main --config=configs/sft.py --config.data.source=runs/prefs/preferred.jsonl
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("preferences", run)
  c.init_from = presets.workdir("sft", run)
  c.model = common.model(model_preset)
  c.reward = common.reward("ground_truth", "")
  c.preferences = ml_collections.ConfigDict({
      "k": 4,                  # samples per prompt (the DPO paper's IMDb setup)
      "num_prompts": run["preferences"],
      "temperature": 1.0,
      "max_new_tokens": run["new_tokens"],
      # Drop prompts with a truncated sample (smoke models never stop).
      "require_eos": run["name"] != "smoke",
      "sample_batch": 64,
      "prompt_offset": 0,      # the first training prompt used
      # An earlier preferences run whose records this file starts with (iterated RLHF).
      "accumulate": "",
  })
  # Prompts: the embedded set's ("Write a review of <film>.").
  c.data = common.preference_data()
  return c
