"""Metrics to TensorBoard event files and to `metrics.jsonl` (for sweeps and plots).

Only process 0 writes. A resumed run first drops the records past the step it
resumes from, then appends, so each (split, step) appears once.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricWriter:
  """`resume_step`: records of later steps (trained again after a resume) are
  dropped from metrics.jsonl before appending."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        _truncate(os.path.join(workdir, "metrics.jsonl"), resume_step)
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


def _truncate(path: str, last_step: int) -> None:
  """Keeps the records of steps <= `last_step` (atomically)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
  if len(keep) != len(lines):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
