"""Seed statistics and verdicts for paper claims (experiments/claims.py).

A claim compares arms (methods or settings) by one quantity measured once per
seed. A comparison "a > b" **holds** only when mean(a) - mean(b) exceeds the seed
spread, the larger of the two arms' sample standard deviations over seeds;
otherwise it is **not reproduced at this scale**. A claim of the form "a is no
worse than b" (KTO against DPO; the SFT model's pass@k catching up) holds when
mean(a) >= mean(b) - spread. A claim holds when all its comparisons hold.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

HOLDS = "holds"
NOT_REPRODUCED = "not reproduced at this scale"


@dataclasses.dataclass
class Arm:
  label: str
  values: list[float]  # one per seed

  @property
  def mean(self) -> float:
    return statistics.fmean(self.values) if self.values else float("nan")

  @property
  def sd(self) -> float:
    return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

  def text(self, digits: int = 3) -> str:
    return f"{self.label} {self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclasses.dataclass
class Comparison:
  text: str
  holds: bool
  # > 0: in the claim's direction (greater: a - b; no_worse: a - b + spread, the spread
  # 0 with one seed). What the slow tests check on fewer seeds.
  margin: float = 0.0


def spread(a: Arm, b: Arm) -> float:
  return max(a.sd, b.sd)


def greater(a: Arm, b: Arm, digits: int = 3) -> Comparison:
  """a > b beyond the seed spread."""
  diff, s = a.mean - b.mean, spread(a, b)
  ok = len(a.values) > 1 and len(b.values) > 1 and diff > s
  return Comparison(f"{a.label} - {b.label} = {diff:+.{digits}f} (spread {s:.{digits}f})", ok,
                    diff)


def no_worse(a: Arm, b: Arm, digits: int = 3) -> Comparison:
  """a >= b - spread: a is not below b beyond the seed spread."""
  diff, s = a.mean - b.mean, spread(a, b)
  ok = len(a.values) > 1 and len(b.values) > 1 and diff >= -s
  return Comparison(f"{a.label} - {b.label} = {diff:+.{digits}f} (spread {s:.{digits}f}, "
                    f"no worse)", ok, diff + (s if math.isfinite(s) else 0.0))


def verdict(comparisons: list[Comparison]) -> str:
  return HOLDS if comparisons and all(c.holds for c in comparisons) else NOT_REPRODUCED


def finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(float(v))]
