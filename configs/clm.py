"""Causal LM pretraining.

  python -m research.main --config=configs/clm.py            # small, embedded corpus, CPU
  python -m research.main --config=configs/clm.py:tiny       # ~30 s; :smoke for a wiring check
  python -m research.main --config=configs/clm.py:1b --dry_run --config.mesh.fsdp=8
  python -m research.main --config=configs/clm.py:1b --config.data.source=tfds:lm1b \
      --config.data.batch_size=256 --config.data.seq_len=1024 --config.mesh.fsdp=-1 \
      --config.mesh.data=1                                    # TPU pod slice
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size, smoke | tiny | small (default), or a model preset 125m .. 7b."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("clm", run)
  c.model = common.model(model_preset)
  c.objective = ml_collections.ConfigDict({"name": "clm", "z_loss": 1e-4,
                                           "loss_normalization": "token"})
  c.data = common.data()
  c.sample = ml_collections.ConfigDict({"num_samples": 4, "prompt_tokens": 8,
                                        "max_new_tokens": 64})
  if model_preset == "tiny":
    c.data.update(corpus_size=3000, seq_len=128, batch_size=8, tokenizer_train_docs=3000)
    c.train.update(eval_every=100, eval_batches=4, checkpoint_every=100)
    c.optimizer.update(lr=3e-3, warmup_steps=10)
    c.sample.update(num_samples=2, max_new_tokens=24)
  elif model_preset == "small":  # ~8 minutes on 2 CPU cores (~1,000 tokens/s)
    c.data.update(seq_len=256, batch_size=8)
    c.train.update(eval_every=80, checkpoint_every=80)
    c.optimizer.update(lr=2e-3, warmup_steps=24)
  if run["name"] == "smoke":
    c.data.corpus_size = 500
    c.sample.num_samples = 0
  presets.train_for(c, run["clm"])
  return c
