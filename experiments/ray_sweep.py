"""Sweeps on a Ray cluster: every point a Ray task, started when the points it
needs have finished, retried from its checkpoint when preempted.

  python -m experiments.run EXP --ray=local          # a Ray instance on this machine
  python -m experiments.run EXP --ray=auto           # the running cluster (RAY_ADDRESS,
                                                     # `ray start`, or `ray job submit`)
  python -m experiments.run EXP --ray=HOST:PORT      # a cluster's head (its GCS port)

The driver runs where `root` is mounted (a node of the cluster, or through `ray
job submit`): it reads the points' summaries there. Joining a cluster, it ships
this checkout to the workers (Ray's `working_dir`, without what .gitignore
names), unless it runs as a Ray job that shipped it already.

Each task runs the point as its own process (`python -m experiments.run EXP
--point=NAME`, what `--list` prints), so a point's JAX runtime, device lock and
memory end with it and a crash takes only that point down. The task asks Ray for
the devices the point's mesh uses (`config.mesh`): TPU chips or GPUs on an
accelerator cluster, CPUs otherwise (a CPU mesh of N > 1 devices is N simulated
devices, `--xla_force_host_platform_device_count`). A point that needs more
devices than one node has is refused before anything starts: such a run is one
multi-process job (`research.main --distributed`), not one task.

The driver keeps going when a point fails: the points that need it are skipped,
the others run, and at the end the table and plots are built from the finished
points as `runner.collect` does without Ray. `root/ray_report.json` records
each point's outcome, attempts, node and time; each point's output goes to
`root/ray_logs/NAME.log`. `root` must be a path every node sees (a shared
filesystem), like the `--list` commands' root.

A preempted point (its process saved and exited on SIGTERM with exit 143, or was
killed: a lost node, or the OOM killer's SIGKILL) is retried up to `retries`
times; the retry resumes from the point's last checkpoint, as a rerun does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

from experiments import runner
from research.cli import EXIT_PREEMPTED  # the state is saved; the same command continues it

LOGS = "ray_logs"
REPORT = "ray_report.json"
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONNECT_TIMEOUT_S = 10


class Preempted(Exception):
  """The point's process stopped before the end but its checkpoint stands: retry it."""


class PointFailed(Exception):
  """The point's process failed on its own (config, data, a non-finite loss): not retried."""


@dataclasses.dataclass
class Outcome:
  point: str
  status: str            # finished | failed | skipped | done already
  detail: str = ""       # why it failed or was skipped
  attempts: int = 0
  seconds: float = 0.0   # from submission to the end, queueing and retries included
  node: str = ""         # where the last attempt ran, and when (epoch seconds)
  started: float = 0.0
  ended: float = 0.0


def connect(address: str) -> None:
  """Joins (or for 'local', starts) a Ray cluster; a cluster that does not answer is
  one ValueError line, not Ray's minute of retries."""
  import ray  # pylint: disable=g-import-not-at-top
  quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
  if address == "local":  # a new instance, even where RAY_ADDRESS names another
    ray.init(address="local", **quiet)
    return
  if address.startswith("ray://"):
    raise ValueError(f"--ray={address}: a Ray client reads and writes the points' results "
                     "on this machine; run the driver on the cluster instead (`ray job "
                     "submit --working-dir=. -- python -m experiments.run ... --ray=auto`)")
  if address != "auto":
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"--ray={address!r}: give local, auto or HOST:PORT")
    try:
      socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
      raise ValueError(f"--ray={address}: no Ray cluster answers at {host}:{port} "
                       f"({e.strerror or e})") from None
  if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # not a job with its own code
    quiet["runtime_env"] = {"working_dir": CODE_DIR, "excludes": [".git"]}
  try:
    ray.init(address=address, **quiet)
  except ConnectionError as e:
    raise ValueError(f"--ray={address}: {str(e).splitlines()[0]} Start one with `ray start "
                     "--head`, or use --ray=local for one on this machine") from None


def device_kind(cluster: dict, asked: str) -> str:
  """'tpu', 'gpu' or 'cpu': what the cluster's resources offer, unless `asked`."""
  if asked != "auto":
    if asked != "cpu" and not cluster.get(asked.upper()):
      raise ValueError(f"--ray_device={asked}: the Ray cluster has no {asked.upper()} "
                       f"resource ({sorted(k for k in cluster if not k.startswith('node:'))})")
    return asked
  return "tpu" if cluster.get("TPU") else "gpu" if cluster.get("GPU") else "cpu"


def point_devices(mesh_cfg) -> int | None:
  """How many devices a point's mesh uses: `num_devices`, else the product of its
  axes; None when an axis is -1 and no count is set (all the process sees)."""
  n = int(mesh_cfg.get("num_devices", -1))
  if n > 0:
    return n
  sizes = [int(mesh_cfg.get(axis, 1)) for axis in ("data", "fsdp", "tensor")]
  return None if -1 in sizes else math.prod(sizes)


def task_options(point: runner.Point, kind: str, per_node: int) -> tuple[dict, dict]:
  """Ray's resource options for the point's task, and environment variables for its
  process. A mesh without a device count takes a whole node."""
  n = point_devices(point.config.mesh)
  if kind == "cpu":
    # CPU devices are simulated (a mesh of N > 1 needs N host devices); the task
    # holds that many cores, at most a node's.
    env = {"XLA_FLAGS": " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={n}"]))}
    return {"num_cpus": min(n or per_node, per_node)}, env if n and n > 1 else {}
  n = n or per_node
  if n > per_node:
    raise ValueError(f"point {point.name!r}: config.mesh uses {n} {kind.upper()} devices, "
                     f"more than a node of this cluster has ({per_node}); run it as one "
                     "multi-process job (research.main --distributed)")
  if kind == "tpu":
    return {"resources": {"TPU": n}, "num_cpus": 1}, {}
  return {"num_gpus": n, "num_cpus": 1}, {}


