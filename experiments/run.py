"""Runs an experiment file: every point (or one), then the table and the plots.

  python -m experiments.run experiments/dpo_frontier.py [--size=tiny] [--root=DIR]
  python -m experiments.run experiments/dpo_frontier.py --list        # one command per point
  python -m experiments.run experiments/dpo_frontier.py --point=dpo_beta0.1
  python -m experiments.run experiments/dpo_frontier.py --collect     # table + plots only
  python -m experiments.run experiments/claims.py --only=kto,rloo      # a subset, if the
                                                                       # experiment has one
  python -m experiments.run experiments/dpo_frontier.py --ray=auto     # points as Ray tasks
                                                                       # (experiments/ray_sweep.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import logging
import os
import shlex
import sys

from experiments import runner
from research import host_memory
from research.cli import EXIT_PREEMPTED


def load(path: str):
  """The experiment module at `path` (a file) or dotted name."""
  if path.endswith(".py"):
    if not os.path.exists(path):
      sys.exit(f"error: no experiment file {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # what dataclasses and pickling look a class's module up in
    spec.loader.exec_module(module)
    return module
  return importlib.import_module(path)


def main(argv=None) -> None:
  host_memory.keep_freed_memory()  # CPU runs: before JAX starts its threads
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("experiment", help="experiments/NAME.py")
  parser.add_argument("--size", default="tiny", help="smoke | tiny | small (configs/presets.py)")
  parser.add_argument("--root", default="", help="output directory (default runs/<name>[_size])")
  parser.add_argument("--point", default="", help="run only this point (its needs must be done)")
  parser.add_argument("--list", action="store_true", help="print one command per point, in waves")
  parser.add_argument("--collect", action="store_true", help="only rebuild the table and plots")
  parser.add_argument("--only", default="", help="the experiment's named subset (e.g. claims)")
  parser.add_argument("--ray", default="", metavar="local|auto|HOST:PORT",
                      help="run the points as tasks on a Ray cluster")
  parser.add_argument("--ray_device", default="auto", choices=["auto", "cpu", "gpu", "tpu"],
                      help="what a point's mesh devices are on the Ray cluster")
  parser.add_argument("--ray_retries", type=int, default=3,
                      help="retries of a preempted point (each resumes from its checkpoint)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  module = load(args.experiment)
  name = os.path.splitext(os.path.basename(args.experiment))[0]
  root = args.root or os.path.join("runs", name if args.size == "tiny" else f"{name}_{args.size}")
  if args.ray:
    root = os.path.abspath(root)  # the points' processes may start in another directory
  if args.only:
    if "only" not in inspect.signature(module.experiment).parameters:
      sys.exit(f"error: {args.experiment} has no named subsets (--only)")
    exp = module.experiment(args.size, root, only=args.only)
  else:
    exp = module.experiment(args.size, root)

  def point_argv(point: str) -> list[str]:
    """The command line that runs one point (after the interpreter)."""
    return ["-m", "experiments.run", args.experiment, f"--size={args.size}", f"--root={root}",
            *([f"--only={args.only}"] if args.only else []), f"--point={point}"]

  if args.list:
    for i, wave in enumerate(exp.waves()):
      print(f"# wave {i + 1}: independent of each other; after wave {i}" if i else
            "# wave 1")
      for point in wave:
        print(" ".join(shlex.quote(a) for a in ("python", *point_argv(point))))
    return
  if args.collect:
    rows = runner.collect(exp, root)
  elif args.ray:
    rows = _run_on_ray(args, exp, root, point_argv)
  else:
    try:
      # One point (a cluster runs several side by side) leaves the table to --collect.
      rows = runner.run(exp, root, only=args.point or None, collect_results=not args.point)
    except runner.Preempted as e:
      print(f"preempted: {e}", file=sys.stderr)
      sys.exit(EXIT_PREEMPTED)  # what schedulers (and --ray) requeue
    if args.point:
      print(f"{args.point} finished -> {os.path.join(root, args.point)}")
      return
  print(f"{len(rows)} finished points -> {os.path.join(root, 'results.csv')}")


def _run_on_ray(args, exp, root: str, point_argv) -> list[dict]:
  """The points as Ray tasks, then the table; exit 1 naming the points that did not
  finish."""
  from experiments import ray_sweep  # pylint: disable=g-import-not-at-top
  try:
    ray_sweep.connect(args.ray)
    outcomes = ray_sweep.run(exp, root, point_argv, device=args.ray_device,
                             retries=args.ray_retries, only=args.point or None)
  except ValueError as e:
    sys.exit(f"error: {e}")
  rows = runner.collect(exp, root)
  bad = [o for o in outcomes if o.status in ("failed", "skipped")]
  if bad:
    print(f"{len(rows)} finished points -> {os.path.join(root, 'results.csv')}")
    for o in bad:
      print(f"{o.point}: {o.status}: {o.detail}")
    sys.exit(f"error: {len(bad)} of {len(outcomes)} points did not finish "
             f"(outcomes: {os.path.join(root, ray_sweep.REPORT)}; output: "
             f"{os.path.join(root, ray_sweep.LOGS)}/)")
  return rows


if __name__ == "__main__":
  main()
