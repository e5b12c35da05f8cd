"""Checkpoint/resume, SIGTERM and NaN behaviour of the training loop, through the CLM stage."""

import functools
import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import clm as clm_config
from research import objectives
from research.models import config as model_config
from research.models.decoder import Decoder
from research.stages import clm
from research.training import checkpoint, trainer, writers
from research.training.loop import NonFiniteLossError

N = 5


def tiny_config(**train):
  config = clm_config.get_config("tiny")
  config.data.update(corpus_size=600, tokenizer_train_docs=600, seq_len=64, batch_size=8)
  config.train.update({"steps": 2 * N, "log_every": 1, "eval_every": 0, "checkpoint_every": N,
                       "max_to_keep": 3, **train})
  config.optimizer.update(warmup_steps=2)
  config.sample.num_samples = 0
  return config


def per_step(workdir):
  return {step: (m["loss"], m["grad_norm"]) for step, m in writers.read_metrics(workdir).items()}


def sigterm_at(step_to_stop):
  def hook(step):
    if step == step_to_stop:
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  summary = clm.run(tiny_config(), workdir)
  return workdir, summary


def test_straight_run_logs_every_step_and_compiles_once(straight):
  workdir, summary = straight
  assert sorted(per_step(workdir)) == list(range(1, 2 * N + 1))
  assert summary["compilations"] == 1 and summary["step"] == 2 * N


def test_sigterm_saves_and_resumed_run_matches_exactly(tmp_path, straight):
  workdir = str(tmp_path)
  first = clm.run(tiny_config(), workdir, hooks=[sigterm_at(3)])
  assert first["preempted"] and first["step"] == 3
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == 3  # saved on SIGTERM, not at a checkpoint_every boundary
  ckpt.close()
  second = clm.run(tiny_config(), workdir)
  assert second["step"] == 2 * N and not second["preempted"]
  assert per_step(workdir) == per_step(straight[0])  # bit-for-bit the same losses
  assert second["eval"] == straight[1]["eval"]


def test_crash_then_resume_from_periodic_checkpoint_matches(tmp_path, straight):
  workdir = str(tmp_path)

  def crash(step):
    if step == N + 2:
      raise KeyboardInterrupt("simulated crash")

  with pytest.raises(KeyboardInterrupt):
    clm.run(tiny_config(), workdir, hooks=[crash])
  clm.run(tiny_config(), workdir)  # resumes from step N, replays N+1.. with the same data
  assert per_step(workdir) == per_step(straight[0])
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert steps == list(range(1, 2 * N + 1))  # the replayed steps logged once


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(checkpoint_every=1)
  config.optimizer.update(lr=1e9, warmup_steps=1, grad_clip_norm=0.0)  # diverges at once
  with pytest.raises(NonFiniteLossError) as info:
    clm.run(config, workdir)
  message = str(info.value)
  bad_step = int(message.split("at step ")[1].split(" ")[0])
  assert "loss=" in message and "param_norm=" in message
  assert f"last good checkpoint is step {bad_step - 1}" in message
  # The last checkpoint restores and is finite.
  model = Decoder(model_config.from_config(config.model))
  s = trainer.build(config, model, functools.partial(objectives.get("clm"), model=model,
                                                     config=config), evaluate=False)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == bad_step - 1
  state, meta = ckpt.restore(s.abstract_state, s.shardings)
  ckpt.close()
  assert int(state.step) == bad_step - 1 and meta["step"] == bad_step - 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
