"""SFT examples: records -> template -> tokens with a response-only loss mask -> packs.

Tokenised once up front (instruction sets are small), so the truncation counts
are exact and reported before training starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.data import pipeline, templates
from research.data.sources import ListSource
from research.data.summary import Counts
from research.data.tokenizer import Tokenizer
from research.errors import DataError


@dataclasses.dataclass
class SFTExamples:
  examples: list[dict]       # inputs, targets, loss_mask (int32 arrays, unpadded)
  records: list[dict]        # the kept records, in the template's layout
  stats: dict[str, float]


def build(records, tok: Tokenizer, template: str, seq_len: int, *, max_prompt_len: int = 0,
          overflow: str = "truncate_left") -> SFTExamples:
  """Each record -> one example of at most seq_len (+1 for the shift) tokens; a long
  prompt is cut from the left or dropped (`prompt_fit`), a record whose responses
  alone do not fit is dropped. `stats` counts each (`summary.Counts`)."""
  examples, kept = [], []
  counts = Counts(limit=max_prompt_len, overflow=overflow)
  response_tokens = 0
  longest = (0, "")
  for i, record in enumerate(records):
    where = record.get("where") or f"record {i}"
    record = templates.as_template(record, template)
    ids, mask = templates.tokenize(record, template, tok)
    longest = max(longest, (len(ids), where))
    ids, mask, status, reason = templates.fit(ids, mask, seq_len + 1, max_prompt_len, overflow)
    counts.add(status, where, reason)
    if status == "dropped":
      continue
    examples.append({"inputs": ids[:-1], "targets": ids[1:],
                     "loss_mask": mask[1:].astype(np.int32)})
    kept.append(record)
    response_tokens += int(mask.sum())
    counts.count_tokens(ids[:-1], getattr(tok, "unk_id", None))
  if not examples:
    raise DataError(f"every one of {len(records)} examples is longer than "
                    f"config.data.seq_len={seq_len} even without its prompt, or has a prompt "
                    f"over the limit with config.data.prompt_overflow='drop' (the longest, "
                    f"{longest[1] or 'a record'}, has {longest[0]} tokens); raise "
                    f"config.data.seq_len or shorten the responses")
  stats = {**counts.as_dict(), "mean_tokens": counts.tokens / len(examples),
           "response_fraction": response_tokens / counts.tokens}
  return SFTExamples(examples, kept, stats)


def batches(data: SFTExamples, *, seq_len: int, global_batch_size: int, seed: int, train: bool):
  """Whole examples packed first-fit (never split), positions restarting per example."""
  ds = pipeline.examples(ListSource(data.examples), lambda x: x, seed=seed, train=train)
  return pipeline.packed_batches(ds, seq_len=seq_len, global_batch_size=global_batch_size,
                                 split_long=False)
