"""What a stage made of its data, said before it trains: records read, examples
kept, truncated and dropped (and why, naming the first), held out, tokens and the
tokenizer's `<unk>` rate. Printed to stderr as `data: ...` lines (a `warning: ...`
line when the tokenizer cannot spell much of the text) and kept in summary.json.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import numpy as np

# More <unk> than this and the model learns from placeholders, not the text.
UNK_WARNING = 0.01
REASONS = {
    "response_too_long": "the response alone exceeds config.data.seq_len",
    "prompt_too_long": "the prompt is too long and config.data.prompt_overflow='drop'",
}


@dataclasses.dataclass
class Counts:
  """Per-split counts, filled example by example (`add`)."""
  limit: int = 0                  # the prompt tokens allowed (0: only what the row allows)
  overflow: str = "truncate_left"
  records: int = 0
  kept: int = 0
  truncated: int = 0
  dropped: dict = dataclasses.field(default_factory=dict)        # reason -> count
  first_dropped: dict = dataclasses.field(default_factory=dict)  # reason -> where
  tokens: int = 0
  unk: int = 0

  def add(self, status: str, where: str, reason: str = "response_too_long") -> None:
    """One record: 'ok', 'truncated' (its prompt cut from the left) or 'dropped'."""
    self.records += 1
    if status == "dropped":
      self.dropped[reason] = self.dropped.get(reason, 0) + 1
      self.first_dropped.setdefault(reason, where)
      return
    self.kept += 1
    self.truncated += status == "truncated"

  def count_tokens(self, ids, unk_id: int | None) -> None:
    ids = np.asarray(ids)
    self.tokens += int(ids.size)
    if unk_id is not None:
      self.unk += int((ids == unk_id).sum())

  def as_dict(self) -> dict:
    return {"records": self.records, "examples": self.kept, "truncated": self.truncated,
            "dropped": sum(self.dropped.values()), "dropped_why": dict(self.dropped),
            "first_dropped": dict(self.first_dropped), "tokens": self.tokens,
            "unk_rate": self.unk / max(self.tokens, 1)}


def describe(split: str, stats: dict, seq_len: int | None = None) -> str:
  """One line for a split's `Counts.as_dict()`."""
  line = f"data: {split}: {stats['records']:,} read -> {stats['examples']:,} kept"
  notes = []
  if stats["truncated"]:
    notes.append(f"{stats['truncated']:,} with the prompt cut from the left")
  for reason, n in stats.get("dropped_why", {}).items():
    why = REASONS.get(reason, reason)
    if reason == "response_too_long" and seq_len:
      why = why.replace("config.data.seq_len", f"config.data.seq_len={seq_len}")
    notes.append(f"{n:,} dropped: {why} (first: {stats['first_dropped'][reason]})")
  if notes:
    line += f" ({'; '.join(notes)})"
  return line + (f", {stats['tokens']:,} tokens, <unk> {100 * stats['unk_rate']:.2f}% of them"
                 if stats["tokens"] else "")


def unk_warning(rate: float, tokenizer_from: str) -> str | None:
  """A warning line when `rate` of the tokens are `<unk>`; `tokenizer_from` says where
  the tokenizer came from, so the advice fits."""
  if rate <= UNK_WARNING:
    return None
  return (f"warning: {100 * rate:.1f}% of the training tokens are <unk>: the tokenizer "
          f"({tokenizer_from}) has no pieces for characters of this text, so the model "
          f"cannot read or write them; train a tokenizer on this data (with "
          f"--config.data.tokenizer_byte_fallback=True it spells unknown characters in "
          f"bytes) or give one that covers them (config.data.tokenizer_path)")


def announce(lines) -> None:
  """Prints the summary lines (process 0) to stderr."""
  if jax.process_index() == 0:
    for line in lines:
      if line:
        print(line, file=sys.stderr, flush=True)


def report(splits: dict[str, dict], *, holdout: str | None, tokenizer_from: str,
           seq_len: int | None = None) -> dict:
  """Announces each split's counts, how validation was held out, and the `<unk>`
  warning (on the train split); returns the dict for summary.json."""
  lines = [describe(name, stats, seq_len) for name, stats in splits.items()]
  if holdout:
    lines.append(f"data: {holdout}")
  train = next(iter(splits.values()), {})  # the first split is the training one
  lines.append(unk_warning(train.get("unk_rate", 0.0), tokenizer_from))
  announce(lines)
  return {**splits, "holdout": holdout}


def check_heldout_batch(stats: dict, data_cfg, holdout: str | None) -> None:
  """Refuses, before training, a validation split too small for one batch."""
  from research.errors import DataError  # pylint: disable=g-import-not-at-top
  n, size = stats["examples"], data_cfg.batch_size
  if n >= size:
    return
  cut = (f"; lower config.data.holdout_every (now {data_cfg.holdout_every}) to hold out more"
         if holdout else "")
  raise DataError(f"config.data.source={data_cfg.source!r}: the validation split has {n} "
                  f"example(s) ({stats['records']} record(s) read), fewer than "
                  f"config.data.batch_size={size}, so there is no batch to evaluate on; lower "
                  f"config.data.batch_size or give more data{cut}")
