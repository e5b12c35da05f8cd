"""A workdir never loses a run: reruns under another config refuse before writing,
bad values are named up front, a corrupt checkpoint is stepped past and kept,
SIGTERM exits 143 after saving, metrics.jsonl holds each step once."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from research import validate
from research.stages import clm
from research.training import writers
from tests.test_loop import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(**train):
  """The config of conftest's `finished` run (4 steps, checkpoints at 2 and 4)."""
  return tiny_config(**{"steps": 4, "checkpoint_every": 2, **train})


def steps_logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f if '"train"' in line]


def read(workdir, name):
  with open(os.path.join(workdir, name), "rb") as f:
    return f.read()


def test_a_rerun_under_another_config_refuses_before_writing(finished):
  before = {name: read(finished, name) for name in ("config.json", "tokenizer.model")}
  changed = config()
  changed.optimizer.lr = 0.01
  changed.data.seq_len = 32
  with pytest.raises(validate.ConfigError) as info:
    clm.run(changed, finished)
  message = str(info.value)
  assert "optimizer.lr: 0.003 -> 0.01" in message and "data.seq_len: 64 -> 32" in message
  assert "allow_config_change" in message and "train.steps" not in message
  other_stage = config()
  other_stage.model.num_layers = 3
  with pytest.raises(validate.ConfigError, match="model.num_layers: 2 -> 3"):
    clm.run(other_stage, finished)
  assert {name: read(finished, name) for name in before} == before  # nothing rewritten


def test_training_longer_resumes_and_a_changed_config_is_recorded_when_allowed(finished):
  longer = clm.run(config(steps=6), finished)  # train.steps may grow: the same run
  assert longer["step"] == 6
  changed = config(steps=8, allow_config_change=True)
  changed.optimizer.lr = 0.001
  assert clm.run(changed, finished)["step"] == 8
  with open(os.path.join(finished, "config_history.jsonl"), encoding="utf-8") as f:
    history = [json.loads(line) for line in f]
  assert len(history) == 1 and history[0]["step"] == 6
  assert history[0]["changes"] == {"optimizer.lr": [0.003, 0.001]}
  assert steps_logged(finished) == list(range(1, 9))


def test_a_corrupt_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(finished):
  ckpts = os.path.join(finished, "checkpoints")
  assert sorted(os.listdir(ckpts)) == ["2", "4"]
  for path in glob.glob(os.path.join(ckpts, "4", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"\0garbage")
  s = clm.run(config(), finished)  # resumes from step 2 and trains 3..4 again
  assert s["step"] == 4 and not s["preempted"]
  assert os.path.isdir(os.path.join(finished, "checkpoints_corrupt", "4"))  # kept, not deleted
  assert sorted(os.listdir(ckpts)) == ["2", "4"]
  assert steps_logged(finished) == [1, 2, 3, 4]  # the replayed steps once each


@pytest.mark.parametrize("key,value,fragment", [
    ("train.max_to_keep", 0, "config.train.max_to_keep=0 must be an integer >= 1"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0"),
    ("train.log_every", 0, "config.train.log_every=0"),
    ("train.eval_batches", 0, "config.train.eval_batches=0"),
    ("train.steps", -1, "config.train.steps=-1"),
    ("optimizer.grad_accum_steps", 0, "config.optimizer.grad_accum_steps=0"),
    ("optimizer.b1", 1.5, "config.optimizer.b1=1.5 must be in [0, 1)"),
    ("optimizer.b2", 1.0, "config.optimizer.b2=1.0 must be in [0, 1)"),
    ("optimizer.eps", 0.0, "config.optimizer.eps=0.0 must be a number > 0"),
    ("optimizer.lr", -1e-3, "config.optimizer.lr=-0.001"),
    ("optimizer.min_lr_ratio", 2.0, "config.optimizer.min_lr_ratio=2.0 must be in [0, 1]"),
    ("optimizer.warmup_steps", -1, "config.optimizer.warmup_steps=-1"),
    ("data.seq_len", 0, "config.data.seq_len=0"),
    ("data.batch_size", 0, "config.data.batch_size=0"),
    ("data.holdout_every", 0, "config.data.holdout_every=0"),
    ("data.holdout_every", 1, "config.data.holdout_every=1"),
    ("data.corpus_size", 0, "config.data.corpus_size=0"),
    ("mesh.data", 0, "config.mesh.data=0 must be -1"),
    ("mesh.tensor", 3, "config.mesh.tensor=3 must divide config.model.num_heads=4"),
    ("mesh.num_devices", 0, "config.mesh.num_devices=0"),
])
def test_bad_values_are_named_before_anything_is_written(tmp_path, key, value, fragment):
  c = config()
  section, name = key.split(".")
  c[section][name] = value
  workdir = str(tmp_path / "never")
  with pytest.raises(validate.ConfigError) as info:
    clm.run(c, workdir)
  assert fragment in str(info.value)
  assert not os.path.exists(workdir)


def run_main(*args, **kw):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, "-m", "research.main", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_reports_a_config_error_in_one_line_with_exit_code_2(tmp_path):
  out, err = run_main("--config=configs/clm.py:smoke", f"--workdir={tmp_path / 'w'}",
                      "--config.train.max_to_keep=0").communicate(timeout=120)
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("WARNING", "I0", "W0"))]
  assert lines == ["error: config.train.max_to_keep=0 must be an integer >= 1 (0 would delete "
                   "every checkpoint)"], err[-2000:]


def test_cli_sigterm_saves_and_exits_143(tmp_path):
  workdir = tmp_path / "w"
  proc = run_main("--config=configs/clm.py:smoke", f"--workdir={workdir}",
                  "--config.train.steps=100000", "--config.train.log_every=1",
                  "--config.train.checkpoint_every=100000")
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 143, err[-2000:]
  saved = [int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()]
  assert len(saved) == 1 and saved[0] >= 1
  assert max(writers.read_metrics(str(workdir))) == saved[0]


@pytest.mark.parametrize("upstream,policy,fragment", [
    ("reward", None, "is a reward-model run"),
    ("rlhf", {"subtree": "policy", "run": None}, "stores its policy under params['policy']"),
    ("best_of_n", {"subtree": None, "run": "runs/bon/round_2"},
     "whose policy is the run 'runs/bon/round_2'"),
])
def test_init_from_of_the_wrong_kind_is_named_before_anything_is_written(
    tmp_path, upstream, policy, fragment):
  from configs import sft as sft_config  # pylint: disable=g-import-not-at-top
  from research import runs  # pylint: disable=g-import-not-at-top
  from research.stages import sft  # pylint: disable=g-import-not-at-top
  source = tmp_path / "source"
  c = sft_config.get_config("smoke")
  with c.unlocked():
    c.stage = upstream
  runs.resolve(c)
  runs.save_config(c, str(source))
  if policy:
    runs.write_json(str(source), runs.POLICY_FILE, policy)
  c = sft_config.get_config("smoke")
  c.init_from = str(source)
  with pytest.raises(validate.ConfigError, match="config.init_from=") as info:
    sft.run(c, str(tmp_path / "never"))
  assert fragment in str(info.value)
  assert not os.path.exists(tmp_path / "never")
