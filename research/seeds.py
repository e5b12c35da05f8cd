"""One config seed, a distinct random stream per purpose."""

from __future__ import annotations

import numpy as np


def derived_seed(seed: int, purpose: str) -> int:
  """A seed for `purpose` (data order, sampling, ...) that no other purpose shares."""
  return int(np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1)[0])
