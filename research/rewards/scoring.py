"""A weighted sum of registered reward functions: `config.reward.functions`, scored
on a batch of (prompt, response, record) and logged per function.

Fail safe, but never silently: a function that raises on one response scores it 0,
is counted (`reward/errors`) and warned about once; one that returns the wrong
number of scores, a non-number or a non-finite value stops the run in one line
naming it (a bug to fix, not a response to punish), as does a user error it
raises (a missing setting; a remote server still down after its retries). Records without a field a
function needs are refused before any sampling (`check_records`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import numpy as np

from research import rewards as registry
from research.errors import ConfigError, DataError, UserError


@dataclasses.dataclass
class Scored:
  total: np.ndarray                 # B, float32: the weighted sum
  parts: dict[str, np.ndarray]      # name -> B raw scores of each function
  metrics: dict[str, float]         # reward/<name>, reward/errors, time/reward_s, ...


class FunctionReward:
  """`config.reward.functions` as an RL reward source: `source(rollouts, prompts,
  records) -> scores`, or `score(prompts, responses, records) -> Scored`."""

  def __init__(self, spec: str, options=None):
    self.parts = registry.parse(spec)
    self.options = options
    self._warned: set[str] = set()

  @property
  def fields(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for fn, _ in self.parts for f in fn.fields))

  def check_records(self, records: Sequence[dict], what: str = "prompt") -> None:
    """Every field a function needs, in every record (DataError naming the first)."""
    for i, record in enumerate(records):
      for fn, _ in self.parts:
        missing = [f for f in fn.fields if record.get(f) is None]
        if missing:
          where = record.get("where") or f"{what} {i}"
          raise DataError(f"{where}: the {fn.name!r} reward needs the field(s) {missing}, "
                          f"which this record lacks (fields: {sorted(record)}); "
                          f"config.data.field_map renames fields")

  def score(self, prompts, responses: Sequence[str], records: Sequence[dict]) -> Scored:
    start = time.perf_counter()
    n = len(responses)
    records = list(records) if records is not None else [{}] * n
    total = np.zeros(n, np.float32)
    parts, metrics, errors = {}, {}, 0
    for fn, weight in self.parts:
      values, extra, failed = self._call(fn, prompts, responses, records)
      parts[fn.name] = values
      total += np.float32(weight) * values
      errors += failed
      metrics[f"reward/{fn.name}"] = float(values.mean()) if n else 0.0
      metrics.update({f"reward/{k}": float(v) for k, v in extra.items()})
    metrics["reward/errors"] = float(errors)
    metrics["time/reward_s"] = time.perf_counter() - start
    return Scored(total, parts, metrics)

  def __call__(self, rollouts, prompts, records=None) -> np.ndarray:
    return self.score(prompts, rollouts.texts, records).total

  def _call(self, fn, prompts, responses, records):
    """(scores B, extra metrics, responses that raised) of one function."""
    n = len(responses)
    if fn.batched:
      try:
        out = fn.fn(list(prompts), list(responses), records, self.options)
      except UserError:  # a setting or a server to fix (remote: down after its retries)
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._warn(fn.name, e)
        return np.zeros(n, np.float32), {}, n
      values, extra = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
      extra = dict(extra)
      failed = int(extra.pop("errors", 0))  # a server's own count (remote)
      return self._checked(fn.name, values, n), extra, failed
    values, failed = [], 0
    for p, r, rec in zip(prompts, responses, records):
      try:
        values.append(fn.fn(p, r, rec, self.options))
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._warn(fn.name, e)
        values.append(0.0)
        failed += 1
    return self._checked(fn.name, values, n), {}, failed

  def _warn(self, name: str, error: Exception) -> None:
    if name not in self._warned:
      self._warned.add(name)
      logging.warning("reward function %r raised %s: %s; such responses score 0 (counted in "
                      "reward/errors, warned once)", name, type(error).__name__, error)

  @staticmethod
  def _checked(name: str, values, n: int) -> np.ndarray:
    """Scores as float32, or a ConfigError naming the function and what is wrong."""
    try:
      values = list(values)
    except TypeError:
      raise ConfigError(f"reward function {name!r} returned {type(values).__name__}, not a "
                        f"list of {n} scores") from None
    if len(values) != n:
      raise ConfigError(f"reward function {name!r} returned {len(values)} scores for {n} "
                        f"responses")
    for v in values:
      if not isinstance(v, (int, float, np.number)):  # bool is an int: True scores 1
        raise ConfigError(f"reward function {name!r} returned {type(v).__name__} {v!r}, not a "
                          f"number")
      if not math.isfinite(float(v)):
        raise ConfigError(f"reward function {name!r} returned {v}: scores must be finite")
    return np.asarray(values, np.float32)
