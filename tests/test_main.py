"""The command line, run as a user would (subprocesses)."""

import glob
import json
import os
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from tests.devices import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, devices=1, timeout=300):
  env = {**os.environ, "XLA_FLAGS": xla_flags(devices), "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "research.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def read_events(path):
  """Scalar tags from a TensorBoard event file (TFRecord framing, no TensorFlow)."""
  tags = set()
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    tags.update(v.tag for v in event.summary.value)
    offset += 12 + length + 4
  return tags


def test_unknown_config_key_lists_valid_keys():
  out = run_main("--config=configs/clm.py:tiny", "--config.optimizer.lrr=1")
  assert out.returncode != 0
  assert "config.optimizer has no key 'lrr'" in out.stderr
  assert "valid keys: b1, b2, eps, grad_accum_steps, grad_clip_norm, lr" in out.stderr
  out = run_main("--config=configs/clm.py:tiny", "--config.nope.x=1")
  assert "config has no key 'nope'" in out.stderr and "optimizer" in out.stderr
  assert "Traceback" not in out.stderr


def test_bad_value_type_is_reported_without_traceback():
  out = run_main("--config=configs/clm.py:tiny", "--config.train.steps=many")
  assert out.returncode != 0 and "config.train.steps" in out.stderr
  assert "Traceback" not in out.stderr


def test_dry_run_reports_7b_sharded_memory_on_8_devices():
  out = run_main("--config=configs/clm.py:7b", "--config.mesh.data=1", "--config.mesh.fsdp=8",
                 "--dry_run", devices=8)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout)
  assert report["parameters"] == 6_738_415_616 and report["devices"] == 8
  full = 6_738_415_616 * 4  # float32 parameters
  # Everything but the (replicated) norm scales is split 8 ways.
  norms = (2 * 32 + 1) * 4096 * 4
  assert report["param_bytes_per_device"] == (full - norms) // 8 + norms
  # AdamW's two moments are sharded like the parameters; the rest is step counters.
  extra = report["optimizer_bytes_per_device"] - 2 * report["param_bytes_per_device"]
  assert 0 <= extra <= 64
  # The step compiled on abstract inputs: it takes the state and writes the new one over it.
  compiled = report["compiled"]
  assert compiled["backend"] == "cpu x8"
  assert abs(compiled["arguments_gib"] - report["state_gib_per_device"]) < 0.01
  assert abs(compiled["donated_gib"] - report["state_gib_per_device"]) < 0.01
  assert compiled["temporaries_gib"] > report["gradient_bytes_per_device"] / 2**30


def test_dry_run_builds_the_architecture_of_init_from(four_step_clm):
  """A stage started from a run builds that run's architecture; so does its dry
  run (here the 7B preset's config, continuing a tiny run)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from research import runs  # pylint: disable=g-import-not-at-top
  from research.models import config as model_config  # pylint: disable=g-import-not-at-top
  from research.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  out = run_main("--config=configs/clm.py:7b", f"--config.init_from={four_step_clm}",
                 "--dry_run", "--nodry_run_compile")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout)
  model = Decoder(model_config.from_config(runs.load_config(four_step_clm).model))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.ones((1, 4), np.int32)))
  assert report["parameters"] == sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)))
  assert "compiled" not in report


def test_tiny_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  out = run_main("--config=configs/clm.py:tiny", f"--workdir={workdir}", "--config.train.steps=40")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["eval"]["nll"] < summary["unigram_entropy"] - 1.0
  assert summary["compilations"] == 1
  assert os.path.getsize(os.path.join(workdir, "samples.txt")) > 0
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  events = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert events
  tags = set().union(*(read_events(e) for e in events))
  assert {"train/loss", "train/tokens_per_sec", "eval/nll", "train/learning_rate"} <= tags
  # The sampling CLI on the run just written.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-m", "research.generate", f"--workdir={workdir}",
                        "--prompt=The movie", "--num_samples=2", "--max_new_tokens=8"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("--- 'The movie'") == 2 and "The movie" in out.stdout
