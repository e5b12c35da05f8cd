"""No rerun can leave a run that does not load: `allow_config_change` continues a run
only under changes it can resume (learning rate, schedule, data), a rerun with
another stage or architecture is refused with every file untouched, a finished run
rerun reports what it ended with, and every training stage resumes exactly after a
pre-emption (SFT, reward, best-of-n; preferences reruns to the same file)."""

import json
import os

import pytest

from configs import best_of_n as bon_config
from configs import preferences as preferences_config
from configs import reward as reward_config
from configs import sft as sft_config
from research import runs, validate
from research.models import config as model_config
from research.models.decoder import Decoder
from research.stages import best_of_n, clm, preferences, reward, sft
from research.training import partitioning, writers
from tests.test_loop import per_step, sigterm_at, tiny_config


def config(**train):
  """The config of conftest's `finished` run (4 steps, checkpoints at 2 and 4)."""
  return tiny_config(**{"steps": 4, "checkpoint_every": 2, **train})


def snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def loads(workdir):
  """The run's own config rebuilds its model and restores its parameters."""
  c = runs.load_config(workdir)
  mesh, rules = partitioning.mesh_and_rules(c)
  return runs.load_params(workdir, Decoder(model_config.from_config(c.model)), mesh, rules)


@pytest.mark.parametrize("key,value,why", [
    ("model.d_model", 96, "model.d_model: 64 -> 96"),
    ("data.tokenizer_byte_fallback", True, "is the tokenizer"),
    ("optimizer.grad_clip_norm", 0.0, "whether gradients are clipped"),
])
def test_allow_config_change_refuses_what_cannot_resume(finished, key, value, why):
  before = snapshot(finished)
  changed = config(allow_config_change=True)
  section, name = key.split(".")
  changed[section][name] = value
  with pytest.raises(validate.ConfigError) as info:
    clm.run(changed, finished)
  message = str(info.value)
  assert why in message and "which it cannot continue under" in message
  assert f"--config.init_from={finished}" in message  # the way out: a new workdir from it
  assert snapshot(finished) == before  # config.json, history, checkpoints: untouched
  loads(finished)


def test_another_stage_is_refused_first_and_the_run_is_untouched(finished):
  before = snapshot(finished)
  c = sft_config.get_config("smoke")
  c.init_from = finished
  c.train.allow_config_change = True
  with pytest.raises(validate.ConfigError) as info:
    sft.run(c, finished)
  assert str(info.value).startswith(f"stage: {finished} holds a clm run and "
                                    f"config.stage='sft'; each stage writes its own workdir: "
                                    f"--workdir=runs/sft --config.init_from={finished}")
  assert snapshot(finished) == before
  loads(finished)


def test_allowed_changes_continue_the_run_on_other_data(finished, tmp_path):
  docs = tmp_path / "docs.txt"
  docs.write_text("".join(f"the film number {i} was calm and slow " * 20 + "\n"
                          for i in range(200)))
  changed = config(steps=6, allow_config_change=True)
  changed.data.source = str(docs)
  changed.optimizer.lr = 1e-3
  s = clm.run(changed, finished)
  assert s["step"] == 6 and sorted(per_step(finished)) == list(range(1, 7))
  with open(os.path.join(finished, runs.HISTORY_FILE), encoding="utf-8") as f:
    (entry,) = [json.loads(line) for line in f]
  assert entry["step"] == 4 and set(entry["changes"]) == {"data.source", "optimizer.lr"}
  loads(finished)


def test_rerunning_a_finished_run_reports_it_and_logs_nothing_twice(finished):
  with open(os.path.join(finished, "summary.json"), encoding="utf-8") as f:
    first = json.load(f)
  lines = open(os.path.join(finished, "metrics.jsonl"), encoding="utf-8").read()
  again = clm.run(config(), finished)
  assert again["train"] == first["train"] and again["train"]  # was {} on a rerun
  assert again["eval"] == first["eval"] and again["step"] == 4
  assert open(os.path.join(finished, "metrics.jsonl"), encoding="utf-8").read() == lines
  assert sorted(writers.read_metrics(finished, "eval")) == [4]  # its final evaluation, once


