"""Experiments as sweeps: points (a stage config each) -> workdirs -> one CSV table + plots.

An experiment file defines `experiment(size: str, root: str) -> Experiment`:
its points (a config for some stage, the points it needs, and the axis values
that label it in the table), how to turn a point's summary into a table row,
and an analysis that draws plots from the rows. The runner

  * runs points in order, each into `root/<point name>`, one after another;
  * skips a point whose workdir already holds a finished `summary.json`, so a
    rerun picks up where an interrupted sweep stopped (a half-finished point
    resumes from its own checkpoint);
  * writes `root/results.csv` (one row per finished point) and the plots.

For a cluster, `python -m experiments.run FILE --ray=auto` runs the points as
Ray tasks (experiments/ray_sweep.py); without Ray, `--list` prints one command
per point grouped in waves: the points of a wave are independent and can run on
different machines at once, as long as they share `root` (see README.md).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Any, Callable

import ml_collections

SUMMARY = "summary.json"


class Preempted(Exception):
  """A point saved its state on SIGTERM and stopped; rerunning the sweep continues it."""


@dataclasses.dataclass
class Point:
  name: str
  config: ml_collections.ConfigDict  # `config.stage` names the stage
  needs: tuple[str, ...] = ()         # points whose workdirs this config reads
  tags: dict[str, Any] = dataclasses.field(default_factory=dict)  # axis values for the table


@dataclasses.dataclass
class Experiment:
  name: str
  points: list[Point]
  row: Callable[[Point, dict], dict] = lambda point, summary: {}
  analyse: Callable[[list[dict], str], None] | None = None

  def __post_init__(self):
    seen = set()
    for p in self.points:
      if p.name in seen:
        raise ValueError(f"experiment {self.name}: two points are named {p.name!r}")
      missing = [n for n in p.needs if n not in seen]
      if missing:
        raise ValueError(f"experiment {self.name}: point {p.name!r} needs {missing}, which "
                         f"must come earlier in the list")
      seen.add(p.name)

  def point(self, name: str) -> Point:
    for p in self.points:
      if p.name == name:
        return p
    raise ValueError(f"experiment {self.name} has no point {name!r}; points: "
                     f"{[p.name for p in self.points]}")

  def waves(self) -> list[list[str]]:
    """Points grouped so that each depends only on earlier waves."""
    level: dict[str, int] = {}
    for p in self.points:
      level[p.name] = 1 + max((level[n] for n in p.needs), default=-1)
    return [[n for n, l in level.items() if l == i] for i in range(max(level.values()) + 1)]


def workdir(root: str, point: Point) -> str:
  return os.path.join(root, point.name)


def finished(path: str) -> dict | None:
  """The point's summary if it ran to the end, else None."""
  file = os.path.join(path, SUMMARY)
  if not os.path.exists(file):
    return None
  with open(file, encoding="utf-8") as f:
    summary = json.load(f)
  return None if summary.get("preempted") else summary


def run_point(experiment: Experiment, root: str, name: str) -> dict:
  from research.main import stage_module  # pylint: disable=g-import-not-at-top
  point = experiment.point(name)
  for need in point.needs:
    if finished(workdir(root, experiment.point(need))) is None:
      raise RuntimeError(f"point {name!r} needs {need!r}, which has not finished under {root}")
  path = workdir(root, point)
  done = finished(path)
  if done is not None:
    logging.info("%s: finished already, skipped", name)
    return done
  logging.info("%s: running stage %s", name, point.config.stage)
  from research import objectives  # pylint: disable=g-import-not-at-top
  objectives.import_modules(point.config)  # what a fresh process needs registered
  return stage_module(point.config.stage).run(point.config, path)


def run(experiment: Experiment, root: str, only: str | None = None,
        collect_results: bool = True) -> list[dict]:
  """Runs every point (or only `only`), then collects the table and the plots
  (unless not `collect_results`: points running side by side leave that to one
  `--collect` at the end)."""
  os.makedirs(root, exist_ok=True)
  for point in experiment.points:
    if only is None or point.name == only:
      print(f"== {experiment.name}/{point.name} ({point.config.stage})", flush=True)
      if run_point(experiment, root, point.name).get("preempted"):
        # A SIGTERM reached the stage: stop here rather than start the next point.
        raise Preempted(f"point {point.name!r} saved its state on SIGTERM under "
                        f"{workdir(root, point)}; rerun the same command to continue")
  return collect(experiment, root) if collect_results else []


def collect(experiment: Experiment, root: str) -> list[dict]:
  """Rows of the finished points -> root/results.csv, then the experiment's analysis."""
  rows = []
  for point in experiment.points:
    summary = finished(workdir(root, point))
    if summary is not None:
      rows.append({"point": point.name, "stage": point.config.stage, **point.tags,
                   **experiment.row(point, summary)})
  write_csv(rows, os.path.join(root, "results.csv"))
  if experiment.analyse is not None and rows:
    experiment.analyse(rows, root)
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  columns: list[str] = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def read_csv(path: str) -> list[dict]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))
