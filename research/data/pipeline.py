"""grain input pipelines: tokenize -> pack with segment ids -> batch.

Deterministic and resumable: the order is a function of the seed, and
`iterator.get_state()` (a small JSON-able dict) goes into every checkpoint, so
a resumed run sees exactly the batches the uninterrupted run would have.

Packed batches have int32 arrays of shape (batch, seq_len):
  inputs, targets      next-token pairs (targets = inputs shifted by one)
  loss_mask            1 where the target counts in the loss
  segment_ids          1, 2, ... per packed example, 0 for padding
  positions            position within the example (restarts per example)
"""

from __future__ import annotations

import json
from typing import Callable

import grain
import grain.experimental as ge
import jax
import numpy as np

from research.data.tokenizer import Tokenizer

SEQUENCE_FEATURES = ("inputs", "targets", "loss_mask")


def clm_example(tokenizer: Tokenizer) -> Callable[[dict], dict]:
  """{'text'} -> next-token pair over [bos] text [eos], every target in the loss."""
  def fn(record: dict) -> dict:
    ids = np.asarray([*tokenizer.prefix_ids, *tokenizer.encode(record["text"]), tokenizer.eos_id],
                     np.int32)
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": np.ones(len(ids) - 1, np.int32)}
  return fn


def _finalize(example: dict) -> dict:
  return {"inputs": example["inputs"], "targets": example["targets"],
          "loss_mask": example["loss_mask"].astype(np.int32),
          "segment_ids": example["inputs_segment_ids"].astype(np.int32),
          "positions": example["inputs_positions"].astype(np.int32)}


def examples(source, to_example: Callable[[dict], dict], *, seed: int, train: bool):
  """Per-process shard of `source` -> examples; train shuffles anew each epoch and repeats."""
  ds = grain.MapDataset.source(source)
  if jax.process_count() > 1:
    ds = ds[jax.process_index()::jax.process_count()]
  if train:
    ds = ds.shuffle(seed=seed).repeat(None)
  return ds.map(to_example).to_iter_dataset()


def packed_batches(example_ds: grain.IterDataset, *, seq_len: int, global_batch_size: int,
                   split_long: bool = True) -> grain.IterDataset:
  """Packs examples into rows of `seq_len` and batches this process's rows.

  `split_long=True` concatenates then splits (pretraining: nothing is wasted,
  a long document continues in the next row). `False` packs whole examples
  first-fit and never splits one (fine-tuning: examples must fit).
  """
  lengths = {k: seq_len for k in SEQUENCE_FEATURES}
  per_process = global_batch_size // jax.process_count()
  if split_long:
    packed = ge.ConcatThenSplitIterDataset(example_ds, length_struct=lengths)
  else:
    packed = ge.FirstFitPackIterDataset(example_ds, length_struct=lengths,
                                        num_packing_bins=per_process, shuffle_bins=False)
  return packed.map(_finalize).batch(per_process, drop_remainder=True)


def clm_batches(source, tokenizer: Tokenizer, *, seq_len: int, global_batch_size: int,
                seed: int, train: bool) -> grain.IterDataset:
  ds = examples(source, clm_example(tokenizer), seed=seed, train=train)
  return packed_batches(ds, seq_len=seq_len, global_batch_size=global_batch_size)


def state_to_json(state) -> str:
  return json.dumps(state, default=_jsonable)


def state_from_json(text: str):
  return json.loads(text)


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"iterator state holds a non-JSON value of type {type(x).__name__}")
