"""Preference records -> fixed-shape arrays: K responses per prompt, right-padded.

Each response row is [BOS] prompt response EOS, with the prompt rendered by the
SFT template and tokenised exactly as RL generation tokenises it. Arrays per
example (K = config.data.num_responses, L = config.data.seq_len):

  tokens         KxL int32
  mask           KxL bool    real tokens (the score is read at the last one, EOS)
  response_mask  KxL bool    response tokens incl. EOS (DPO's sequence log-probs)
  ranks          K   int32   0 = best, -1 = empty slot
  margin         ()  float32 per-prompt margin from the data (0 if none)
"""

from __future__ import annotations

import jax
import numpy as np

from research.data import pipeline, templates
from research.data.sources import ListSource
from research.data.tokenizer import Tokenizer
from research.errors import ConfigError, DataError


def prompt_ids(prompt: str, template: str, tok: Tokenizer) -> list[int]:
  return templates.prompt_ids(prompt, template, tok)


def encode(records, tok: Tokenizer, template: str, seq_len: int, k: int):
  """-> (examples, stats). Too-long rows lose prompt tokens from the left (BOS kept);
  a record whose response alone does not fit is dropped and counted."""
  examples = []
  stats = {"examples": 0, "truncated": 0, "dropped": 0}
  for record in records:
    where = record.get("where", "a record")
    if len(record["responses"]) > k:
      raise DataError(f"{where}: {len(record['responses'])} responses; raise "
                      f"config.data.num_responses (now {k})")
    try:
      prompt = prompt_ids(record["prompt"], template, tok)
    except DataError as e:
      raise DataError(f"{where}: {e}") from None
    tokens = np.zeros((k, seq_len), np.int32)
    mask = np.zeros((k, seq_len), bool)
    response_mask = np.zeros((k, seq_len), bool)
    ranks = np.full((k,), -1, np.int32)
    ok, truncated = True, False
    for i, (response, rank) in enumerate(zip(record["responses"], record["ranks"])):
      reply = templates.reply_ids(response, template, tok)
      cut = max(0, len(prompt) + len(reply) - seq_len)
      if cut > len(prompt) - 1:
        ok = False
        break
      truncated |= cut > 0
      row = [prompt[0]] + prompt[1 + cut:] + reply
      tokens[i, :len(row)] = row
      mask[i, :len(row)] = True
      response_mask[i, len(row) - len(reply):len(row)] = True
      ranks[i] = rank
    if not ok:
      stats["dropped"] += 1
      continue
    stats["truncated"] += int(truncated)
    examples.append({"tokens": tokens, "mask": mask, "response_mask": response_mask,
                     "ranks": ranks, "margin": np.float32(record.get("margin", 0.0))})
  stats["examples"] = len(examples)
  if not examples:
    raise ConfigError(f"no preference example fits config.data.seq_len={seq_len}")
  return examples, stats


def batches(examples, *, global_batch_size: int, seed: int, train: bool):
  """Shuffled (train) or in-order batches of whole examples; no packing."""
  per_process = global_batch_size // jax.process_count()
  ds = pipeline.examples(ListSource(examples), lambda x: x, seed=seed, train=train)
  return ds.batch(per_process, drop_remainder=True)
