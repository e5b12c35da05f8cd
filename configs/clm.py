"""Causal LM pretraining.

  python -m research.main --config=configs/clm.py            # small, embedded corpus, CPU
  python -m research.main --config=configs/clm.py:tiny       # seconds; tests and colabs
  python -m research.main --config=configs/clm.py:1b --dry_run --config.mesh.fsdp=8
  python -m research.main --config=configs/clm.py:1b --config.data.source=tfds:lm1b \
      --config.data.batch_size=256 --config.data.seq_len=1024 --config.mesh.fsdp=-1 \
      --config.mesh.data=1                                    # TPU pod slice
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` is the model preset: tiny | small (default) | 125m | 350m | 1b | 7b."""
  preset = arg or "small"
  c = common.base("clm")
  c.model = common.model(preset)
  c.objective = ml_collections.ConfigDict({"name": "clm", "z_loss": 1e-4,
                                           "loss_normalization": "token"})
  c.data = common.data()
  c.sample = ml_collections.ConfigDict({"num_samples": 4, "prompt_tokens": 8,
                                        "max_new_tokens": 64})
  if preset == "tiny":
    c.data.update(corpus_size=3000, seq_len=128, batch_size=8, tokenizer_train_docs=3000)
    c.train.update(steps=60, log_every=10, eval_every=30, eval_batches=4, checkpoint_every=30)
    c.optimizer.update(lr=3e-3, warmup_steps=10)
    c.sample.update(num_samples=2, max_new_tokens=24)
  elif preset == "small":  # ~8 minutes on 2 CPU cores (~1,000 tokens/s)
    c.data.update(seq_len=256, batch_size=8)
    c.train.update(steps=240, eval_every=80, checkpoint_every=80)
    c.optimizer.update(lr=2e-3, warmup_steps=24)
  return c
