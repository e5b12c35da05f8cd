"""`--dry_run`'s compiled memory analysis (research/stages/dry_run.py): the stage's
real train step, compiled on abstract inputs, nothing allocated."""

import importlib

import pytest

from research.stages import dry_run


def _config(stage: str, devices: int = 1, **model):
  config = importlib.import_module(f"configs.{stage}").get_config("tiny")
  config.mesh.update(data=1, fsdp=devices, tensor=1, num_devices=devices)
  config.model.update(model)
  return config


def _report(config):
  module = dry_run.module_for(config)
  return dry_run.describe(config, module), dry_run.compiled(config, module)


def test_compiled_step_holds_the_state_and_donates_it():
  estimate, compiled = _report(_config("clm", vocab_size=8192))
  state = estimate["state_gib_per_device"]
  assert compiled["backend"].endswith("x1")
  # Arguments: the state (and a few KiB of batch); the new state is written over it.
  assert compiled["arguments_gib"] == pytest.approx(state, abs=0.002)
  assert compiled["donated_gib"] == pytest.approx(state, abs=0.002)
  assert compiled["peak_gib"] == pytest.approx(
      compiled["arguments_gib"] + compiled["outputs_gib"] - compiled["donated_gib"]
      + compiled["temporaries_gib"], abs=0.002)
  # 8 x 128 float32 logits of 8,192 words and their gradient: 64 MiB at least.
  assert compiled["temporaries_gib"] >= 0.0625


def test_vocab_chunk_shrinks_the_compiled_temporaries():
  """The chunked loss (model.vocab_chunk) never holds the B x L x V logits: the
  compiled step says so, and so does the estimate."""
  whole_est, whole = _report(_config("clm", vocab_size=32_768))
  chunk_est, chunked = _report(_config("clm", vocab_size=32_768, vocab_chunk=16))
  # 8 x 128 x 32,768 float32 logits are 128 MiB, their gradient as much again.
  assert whole["temporaries_gib"] > 0.25
  assert chunked["temporaries_gib"] < whole["temporaries_gib"] / 3
  assert chunk_est["logits_gib_per_device"] == pytest.approx(
      whole_est["logits_gib_per_device"] / 8, abs=0.001)  # 16 of 128 positions


def test_dpo_and_reward_steps_count_every_response_row():
  clm_est, clm = _report(_config("sft", vocab_size=8192))
  dpo_est, dpo = _report(_config("dpo", vocab_size=8192))
  assert dpo_est["batch"]["rows"] == 2 * clm_est["batch"]["rows"]
  assert dpo["temporaries_gib"] > 1.5 * clm["temporaries_gib"]
  reward_config = _config("reward")
  reward_est, reward = _report(reward_config)
  k = reward_config.data.num_responses
  assert reward_est["batch"]["rows"] == k * reward_config.data.batch_size
  assert reward_est["logits_gib_per_device"] == 0  # a scalar head has no logits
  # The reward model trains the trunk and a scalar head, not the unembedding.
  assert reward_est["parameters"] < dpo_est["parameters"]
  assert reward["peak_gib"] > 0


def test_sharded_step_holds_an_eighth_of_the_state(devices):
  one_est, one = _report(_config("clm", vocab_size=8192, d_model=256, mlp_dim=768))
  eight_est, eight = _report(_config("clm", 8, vocab_size=8192, d_model=256, mlp_dim=768))
  assert eight["backend"].endswith("x8")
  assert eight["arguments_gib"] < one["arguments_gib"] / 4
  assert eight["temporaries_gib"] < one["temporaries_gib"]
  assert eight_est["gradient_bytes_per_device"] < one_est["gradient_bytes_per_device"] / 4


def test_online_stage_reports_the_estimate_only():
  _, compiled = _report(_config("rlhf"))
  assert "skipped" in compiled and "rollouts" in compiled["skipped"]


def test_memory_check_counts_only_the_chunked_logits():
  """The up-front refusal (training/memory.py) must not count B x L x V logits that
  a chunked loss never holds: 128 of 1,024 positions at a time is an eighth."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from research.models import config as model_config  # pylint: disable=g-import-not-at-top
  from research.training import memory  # pylint: disable=g-import-not-at-top
  cfg = model_config.DecoderConfig(**{**model_config.defaults(), **model_config.preset("tiny"),
                                      "vocab_size": 151_936, "max_len": 1024})
  bound = lambda c: memory.step_lower_bound(c, rows=8, seq_len=1024, batch_ways=1,  # noqa: E731
                                            tensor_ways=1)
  logits = 2 * 8 * 1024 * 151_936 * 4  # float32 logits and their gradient
  assert bound(cfg) - bound(dataclasses.replace(cfg, vocab_chunk=128)) == logits - logits // 8
