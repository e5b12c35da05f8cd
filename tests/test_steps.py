"""Every stage's train step: pinned one-step metrics, and the (2,2,2) mesh = one device.

Golden values (nanodo style): one step of each objective on fixed weights and a
fixed batch gives the loss, gradient norm and updated-parameter norm recorded in
`fixtures/golden_steps.json`. A change to a loss, the model, the optimizer or the
step that moves them fails here; if the change is intended, regenerate with
`GOLDEN_UPDATE=1 python -m pytest tests/test_steps.py` and say why in the commit.

The same two steps on 8 simulated devices as (data, fsdp, tensor) = (2, 2, 2)
must match one device: SFT, reward model, DPO, KTO (CLM: test_sharding.py; PPO, A2C,
GRPO: test_policy_gradient.py).
"""

import functools
import json
import math
import os

import jax
import numpy as np
import pytest

from configs import clm as clm_config, dpo as dpo_config
from configs import kto as kto_config
from configs import reward as reward_config, sft as sft_config
from research import objectives
from research.models import config as model_config
from research.models.decoder import Decoder
from research.models.heads import ScalarModel
from research.training import partitioning
from tests import trainers

RULES = partitioning.DEFAULT_RULES
GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden_steps.json")
TINY = model_config.DecoderConfig(**model_config.preset("tiny"))


def _lm_batch(seed, response_only: bool, b=8, length=32):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, TINY.vocab_size, (b, length + 1)).astype(np.int32)
  loss_mask = np.ones((b, length), np.int32)
  if response_only:  # SFT: a prompt of 5..15 tokens carries no loss
    for i, p in enumerate(rng.integers(5, 16, b)):
      loss_mask[i, :p] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": np.ones((b, length), np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
          "loss_mask": loss_mask}


def _response_rows(rng, b, k, length=24):
  """Right-padded prompt + response rows Bxk xL with masks."""
  tokens = rng.integers(4, TINY.vocab_size, (b, k, length)).astype(np.int32)
  mask = np.zeros((b, k, length), bool)
  response = np.zeros((b, k, length), bool)
  for i in range(b):
    prompt = rng.integers(3, 8)
    for j in range(k):
      end = rng.integers(prompt + 3, length + 1)
      mask[i, j, :end] = True
      response[i, j, prompt:end] = True
  return tokens * mask, mask, response


def _reward_batch(seed, b=8, k=3):
  rng = np.random.default_rng(seed)
  tokens, mask, _ = _response_rows(rng, b, k)
  ranks = np.stack([rng.permutation(k) for _ in range(b)]).astype(np.int32)
  return {"tokens": tokens, "mask": mask, "ranks": ranks}


def _dpo_batch(seed, b=8):
  rng = np.random.default_rng(seed)
  tokens, mask, response = _response_rows(rng, b, 2)
  tokens[:, 1, :8] = tokens[:, 0, :8]  # chosen and rejected share the prompt
  return {"tokens": tokens, "mask": mask, "response_mask": response,
          "ref_logps": rng.uniform(-140, -60, (b, 2)).astype(np.float32)}


def _kto_batch(seed, b=8):
  """Rows (completion, another example's completion), half of them desirable."""
  batch = _dpo_batch(seed, b)
  batch["label"] = (np.arange(b) % 2).astype(np.float32)
  return batch


# name -> (module, stage config, batch(seed))
CASES = {
    "clm": (lambda: Decoder(TINY), lambda: clm_config.get_config("tiny"),
            functools.partial(_lm_batch, response_only=False)),
    "sft": (lambda: Decoder(TINY), lambda: sft_config.get_config("tiny"),
            functools.partial(_lm_batch, response_only=True)),
    "reward": (lambda: ScalarModel(TINY, head_init="reward"),
               lambda: reward_config.get_config("tiny"), _reward_batch),
    "dpo": (lambda: Decoder(TINY), lambda: dpo_config.get_config("tiny"), _dpo_batch),
    # KTO's reference point is a mean over the whole batch: global when sharded.
    "kto": (lambda: Decoder(TINY), lambda: kto_config.get_config("tiny"), _kto_batch),
}


def host_norm(tree) -> float:
  """The global L2 norm, on the host: no eager multi-device ops (see conftest)."""
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(jax.device_get(tree)))))


def run_steps(name, mesh_shape, devices, steps=2):
  module_fn, config_fn, batch_fn = CASES[name]
  model, config = module_fn(), config_fn()
  loss = functools.partial(objectives.get(config.objective.name), model=model, config=config)
  assert len(devices) == math.prod(mesh_shape)  # the build takes the first N devices
  built = trainers.build(model, loss, mesh_shape, config)
  state, step, mesh = built.state, built.train_step, built.mesh
  out = []
  for i in range(steps):
    state, metrics = step(state, partitioning.shard_batch(batch_fn(i), mesh, RULES))
    out.append({"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                "param_norm": host_norm(state.params)})
  return out, jax.device_get(state.params), step


@pytest.fixture(scope="module")
def single(devices):
  return {name: run_steps(name, (1, 1, 1), devices[:1]) for name in CASES}


def test_step_metrics_match_the_golden_values(single):
  """Both steps: the first runs at learning rate 0 (warmup), the second moves the
  parameters, so its `param_norm` pins the update too."""
  got = {name: single[name][0] for name in CASES}
  if os.environ.get("GOLDEN_UPDATE"):
    with open(GOLDEN, "w", encoding="utf-8") as f:
      json.dump(got, f, indent=2, sort_keys=True)
      f.write("\n")
  with open(GOLDEN, encoding="utf-8") as f:
    golden = json.load(f)
  assert sorted(golden) == sorted(CASES)
  for name in CASES:
    for step, (want, have) in enumerate(zip(golden[name], got[name], strict=True)):
      for key, value in want.items():
        assert have[key] == pytest.approx(value, rel=1e-4), (name, step, key)
  assert all(golden[n][1]["param_norm"] != golden[n][0]["param_norm"] for n in CASES)


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "kto"])  # CLM: test_sharding.py
def test_step_on_the_2x2x2_mesh_matches_one_device(devices, single, name):
  ref, ref_params, _ = single[name]
  got, params, step = run_steps(name, (2, 2, 2), devices)
  for a, b in zip(got, ref):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{name} {key}")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), params,
               ref_params)
  assert step.compilations() == 1

