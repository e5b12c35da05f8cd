"""Padding-free batches of comparisons: several responses per row, as SFT packs examples.

A comparison batch holds B examples of K right-padded rows (BxKxL: a pair's
chosen and rejected, a ranking's K answers). With uneven lengths (HH-like data:
a short prompt and a one-line answer beside a long exchange) most of those
B*K*L tokens are padding, and the forward pass computes them all. Packed, the
batch's sequences sit end to end in R rows of L tokens (first fit, longest
first), each with its own segment id (attention stays within it) and positions
restarting at 0, so the model sees the same sequences; `sequence` says which of
the B*K rows a token came from, and the losses sum per sequence from there
(`models/logprobs.packed_response_sums`, the reward head's last-token read).

R is fixed for a run (one compilation): `data.packed_rows`, or 0 for the most
rows any of a sample of the run's batches needs. A batch that does not fit keeps
its padded layout (a second compilation, counted in `fallback_batches`).
Everything per example (ranks, margins, labels, reference log-probs) is unchanged.
"""

from __future__ import annotations

import jax
import numpy as np

from research.errors import ConfigError

ROW_FIELDS = ("tokens", "mask", "response_mask")


def sequence_lengths(batch: dict) -> np.ndarray:
  """Real tokens of each of the BxK rows (right-padded, so the first n)."""
  return np.asarray(batch["mask"]).reshape(-1, np.shape(batch["mask"])[-1]).sum(-1)


def first_fit(lengths, rows: int, width: int) -> np.ndarray | None:
  """Row of each sequence, placed longest first into the first row with room;
  None if they do not fit in `rows` rows of `width` tokens. Empty ones get -1."""
  lengths = np.asarray(lengths)
  fill = np.zeros(rows, np.int64)
  where = np.full(len(lengths), -1, np.int64)
  for i in np.argsort(-lengths, kind="stable"):
    if lengths[i] == 0:
      continue
    room = np.flatnonzero(fill + lengths[i] <= width)
    if not len(room):
      return None
    where[i] = room[0]
    fill[room[0]] += lengths[i]
  return where


def rows_needed(lengths, width: int) -> int:
  """The rows first fit needs for these sequences."""
  n = max(int(np.ceil(np.sum(lengths) / width)), 1)
  while first_fit(lengths, n, width) is None:
    n += 1
  return n


def pack(batch: dict, rows: int, *, offset: int = 0) -> dict | None:
  """A comparison batch (`ROW_FIELDS` BxKxL) -> the same batch with those fields
  replaced by `packed` (each RxL): tokens, segment_ids (1, 2, ... per sequence,
  0 padding), positions, response_mask, and sequence (the source row's index
  b*K + k, plus `offset`; -1 on padding). None if R rows are too few."""
  tokens = np.asarray(batch["tokens"])
  width = tokens.shape[-1]
  flat = {k: np.asarray(batch[k]).reshape(-1, width) for k in ROW_FIELDS}
  lengths = flat["mask"].sum(-1)
  where = first_fit(lengths, rows, width)
  if where is None:
    return None
  out = {"tokens": np.zeros((rows, width), np.int32),
         "segment_ids": np.zeros((rows, width), np.int32),
         "positions": np.zeros((rows, width), np.int32),
         "response_mask": np.zeros((rows, width), bool),
         "sequence": np.full((rows, width), -1, np.int32)}
  fill = np.zeros(rows, np.int64)
  segments = np.zeros(rows, np.int32)
  for i in np.flatnonzero(where >= 0):  # in row order: the batch's order within a row
    r, n = where[i], lengths[i]
    at = slice(fill[r], fill[r] + n)
    segments[r] += 1
    out["tokens"][r, at] = flat["tokens"][i, :n]
    out["segment_ids"][r, at] = segments[r]
    out["positions"][r, at] = np.arange(n)
    out["response_mask"][r, at] = flat["response_mask"][i, :n]
    out["sequence"][r, at] = i + offset
    fill[r] += n
  packed = {k: v for k, v in batch.items() if k not in ROW_FIELDS}
  packed["packed"] = out
  return packed


def auto_rows(examples: list[dict], batch_size: int, *, split: int = 1, samples: int = 64,
              seed: int = 0) -> int:
  """The most rows first fit needs over `samples` random batches of `batch_size`
  examples (rounded up to a multiple of `split`, the mesh's batch ways)."""
  rng = np.random.default_rng(seed)
  lengths = np.stack([np.asarray(e["mask"]).sum(-1) for e in examples])  # N x K
  width = np.shape(examples[0]["mask"])[-1]
  most = 1
  for _ in range(samples):
    pick = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
    most = max(most, rows_needed(lengths[pick].reshape(-1), width))
  return -(-most // split) * split


class Packed:
  """A comparison-batch iterator whose batches come packed into `rows` rows
  (padded where they do not fit); keeps the wrapped iterator's state."""

  def __init__(self, iterator, rows: int):
    self._it, self.rows = iterator, rows
    self.batches = self.fallback_batches = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    b, k = np.shape(batch["ranks"])
    packed = pack(batch, self.rows // jax.process_count(),
                  offset=jax.process_index() * b * k)
    self.batches += 1
    if packed is None:
      self.fallback_batches += 1
      return batch
    return packed

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state) -> None:
    self._it.set_state(state)


def rows_for(data_cfg, examples: list[dict], split: int, seed: int) -> int:
  """The packed rows of a run (0: `data.packing` off): `data.packed_rows`, or
  `auto_rows` of the training examples."""
  if not data_cfg.get("packing", False):
    return 0
  rows = int(data_cfg.get("packed_rows", 0) or 0)
  if rows % split:
    raise ConfigError(f"config.data.packed_rows={rows} must divide over the mesh's "
                      f"{split} batch ways")
  return rows or auto_rows(examples, data_cfg.batch_size, split=split, seed=seed)


def report(iterator, padded_rows: int) -> dict:
  """What packing did to a run's training batches (for its summary)."""
  if not isinstance(iterator, Packed):
    return {"packing": False}
  return {"packing": True, "rows": iterator.rows, "padded_rows": padded_rows,
          "batches": iterator.batches, "fallback_batches": iterator.fallback_batches}