# --- every training stage resumes exactly -------------------------------------------

def resumes_exactly(run_fn, make_config, tmp_path, stop_at: int, metrics_dir=lambda w: w):
  """Straight vs SIGTERM at `stop_at` then the same command again: the same losses."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run_fn(make_config(), straight)
  first = run_fn(make_config(), resumed, hooks=[sigterm_at(stop_at)])
  assert first["preempted"]
  run_fn(make_config(), resumed)
  assert per_step(metrics_dir(resumed)) == per_step(metrics_dir(straight))
  return straight, resumed


def small_sft(init_from):
  c = sft_config.get_config("smoke")
  c.init_from = init_from
  c.mesh.num_devices = 1
  c.data.update(corpus_size=300, seq_len=128, batch_size=4)
  c.train.update(steps=6, checkpoint_every=3, log_every=1, eval_every=0)
  c.optimizer.warmup_steps = 2
  c.generate.num_examples = 0
  return c


def test_sft_resumes_exactly(tiny_base, tmp_path):
  resumes_exactly(sft.run, lambda: small_sft(tiny_base), tmp_path, stop_at=2)


def test_reward_resumes_exactly(tiny_sft, tmp_path):
  def make():
    c = reward_config.get_config("smoke")
    c.init_from = tiny_sft
    c.mesh.num_devices = 1
    c.data.update(corpus_size=200, seq_len=256, batch_size=4)
    c.train.update(steps=4, checkpoint_every=2, log_every=1, eval_every=0)
    c.optimizer.warmup_steps = 1
    return c
  straight, resumed = resumes_exactly(reward.run, make, tmp_path, stop_at=3)
  with open(os.path.join(straight, "reward_normalization.json"), encoding="utf-8") as a, \
      open(os.path.join(resumed, "reward_normalization.json"), encoding="utf-8") as b:
    assert json.load(a) == json.load(b)


def small_bon(init_from):
  c = bon_config.get_config("smoke")
  c.init_from = init_from
  c.mesh.num_devices = 1
  c.reward.source = "ground_truth"
  c.best_of_n.update(n=2, rounds=2, prompts_per_round=8, max_new_tokens=16, sample_batch=16)
  c.data.update(corpus_size=200, seq_len=128, batch_size=4)
  c.train.update(steps=3, checkpoint_every=3, log_every=1)
  c.optimizer.warmup_steps = 1
  c.evaluate.update(num_prompts=4, max_new_tokens=16)
  return c


@pytest.mark.slow  # ~30 s: two rounds of sampling and training, three times
def test_best_of_n_resumes_exactly_inside_its_second_round(tiny_sft, tmp_path):
  calls = []

  def sigterm_in_round_2(step):  # the hook sees each round's own steps
    calls.append(step)
    if len(calls) == 5:
      sigterm_at(step)(step)

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  done = best_of_n.run(small_bon(tiny_sft), straight)
  assert best_of_n.run(small_bon(tiny_sft), resumed, hooks=[sigterm_in_round_2]) == {
      "preempted": True, "round": 2}
  again = best_of_n.run(small_bon(tiny_sft), resumed)
  for r in (1, 2):
    assert per_step(os.path.join(resumed, f"round_{r}")) == \
        per_step(os.path.join(straight, f"round_{r}"))
  assert again["rounds"] == done["rounds"] and again["final"].endswith("round_2")


def test_preferences_rerun_writes_the_same_set(tiny_sft, tmp_path):
  c = preferences_config.get_config("smoke")
  c.init_from = tiny_sft
  c.mesh.num_devices = 1
  c.preferences.update(num_prompts=8, max_new_tokens=16)
  workdir = str(tmp_path / "prefs")
  first = preferences.run(c, workdir)
  written = snapshot(workdir)["preferences.jsonl"]
  assert preferences.run(c, workdir) == first  # nothing to resume: the same set, again
  assert snapshot(workdir)["preferences.jsonl"] == written
