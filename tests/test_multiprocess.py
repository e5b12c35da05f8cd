"""Two real processes on JAX's distributed runtime (a coordinator on 127.0.0.1, gloo
collectives, 4 simulated CPU devices each, one 8-device mesh), as on a 2-host
slice, against one process of 8 devices: the same numbers.

What these caught: `training/memory.py` read the memory of a device another
process owns; the held-out batches, each process reading a stride of the
documents, came out one fewer on one process, which then left the evaluation
while the other waited in a collective (a hang, then an abort); each process's
batches were its own stride, so no metric matched the one-process run and a
resume restored process 0's iterator state on process 1; the DPO reference and
the RL scores were read back whole, which a process cannot do with another's rows.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "PYTHONPATH": ROOT}
  env.pop("PYTEST_XDIST_WORKER", None)
  return env


def _summary(stdout: str) -> dict:
  """The summary research.main prints (gloo prints its connections first)."""
  start = 0 if stdout.startswith("{") else stdout.index("\n{") + 1
  return json.loads(stdout[start:].split("\n---")[0])


def _command(config, workdir, *flags) -> list[str]:
  return [sys.executable, "-m", "research.main", f"--config={config}", f"--workdir={workdir}",
          "--config.mesh.num_devices=-1", *flags]


def one_process(config, workdir, *flags) -> tuple[dict, str]:
  out = subprocess.run(_command(config, workdir, *flags), cwd=ROOT, env=_env(8),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return _summary(out.stdout), out.stderr


def two_processes(config, workdir, *flags) -> dict:
  port = _free_port()
  procs = [subprocess.Popen(
      _command(config, workdir, *flags, "--distributed", f"--coordinator=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  first, second = (_summary(out) for out, _ in outs)
  assert _untimed(first) == _untimed(second)  # one global computation, the same numbers
  return first


def _untimed(tree):
  """A summary without its timings (each process measures its own)."""
  if isinstance(tree, dict):
    return {k: _untimed(v) for k, v in tree.items()
            if not ("per_sec" in k or k.startswith("time") or k.endswith("_s"))}
  return tree


def _close(a: dict, b: dict, keys, rtol=1e-5):
  for key in keys:
    np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=key)


@pytest.fixture(scope="module")
def clm_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  two = two_processes("configs/clm.py:smoke", root / "two")
  one, _ = one_process("configs/clm.py:smoke", root / "one")
  return root, two, one


def test_two_processes_train_the_one_process_run(clm_runs):
  root, two, one = clm_runs
  assert two["step"] == one["step"] == 20 and two["compilations"] == 1
  _close(two["train"], one["train"], ("loss", "grad_norm"))
  _close(two["eval"], one["eval"], ("loss", "accuracy"))
  assert sorted(os.listdir(root / "two" / "checkpoints")) == ["20"]  # both joined one save
  lines = (root / "two" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == len(set(lines))  # written once, by process 0


@pytest.mark.slow
def test_a_checkpoint_resumes_exactly_on_another_process_count(clm_runs):
  """Every process reads the same stream, so the checkpointed data state is the
  one-process run's: resumed on one process, both runs continue alike; and a
  one-process checkpoint continues alike on two."""
  root, _, _ = clm_runs
  shutil.copytree(root / "one", root / "one_to_two")
  resumed, log = one_process("configs/clm.py:smoke", root / "two", "--config.train.steps=30")
  assert "resumed from" in log and "at step 20" in log
  continued, _ = one_process("configs/clm.py:smoke", root / "one", "--config.train.steps=30")
  _close(resumed["train"], continued["train"], ("loss", "grad_norm"))
  _close(resumed["eval"], continued["eval"], ("loss",))
  on_two = two_processes("configs/clm.py:smoke", root / "one_to_two", "--config.train.steps=30")
  _close(on_two["train"], continued["train"], ("loss", "grad_norm"))
  _close(on_two["eval"], continued["eval"], ("loss",))


@pytest.mark.slow
def test_sft_dpo_and_grpo_on_two_processes_match_one(clm_runs):
  root, _, _ = clm_runs
  sft = ("configs/sft.py:smoke", f"--config.init_from={root / 'one'}")
  two, one = two_processes(sft[0], root / "sft2", *sft[1:]), one_process(sft[0], root / "sft", *sft[1:])[0]
  _close(two["train"], one["train"], ("loss",))
  _close(two["eval"], one["eval"], ("loss", "accuracy"))
  dpo = ("configs/dpo.py:smoke", f"--config.init_from={root / 'sft'}")
  two, one = two_processes(dpo[0], root / "dpo2", *dpo[1:]), one_process(dpo[0], root / "dpo", *dpo[1:])[0]
  _close(two["train"], one["train"], ("loss", "rewards/margins"), rtol=1e-4)
  _close(two["eval"], one["eval"], ("loss", "rewards/accuracies"), rtol=1e-4)
  grpo = ("configs/grpo.py:smoke", f"--config.init_from={root / 'sft'}",
          "--config.reward.source=ground_truth")
  two = two_processes(grpo[0], root / "grpo2", *grpo[1:])
  one = one_process(grpo[0], root / "grpo", *grpo[1:])[0]
  _close(two["last"], one["last"], ("loss", "objective/kl", "objective/raw_scores",
                                    "response/length"), rtol=1e-4)
  assert two["policy"]["samples"] == one["policy"]["samples"]


def test_half_given_coordinator_flags_are_one_clear_line(tmp_path):
  out = subprocess.run(_command("configs/clm.py:smoke", tmp_path / "x", "--distributed",
                                "--coordinator=127.0.0.1:1"),
                       cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "give all of --coordinator, --num_processes and --process_id" in out.stderr
  assert "Traceback" not in out.stderr


def test_processes_given_different_configs_are_refused_on_every_process(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      _command("configs/clm.py:smoke", tmp_path / "run", f"--config.train.steps={20 + i}",
               "--distributed", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}"),
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err[-2000:]
    assert "processes [1] were given another config or --workdir than process 0" in err
  assert not (tmp_path / "run").exists()  # refused before anything is written


def test_an_unreachable_coordinator_is_one_line_within_the_timeout(tmp_path):
  port = _free_port()  # nobody listens there
  out = subprocess.run(_command("configs/clm.py:smoke", tmp_path / "x", "--distributed",
                                f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                                "--process_id=1", "--coordinator_timeout_s=5"),
                       cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"could not join the coordinator 127.0.0.1:{port}" in out.stderr


def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
  from research import cli  # pylint: disable=g-import-not-at-top
  workdir, port = tmp_path / "run", _free_port()
  procs = [subprocess.Popen(
      _command("configs/clm.py:smoke", workdir, "--config.train.steps=2000",
               "--config.train.log_every=1", "--distributed", f"--coordinator=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  metrics = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while not (metrics.exists() and '"train"' in metrics.read_text()):
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)  # the other process is not told
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == cli.EXIT_PREEMPTED, err[-3000:]
  saved = os.listdir(workdir / "checkpoints")
  assert len(saved) == 1 and 0 < int(saved[0]) < 2000


def _convert_on_two_processes(*flags, returncode: int = 0) -> list[str]:
  """research.convert on two processes; -> their stderr."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "research.convert", *flags, "--distributed",
       f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = []
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == returncode, err[-3000:]
    errs.append(err)
  return errs


def test_hf_import_and_export_on_two_processes(tmp_path):
  """A scanned import over fsdp x tensor on two processes (each reads its own blocks),
  exported again on two processes (each tensor gathered): the checkpoint's tensors."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  fixture = os.path.join(ROOT, "tests", "fixtures", "hf", "qwen3")
  workdir, out = tmp_path / "imported", tmp_path / "exported"
  _convert_on_two_processes(f"--from_hf={fixture}", f"--workdir={workdir}", "--scan_layers",
                            "--fsdp=2", "--tensor=2")
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "tokenizer"]
  # Importing over it again is refused on both processes, and nothing waits.
  for err in _convert_on_two_processes(f"--from_hf={fixture}", f"--workdir={workdir}",
                                       returncode=2):
    assert "is not empty" in err
  _convert_on_two_processes(f"--to_hf={out}", f"--workdir={workdir}")
  want = load_file(os.path.join(fixture, "model.safetensors"))
  got = load_file(os.path.join(out, "model.safetensors"))
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # process 0 alone wrote it
