"""Preference records -> fixed-shape arrays: K responses per prompt, right-padded.

Each response row is [BOS] prompt response EOS, with the prompt rendered by the
SFT template and tokenised exactly as RL generation tokenises it; a prompt too
long for the row is cut from the left or dropped (`prompt_fit`). Arrays per
example (K = config.data.num_responses, L = config.data.seq_len):

  tokens         KxL int32
  mask           KxL bool    real tokens (the score is read at the last one, EOS)
  response_mask  KxL bool    response tokens incl. EOS (DPO's sequence log-probs)
  ranks          K   int32   0 = best, -1 = empty slot
  margin         ()  float32 per-prompt margin from the data (0 if none)
  label          ()  float32 a record's label, when it has one (KTO: 1 desirable, 0 not)
"""

from __future__ import annotations

import numpy as np

from research.data import pipeline, prompt_fit, templates
from research.data.sources import ListSource
from research.data.summary import Counts
from research.data.tokenizer import Tokenizer
from research.errors import DataError


def prompt_ids(prompt: str, template: str, tok: Tokenizer) -> list[int]:
  return templates.prompt_ids(prompt, template, tok)


def encode(records, tok: Tokenizer, template: str, seq_len: int, k: int, *,
           max_prompt_len: int = 0, overflow: str = "truncate_left"):
  """-> (examples, stats). A prompt too long for its longest response's row (or for
  `max_prompt_len`) loses tokens from the left, BOS kept, the same for all its rows
  (or, with `overflow='drop'`, the record is dropped); a record whose longest
  response alone does not fit is dropped. `stats`: `summary.Counts.as_dict()`."""
  examples = []
  counts = Counts(limit=max_prompt_len, overflow=overflow)
  for i, record in enumerate(records):
    where = record.get("where") or f"record {i}"
    if len(record["responses"]) > k:
      raise DataError(f"{where}: {len(record['responses'])} responses; raise "
                      f"config.data.num_responses (now {k})")
    try:
      prompt = prompt_ids(record["prompt"], template, tok)
    except DataError as e:
      raise DataError(f"{where}: {e}") from None
    replies = [templates.reply_ids(r, template, tok) for r in record["responses"]]
    room = seq_len - max(map(len, replies))
    limit = min(room, max_prompt_len) if max_prompt_len else room
    if room < 1:
      counts.add("dropped", where, "response_too_long")
      continue
    prompt, status = prompt_fit.fit(prompt, limit, overflow)
    counts.add(status, where, "prompt_too_long")
    if prompt is None:
      continue
    tokens = np.zeros((k, seq_len), np.int32)
    mask = np.zeros((k, seq_len), bool)
    response_mask = np.zeros((k, seq_len), bool)
    ranks = np.full((k,), -1, np.int32)
    for j, (reply, rank) in enumerate(zip(replies, record["ranks"])):
      row = prompt + reply
      tokens[j, :len(row)] = row
      mask[j, :len(row)] = True
      response_mask[j, len(prompt):len(row)] = True
      ranks[j] = rank
      counts.count_tokens(row, getattr(tok, "unk_id", None))
    examples.append({"tokens": tokens, "mask": mask, "response_mask": response_mask,
                     "ranks": ranks, "margin": np.float32(record.get("margin", 0.0))})
    if "label" in record:
      examples[-1]["label"] = np.float32(record["label"])
  stats = counts.as_dict()
  if not examples:
    raise DataError(f"none of the {len(records)} preference records fits "
                    f"config.data.seq_len={seq_len}: {stats['dropped_why']} (first: "
                    f"{stats['first_dropped']}); raise config.data.seq_len or shorten the "
                    f"responses")
  return examples, stats


def batches(examples, *, global_batch_size: int, seed: int, train: bool):
  """Shuffled (train) or in-order batches of whole examples; no packing."""
  ds = pipeline.examples(ListSource(examples), lambda x: x, seed=seed, train=train)
  return pipeline.own_rows(ds.batch(global_batch_size, drop_remainder=True))
