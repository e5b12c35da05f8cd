"""Ground-truth sentiment scorer: the reward that is *not* the learned reward model.

A transparent rule-based analyser in the spirit of VADER (Hutto & Gilbert 2014),
built on `research.data.lexicon`. Per sentence it sums the polarity of polar
words, each

  * multiplied by a preceding intensifier ("very" x1.5, "slightly" x0.5),
  * flipped and damped (x -0.7) by a negator within 3 words ("not bad" > 0),
  * re-weighted by contrast: before "but/however/yet" x0.5, after x1.5; a clause
    opened by "although/though/while/despite" (up to its comma) x0.5,

and adds (n - 5.5) * 0.8 for a rating "n/10". The review's logit is the sum over
sentences divided by `SCALE`; the score is sigmoid(logit), read as the
probability that the text is a positive review, like the sentiment classifier
used as ground truth in the DPO paper's IMDb task (Rafailov et al. 2023, sec. 6.1).

Known exploit, on purpose: the logit grows with every extra positive word, so a
policy can raise it by piling up praise; the KL penalty is what holds it back.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import numpy as np

from research.data import lexicon

SCALE = 3.0
_TOKEN = re.compile(r"(\d+)\s*(?:/|out of)\s*10\b|[a-z]+(?:'[a-z]+)?|[.!?;,]")
_SENTENCE_END = frozenset(".!?;")


def _sentence_logits(text: str):
  """Yields the raw (unscaled) contribution of each sentence."""
  total = 0.0
  weight = 1.0       # weight of the current clause
  in_concession = False
  intensity, intensity_age = 1.0, 99
  negation_age = 99
  for match in _TOKEN.finditer(text.lower()):
    rating, word = match.group(1), match.group(0)
    if rating is not None:
      total += (min(int(rating), 10) - 5.5) * 0.8
      continue
    if word in _SENTENCE_END:
      yield total
      total, weight, in_concession = 0.0, 1.0, False
      intensity, intensity_age, negation_age = 1.0, 99, 99
      continue
    intensity_age += 1
    negation_age += 1
    if word == ",":
      if in_concession:
        in_concession, weight = False, 1.0
      continue
    if word in lexicon.CONTRAST_AFTER:
      total *= 0.5
      weight = 1.5
      continue
    if word in lexicon.CONCESSIVE:
      in_concession, weight = True, 0.5
      continue
    if word in lexicon.NEGATORS:
      negation_age = 0
      continue
    if word in lexicon.INTENSIFIERS:
      intensity, intensity_age = lexicon.INTENSIFIERS[word], 0
      continue
    value = lexicon.POLARITY.get(word)
    if value is None:
      continue
    if intensity_age <= 2:
      value *= intensity
    if negation_age <= lexicon.NEGATION_WINDOW:
      value *= lexicon.NEGATION_FACTOR
    total += weight * value
    intensity, intensity_age, negation_age = 1.0, 99, 99
  yield total


def sentiment_logit(text: str) -> float:
  """Signed evidence for positive sentiment (0 for neutral text)."""
  return sum(_sentence_logits(text)) / SCALE


def score(text: str) -> float:
  """P(positive) in (0, 1)."""
  logit = sentiment_logit(text)
  return 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))


def score_batch(texts: Iterable[str]) -> np.ndarray:
  return np.asarray([score(t) for t in texts], dtype=np.float32)
