"""How well a generative judge (any language-model run) labels preference pairs.

  python -m research.main --config=configs/judge.py:tiny --config.judge=runs/judge_sft
  python -m research.main --config=configs/judge.py --config.judge=runs/sft \
      --config.data.source=human_pairs.jsonl --config.question="Which answer is more helpful?"

Train a judge on the embedded task: configs/sft.py with data.source=embedded_judge
(experiments/rlaif.py does both).
"""

import ml_collections

from configs import common, presets
from research.data import judge_prompts as judge


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`)."""
  run = presets.run(arg)
  c = common.base("judge", run)
  c.judge = ""                             # the language-model run asked "A or B?"
  c.question = judge.SENTIMENT_QUESTION    # the embedded task's criterion
  c.num_pairs = 400                        # held-out pairs judged (each in both orders)
  c.model = common.model(run["model"])     # unused: the judge run builds its own model
  # Labelled pairs: held-out records of the embedded set (or a preference file).
  c.data = common.preference_data(num_responses=2, corpus_size=8000)
  return c
