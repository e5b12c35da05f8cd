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
  """`source` -> examples; train shuffles anew each epoch and repeats.

  Every process reads the same stream (the same seed); `own_rows` keeps each
  process's rows of each global batch. The batches are then the one-process
  run's whatever the process count, and so is the iterator state every process
  checkpoints: a run resumes exactly on another process count. (The price: each
  host tokenizes and packs every example, not a stride of them.)
  """
  ds = grain.MapDataset.source(source)
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
  if split_long:
    packed = ge.ConcatThenSplitIterDataset(example_ds, length_struct=lengths)
  else:
    packed = ge.FirstFitPackIterDataset(example_ds, length_struct=lengths,
                                        num_packing_bins=global_batch_size, shuffle_bins=False)
  return own_rows(packed.map(_finalize).batch(global_batch_size, drop_remainder=True))


def own_rows(global_batches: grain.IterDataset) -> grain.IterDataset:
  """This process's block of rows of each global batch (all of it in one process),
  what `partitioning.shard_batch` assembles the global arrays from."""
  if jax.process_count() == 1:
    return global_batches
  def rows(batch):
    per_process = len(next(iter(jax.tree.leaves(batch)))) // jax.process_count()
    lo = jax.process_index() * per_process
    return jax.tree.map(lambda x: x[lo:lo + per_process], batch)
  return global_batches.map(rows)


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
