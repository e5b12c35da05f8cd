"""Median times of alternating rounds -> a bench row's JSON fields."""

from __future__ import annotations

import numpy as np


def add_rates(row: dict, times: dict[str, list[float]], tokens: int, baseline: str,
              candidate: str, digits: int = 3) -> dict:
  """`row` plus NAME_s (median seconds) and NAME_tokens_per_sec for each timed
  side, and speedup = baseline's time / candidate's."""
  for name, ts in times.items():
    row[f"{name}_s"] = round(float(np.median(ts)), digits)
    row[f"{name}_tokens_per_sec"] = round(tokens / float(np.median(ts)), 1)
  row["speedup"] = round(row[f"{baseline}_s"] / row[f"{candidate}_s"], 3)
  return row
