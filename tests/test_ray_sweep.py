"""Sweeps on Ray (experiments/ray_sweep.py): a local Ray instance runs a `smoke`
sweep's points as tasks, in parallel, after what they need, one failing, one
preempted and resumed; and the resources each point asks for."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import pytest

from experiments import ray_sweep, runner
from experiments import run as run_cli

FIXTURE = "tests/fixtures/ray_sweep_experiment.py"


def _point(**mesh):
  c = ml_collections.ConfigDict({"mesh": {"data": -1, "fsdp": 1, "tensor": 1,
                                          "num_devices": -1, **mesh}})
  return runner.Point("p", c)


def test_a_point_asks_ray_for_the_devices_of_its_mesh():
  assert ray_sweep.task_options(_point(num_devices=4), "tpu", 4) == (
      {"resources": {"TPU": 4}, "num_cpus": 1}, {})
  assert ray_sweep.task_options(_point(), "gpu", 8) == ({"num_gpus": 8, "num_cpus": 1}, {})
  assert ray_sweep.task_options(_point(data=2, fsdp=2), "gpu", 8)[0]["num_gpus"] == 4
  # CPU meshes are simulated devices; the task holds at most a node's cores.
  options, env = ray_sweep.task_options(_point(num_devices=8), "cpu", 2)
  assert options == {"num_cpus": 2}
  assert "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]
  assert ray_sweep.task_options(_point(num_devices=1), "cpu", 2) == ({"num_cpus": 1}, {})
  assert ray_sweep.task_options(_point(), "cpu", 2) == ({"num_cpus": 2}, {})
  with pytest.raises(ValueError, match="'p'.* 16 TPU devices.*node .* has \\(8\\)"):
    ray_sweep.task_options(_point(num_devices=16), "tpu", 8)
  assert ray_sweep.device_kind({"CPU": 8, "TPU": 4}, "auto") == "tpu"
  assert ray_sweep.device_kind({"CPU": 8, "GPU": 1}, "auto") == "gpu"
  with pytest.raises(ValueError, match="no GPU resource"):
    ray_sweep.device_kind({"CPU": 8}, "gpu")


def test_a_ray_address_that_does_not_answer_is_one_line(capsys):
  start = time.time()
  with pytest.raises(SystemExit) as e:
    run_cli.main([FIXTURE, "--size=smoke", "--root=/tmp/unused", "--ray=127.0.0.1:1"])
  assert "no Ray cluster answers at 127.0.0.1:1" in str(e.value) and time.time() - start < 30
  with pytest.raises(SystemExit, match="give local, auto or HOST:PORT"):
    run_cli.main([FIXTURE, "--size=smoke", "--root=/tmp/unused", "--ray=nowhere"])
  with pytest.raises(SystemExit, match="run the driver on the cluster instead"):
    run_cli.main([FIXTURE, "--size=smoke", "--root=/tmp/unused", "--ray=ray://head:10001"])


def _processes():
  """(pid, argv) of this machine's processes."""
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        yield int(entry), f.read().decode(errors="replace").split("\0")
    except (ValueError, OSError):
      continue


def _preempt_when_checkpointed(root: str, point: str, done: list):
  """SIGTERMs the point's process once it has saved a checkpoint (mid-training)."""
  deadline = time.time() + 240
  while time.time() < deadline:
    ckpts = os.path.join(root, point, "checkpoints")
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      pids = [pid for pid, argv in _processes() if f"--point={point}" in argv]
      for pid in pids:
        os.kill(pid, signal.SIGTERM)
      done.append(len(pids))
      return
    time.sleep(0.1)


@pytest.mark.slow
def test_a_sweep_on_a_local_ray_instance(tmp_path):
  """~1-2 min: points in parallel, a dependency, a failure that skips only what needs
  it, and a preempted point retried from its checkpoint."""
  root = str(tmp_path / "sweep")
  killed: list = []
  killer = threading.Thread(target=_preempt_when_checkpointed, args=(root, "long", killed))
  killer.start()
  env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
  proc = subprocess.run([sys.executable, "-m", "experiments.run", FIXTURE, "--size=smoke",
                         f"--root={root}", "--ray=local"], capture_output=True, text=True,
                        env=env, timeout=600, check=False)
  killer.join()
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "error: 2 of 6 points did not finish" in proc.stderr
  with open(os.path.join(root, ray_sweep.REPORT), encoding="utf-8") as f:
    report = {o["point"]: o for o in json.load(f)}
  status = {name: o["status"] for name, o in report.items()}
  assert status == {"a": "finished", "b": "finished", "long": "finished", "c": "finished",
                    "bad": "failed", "after_bad": "skipped"}, report
  assert "no such file or directory" in report["bad"]["detail"]
  assert report["after_bad"]["detail"] == "needs 'bad', which failed"
  # The dependency: c started after a ended. And points ran side by side.
  assert report["c"]["started"] >= report["a"]["ended"]
  spans = sorted((o["started"], o["ended"]) for o in report.values() if o["ended"])
  assert any(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:])), spans
  # The preempted point: killed once, retried, resumed from its checkpoint.
  assert killed == [1] and report["long"]["attempts"] == 2
  with open(os.path.join(root, ray_sweep.LOGS, "long.log"), encoding="utf-8") as f:
    log = f.read()
  assert "resumed from" in log
  with open(os.path.join(root, "long", "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] == 60
  # The table has the finished points; a rerun submits nothing new.
  table = runner.read_csv(os.path.join(root, "results.csv"))
  assert [r["point"] for r in table] == ["a", "b", "long", "c"]
  assert float(table[3]["loss"]) < float(table[0]["loss"])  # c continued a's training
