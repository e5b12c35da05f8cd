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
