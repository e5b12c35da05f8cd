"""Metrics to TensorBoard event files and to `metrics.jsonl` (for sweeps and plots).

Only process 0 writes. A resumed run appends; readers keep the last record of
each (split, step).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricWriter:
  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    for k, v in clean.items():
      self._tb.add_scalar(f"{split}/{k}", v, step)
    record = {"step": int(step), "split": split,
              **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  """{step: metrics} from `metrics.jsonl`, last record per step winning."""
  out: dict[int, dict] = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.pop("split") == split:
        out[record.pop("step")] = record
  return out
