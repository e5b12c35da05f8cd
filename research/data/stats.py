"""Corpus statistics that put a language-model loss in context."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def unigram_entropy(token_lists: Iterable[Sequence[int]], vocab_size: int) -> float:
  """Entropy (nats/token) of the token frequency distribution.

  A model that ignores context can do no better than this loss, so a trained
  model's held-out loss well below it shows that it uses the context.
  """
  counts = np.zeros(vocab_size, np.int64)
  for tokens in token_lists:
    np.add.at(counts, np.asarray(tokens, np.int64), 1)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def text_summary(train_src, eval_src, token_lists: Sequence[Sequence[int]],
                 unk_id: int | None) -> dict:
  """What a CLM run reads: documents per split, train tokens (exact when
  `token_lists`, the first train documents' tokens, cover the split; extrapolated
  otherwise) and the tokenizer's `<unk>` rate on them."""
  n = len(token_lists)
  tokens = sum(len(t) for t in token_lists)
  unk = sum(list(t).count(unk_id) for t in token_lists) if unk_id is not None else 0
  return {"train_documents": len(train_src), "heldout_documents": len(eval_src),
          "train_tokens": round(tokens * len(train_src) / max(n, 1)),
          "tokens_per_document": tokens / max(n, 1),
          "unk_rate": unk / max(tokens, 1), "exact": n == len(train_src)}


def describe(summary: dict) -> str:
  """One line for the log; a high `<unk>` rate suggests byte fallback."""
  line = (f"data: {summary['train_documents']:,} train / {summary['heldout_documents']:,} "
          f"held-out documents, {'' if summary['exact'] else '~'}{summary['train_tokens']:,} "
          f"train tokens ({summary['tokens_per_document']:.0f} per document), <unk> "
          f"{100 * summary['unk_rate']:.2f}% of tokens")
  if summary["unk_rate"] > 1e-3:
    line += ("; characters the tokenizer has no piece for become <unk>: "
             "--config.data.tokenizer_byte_fallback=True spells them in bytes")
  return line
