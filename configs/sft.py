"""Supervised fine-tuning on instructions, starting from a CLM run.

  python -m research.main --config=configs/sft.py --workdir=runs/sft   # from runs/clm
  python -m research.main --config=configs/sft.py:tiny --config.init_from=runs/clm_tiny
  python -m research.main --config=configs/sft.py --config.data.source=my_data.jsonl
  python -m research.main --config=configs/sft.py --config.data.template=chat
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset; the model must match
  the CLM run in `init_from`."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("sft", run)
  c.init_from = presets.workdir("clm", run)
  c.model = common.model(model_preset)
  # 'sequence': every example weighs the same, so one-word answers are not
  # drowned out by hundred-token reviews (see research/objectives/clm.py).
  c.objective = ml_collections.ConfigDict({"name": "clm", "z_loss": 0.0,
                                           "loss_normalization": "sequence"})
  c.data = common.data(
      source="embedded",            # embedded | embedded_chat | a file, dataset dir, hf: or tfds:
      template="alpaca",            # alpaca | chat | hf_chat | none (prompt-completion text as is)
      # Record field <- the source's field, or '=literal'; "" leaves it as it is. E.g.
      # tfds:imdb_reviews as a sentiment task: IMDB_SENTIMENT below.
      field_map=common.field_map("instruction", "input", "output", "prompt", "completion",
                                 "messages"),
      label_names=(),               # integer labels -> names, e.g. ("negative", "positive")
      seq_len=256, batch_size=8)
  c.train.update(eval_every=100, checkpoint_every=100)
  c.optimizer.update(lr=5e-4, warmup_steps=20, weight_decay=0.0)
  c.generate = ml_collections.ConfigDict({"num_examples": 64, "max_new_tokens": 24})
  if model_preset == "tiny":
    c.data.update(corpus_size=3000, seq_len=256, batch_size=8)
    c.train.update(eval_every=200, checkpoint_every=200, eval_batches=4)
    c.optimizer.update(lr=2e-3, warmup_steps=10)
    c.generate.num_examples = 76  # every held-out sentiment and title question
  if run["name"] == "smoke":
    c.generate.num_examples = 8
  presets.train_for(c, run["sft"])
  return c


# tfds:imdb_reviews as an instruction task (config.data.field_map, label_names).
IMDB_SENTIMENT = {"instruction": "=Is this movie review positive or negative?",
                  "input": "text", "output": "label"}
IMDB_LABELS = ("negative", "positive")
