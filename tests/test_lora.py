"""LoRA adapters (research/models/lora.py, decoder.Projection): the adapted model
starts as the base, trains only its adapters, merges into the base weights, and
shards like one device."""

import dataclasses
import functools

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import ConfigError
from research.models import config as model_config, lora, quantize
from research.models.decoder import Decoder
from research.objectives import clm
from research.training import partitioning
from tests import trainers
from tests.test_sharding import _batch

RULES = partitioning.DEFAULT_RULES
TINY = model_config.DecoderConfig(**model_config.preset("tiny"))
TOKENS = jnp.asarray(np.random.default_rng(0).integers(4, 500, (2, 12)), jnp.int32)


def _init(cfg):
  return nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), TOKENS)["params"])


@pytest.mark.parametrize("targets,scan", [("all", False), ("attention", True), ("up,down", False)])
def test_adapters_start_as_the_base_and_merge_into_it(targets, scan):
  base_cfg = dataclasses.replace(TINY, scan_layers=scan)
  cfg = dataclasses.replace(base_cfg, lora_rank=4, lora_alpha=8.0, lora_targets=targets)
  params = _init(cfg)
  base = lora.strip(params)
  if not scan:  # unrolled, the base weights are the base model's own init (not so under
    # nn.scan, whose per-layer rngs depend on every parameter; runs restore the base)
    jax.tree.map(np.testing.assert_array_equal, base, _init(base_cfg))
  # B = 0: the same function as the base.
  np.testing.assert_array_equal(Decoder(cfg).apply({"params": params}, TOKENS),
                                Decoder(base_cfg).apply({"params": base}, TOKENS))
  # The base decoder reads the adapted tree and ignores the adapters (the reference).
  np.testing.assert_array_equal(Decoder(base_cfg).apply({"params": params}, TOKENS),
                                Decoder(base_cfg).apply({"params": base}, TOKENS))
  # With B random: W + (alpha / r) A B merged equals the adapted model.
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: rng.normal(0, 0.05, x.shape).astype(x.dtype)
      if p[-1].key == "lora_b" else x, params)
  adapted = Decoder(cfg).apply({"params": params}, TOKENS)
  merged = Decoder(base_cfg).apply({"params": lora.merge(params, cfg.lora_alpha)}, TOKENS)
  assert float(jnp.abs(adapted - Decoder(base_cfg).apply({"params": base}, TOKENS)).max()) > 1e-3
  np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=0)
  counts = lora.count(params)
  projections = len(cfg.lora_projections())
  assert counts["base"] == lora.count(base)["base"] and 0 < counts["adapters"]
  assert projections == {"all": 7, "attention": 4, "up,down": 2}[targets]


def _train(mesh_shape, steps=3):
  cfg = dataclasses.replace(TINY, lora_rank=4, lora_alpha=8.0)
  model = Decoder(cfg)
  config = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  loss = functools.partial(clm.loss_fn, model=model, config=config)
  built = trainers.build(model, loss, mesh_shape, config)
  start = jax.device_get(built.state.params)
  state, losses = built.state, []
  batch = _batch(seed=0)
  for _ in range(steps):
    state, m = built.train_step(state, partitioning.shard_batch(batch, built.mesh, RULES))
    losses.append(float(m["loss"]))
  return start, jax.device_get(state.params), jax.device_get(state.opt_state), losses


@pytest.fixture(scope="module")
def lora_run():
  return _train((1, 1, 1))


def test_only_the_adapters_train(lora_run):
  start, end, opt_state, losses = lora_run
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, lora.strip(end), lora.strip(start))
  flat_start = jax.tree_util.tree_flatten_with_path(start)[0]
  flat_end = dict(jax.tree_util.tree_flatten_with_path(end)[0])
  moved = [p[-1].key for p, v in flat_start if np.any(flat_end[p] != v)]
  assert moved and set(moved) <= set(lora.ADAPTERS)
  adapters = lora.count(start)["adapters"]
  assert 2 * adapters <= sum(np.size(x) for x in jax.tree.leaves(opt_state)) < 2 * adapters + 16


def test_lora_training_on_a_mesh_matches_one_device(devices, lora_run):
  _, end, _, losses = lora_run
  _, end8, _, losses8 = _train((2, 2, 2))
  np.testing.assert_allclose(losses8, losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), end8, end)


def test_unknown_targets_and_negative_ranks_are_named():
  with pytest.raises(ConfigError, match="'attn' is not one of"):
    dataclasses.replace(TINY, lora_rank=4, lora_targets="attn")
  with pytest.raises(ConfigError, match="model.lora_rank=-1"):
    dataclasses.replace(TINY, lora_rank=-1)
  assert dataclasses.replace(TINY, lora_targets="attn").lora_projections() == ()  # rank 0


