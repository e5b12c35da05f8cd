"""LoRA adapters (research/models/lora.py, decoder.Projection): the adapted model
starts as the base, trains only its adapters, merges into the base weights, and
shards like one device."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import ConfigError
from research.models import config as model_config, lora
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
