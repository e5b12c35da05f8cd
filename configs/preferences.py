"""A preference set sampled from the SFT model and labelled by the ground truth.

  python -m research.main --config=configs/preferences.py --workdir=runs/prefs   # from runs/sft
  python -m research.main --config=configs/dpo.py --config.data.source=runs/prefs/preferences.jsonl
  python -m research.main --config=configs/sft.py --config.data.source=runs/prefs/preferred.jsonl
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "small"
  c = common.base("preferences")
  c.init_from = "runs/sft" if preset != "tiny" else "runs/sft_tiny"
  c.model = common.model(preset)
  c.reward = ml_collections.ConfigDict({"source": "ground_truth", "model": ""})
  c.preferences = ml_collections.ConfigDict({
      "k": 4,                  # samples per prompt (the DPO paper's IMDb setup)
      "num_prompts": 1000,
      "temperature": 1.0,
      "max_new_tokens": 200,
      "require_eos": True,     # drop prompts with a truncated sample
      "sample_batch": 64,
  })
  # Prompts: the embedded set's ("Write a review of <film>.").
  c.data = common.preference_data()
  return c