def attempt(code_dir: str, argv: list[str], log_path: str, env: dict) -> dict:
  """One attempt at a point, in a Ray worker: its process, output appended to the log.
  Returns where and when it ran; raises Preempted (retried) or PointFailed."""
  import ray  # pylint: disable=g-import-not-at-top
  # The driver's checkout on its own node, else the shipped working dir (the cwd).
  cwd = code_dir if os.path.isdir(os.path.join(code_dir, "experiments")) else os.getcwd()
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  node, started = ray.util.get_node_ip_address(), time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"=== attempt on {node} at "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    log.flush()
    rc = subprocess.run([sys.executable, *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                        env={**os.environ, **env}, check=False).returncode
  if rc == 0:
    return {"node": node, "started": started, "ended": time.time()}
  if rc in (EXIT_PREEMPTED, -signal.SIGTERM, -signal.SIGKILL):
    raise Preempted(f"stopped with exit {rc}")
  raise PointFailed(f"exit {rc}: {_last_line(log_path)}")


def _last_line(path: str) -> str:
  """The error a failed point's process ended with."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [l.strip() for l in f if l.strip()]
  return lines[-1] if lines else "(no output)"


def _log_size(path: str) -> int:
  return os.path.getsize(path) if os.path.exists(path) else 0


def _attempts(path: str, since: int) -> int:
  """Attempts logged after byte `since` (the log's size at submission)."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    f.seek(since)
    return sum(l.startswith(b"=== attempt") for l in f)


def run(experiment: runner.Experiment, root: str, point_argv, *, device: str = "auto",
        retries: int = 3, only: str | None = None) -> list[Outcome]:
  """Runs the experiment's points (or only `only`) as Ray tasks on the connected
  cluster; `point_argv(name)` is the command line of one point (without the
  interpreter). Returns every point's outcome; `root/ray_report.json` holds them."""
  import ray  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  kind = device_kind(ray.cluster_resources(), device)
  resource = {"tpu": "TPU", "gpu": "GPU", "cpu": "CPU"}[kind]
  per_node = int(max((n["Resources"].get(resource, 0) for n in ray.nodes() if n["Alive"]),
                     default=0))
  points = [p for p in experiment.points if only is None or p.name == only]
  options = {p.name: task_options(p, kind, per_node) for p in points}  # refuse before starting
  remote = ray.remote(attempt)
  outcomes: dict[str, Outcome] = {}
  waiting = {p.name: p for p in points}
  running: dict = {}  # object ref -> (point name, submitted at, the log's size then)

  def done(name: str) -> bool:
    if name in outcomes:
      return outcomes[name].status in ("finished", "done already")
    if any(name == n for n, _, _ in running.values()):
      return False
    return runner.finished(runner.workdir(root, experiment.point(name))) is not None

  while waiting or running:
    for name, point in list(waiting.items()):
      blocked = next((n for n in point.needs
                      if n in outcomes and outcomes[n].status in ("failed", "skipped")), None)
      if blocked:
        why = "failed" if outcomes[blocked].status == "failed" else "was skipped"
        outcomes[name] = Outcome(name, "skipped", f"needs {blocked!r}, which {why}")
      elif runner.finished(runner.workdir(root, point)) is not None:
        outcomes[name] = Outcome(name, "done already")
      elif all(done(n) for n in point.needs):
        resources, env = options[name]
        log = os.path.join(root, LOGS, f"{name}.log")
        ref = remote.options(max_retries=retries, retry_exceptions=[Preempted],
                             name=f"{experiment.name}/{name}", **resources).remote(
                                 CODE_DIR, point_argv(name), log, env)
        running[ref] = (name, time.time(), _log_size(log))
        print(f"== {experiment.name}/{name}: submitted ({resources})", flush=True)
      else:
        continue
      del waiting[name]
    if not running:
      missing = {n: [m for m in p.needs if not done(m)] for n, p in waiting.items()}
      for name, needs in missing.items():  # needs outside `only` that have not finished
        outcomes[name] = Outcome(name, "skipped", f"needs {needs}, which have not finished")
      break
    [ref], _ = ray.wait(list(running), num_returns=1)
    name, start, since = running.pop(ref)
    log = os.path.join(root, LOGS, f"{name}.log")
    outcome = Outcome(name, "finished", attempts=_attempts(log, since),
                      seconds=time.time() - start)
    try:
      vars(outcome).update(ray.get(ref))
    except ray.exceptions.RayTaskError as e:
      cause = e.cause if isinstance(e.cause, (Preempted, PointFailed)) else e
      outcome.status, outcome.detail = "failed", str(cause).splitlines()[0][:500]
      if isinstance(cause, Preempted):
        outcome.detail = f"preempted on every attempt ({cause})"
    except ray.exceptions.RayError as e:  # the worker or its node died past the retries
      outcome.status, outcome.detail = "failed", f"{type(e).__name__}: {str(e).splitlines()[0]}"
    outcomes[name] = outcome
    print(f"== {experiment.name}/{name}: {outcome.status} after {outcome.seconds:.0f} s"
          + (f", {outcome.attempts} attempts" if outcome.attempts > 1 else "")
          + (f": {outcome.detail}" if outcome.detail else ""), flush=True)
  result = [outcomes[p.name] for p in points if p.name in outcomes]
  with open(os.path.join(root, REPORT), "w", encoding="utf-8") as f:
    json.dump([dataclasses.asdict(o) for o in result], f, indent=1)
  return result