# --- QLoRA: a frozen int8 base (research/models/quantize.py) -------------------------

def test_int8_codes_match_numpy_and_round_trip():
  rng = np.random.default_rng(0)
  w = rng.normal(0, 0.1, (6, 4, 5)).astype(np.float32)  # [in, heads, head_dim]
  q, scale = quantize.codes_and_scale(jnp.asarray(w), num_in_dims=1)
  want_scale = np.abs(w).max(axis=0)
  np.testing.assert_allclose(scale, want_scale, rtol=1e-7)
  np.testing.assert_array_equal(q, np.round(w / want_scale * 127).astype(np.int8))
  back = np.asarray(quantize.weight(q, scale, jnp.float32))
  assert np.abs(back - w).max() <= want_scale.max() / 254 + 1e-7  # half a step


def test_qlora_trains_adapters_on_a_frozen_int8_base():
  cfg = dataclasses.replace(TINY, lora_rank=4, lora_alpha=8.0, quantize_base="int8")
  float_params = _init(TINY)
  model = Decoder(cfg)
  config = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  loss = functools.partial(clm.loss_fn, model=model, config=config)
  built = trainers.build(model, loss, (1, 1, 1), config, params=float_params)
  start = jax.device_get(built.state.params)
  # B = 0: the model computes the dequantized base, close to the float one.
  base = Decoder(TINY).apply({"params": quantize.dequantize(lora.strip(start), jnp.float32)},
                             TOKENS)
  np.testing.assert_allclose(model.apply({"params": start}, TOKENS), base, atol=1e-5, rtol=0)
  float_logits = Decoder(TINY).apply({"params": float_params}, TOKENS)
  assert float(jnp.abs(base - float_logits).max()) < 0.05 * float(jnp.abs(float_logits).max())
  codes = [x for p, x in flax.traverse_util.flatten_dict(start).items() if p[-1] == "kernel_q"]
  assert len(codes) == 7 * TINY.num_layers and all(c.dtype == np.int8 for c in codes)
  state, losses = built.state, []
  for _ in range(3):
    state, m = built.train_step(state, partitioning.shard_batch(_batch(seed=0), built.mesh,
                                                                RULES))
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] and np.isfinite(float(m["grad_norm"]))
  end = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, lora.strip(end), lora.strip(start))
  # A byte per projection weight in place of float32's four.
  kernels = [x for p, x in flax.traverse_util.flatten_dict(float_params).items()
             if p[-1] == "kernel" and p[-2] != "unembed"]
  assert 4 * sum(c.nbytes for c in codes) == sum(k.nbytes for k in kernels)


def test_dry_run_memory_of_a_7b_model_full_lora_and_qlora(devices):
  """What `--dry_run` prints for Llama-2-7B's shape on fsdp=8: LoRA rank 16 on all
  linear layers trains 40.0M parameters (the known count) with optimizer state for
  those only; QLoRA holds the projections at a byte per weight."""
  from configs import clm as clm_config  # pylint: disable=g-import-not-at-top
  from research.stages import dry_run  # pylint: disable=g-import-not-at-top

  def report(**lora_fields):
    config = clm_config.get_config("7b")
    config.mesh.update(data=1, fsdp=8, num_devices=8)
    config.model.update(lora_fields)
    return dry_run.describe(config, Decoder(model_config.from_config(config.model)))

  full, lo, q = report(), report(lora_rank=16), report(lora_rank=16, quantize_base="int8")
  adapters = 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
  assert adapters == 39_976_960
  assert lo["trainable_parameters"] == q["trainable_parameters"] == adapters
  assert lo["parameters"] == full["parameters"] + adapters
  # The adapters are sharded like their kernels' dims, the rank axis replicated.
  added = lo["param_bytes_per_device"] - full["param_bytes_per_device"]
  assert adapters * 4 / 8 <= added < adapters * 4
  # Adam's two moments for the adapters only, sharded like them.
  assert abs(lo["optimizer_bytes_per_device"] - 2 * added) <= 64
  projections = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
  int8_saved = projections * 3 // 8  # float32 -> int8 codes, split 8 ways
  assert abs(lo["param_bytes_per_device"] - int8_saved
             - q["param_bytes_per_device"]) < 32 * 7 * 11008 * 4  # + the scales
  for r in (full, lo, q):
    assert r["activation_gib_per_device_estimate"] > 0
  assert q["step_gib_per_device_estimate"] < lo["step_gib_per_device_estimate"] < \
      full["step_gib_per_device_estimate"]
