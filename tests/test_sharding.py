"""The same train step on 8 simulated devices and on one device gives the same numbers."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.models import config as model_config
from research.models.decoder import Decoder
from research.objectives import clm
from research.training import partitioning
from tests import trainers

RULES = partitioning.DEFAULT_RULES


def _setup(mesh_shape, devices, microbatches=1, scan=False, **model_overrides):
  cfg = model_config.DecoderConfig(**{**model_config.preset("tiny"), "scan_layers": scan,
                                      **model_overrides})
  model = Decoder(cfg)
  config = ml_collections.ConfigDict({"objective": {"z_loss": 1e-4}})
  loss = functools.partial(clm.loss_fn, model=model, config=config)
  assert len(devices) == math.prod(mesh_shape)  # the build takes the first N devices
  built = trainers.build(model, loss, mesh_shape, config, microbatches)
  return built.mesh, built.state, built.train_step


def _batch(b=8, length=32, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 512, (b, length + 1)).astype(np.int32)
  segments = np.ones((b, length), np.int32)
  segments[:, length // 2:] = 2  # two packed documents per row
  positions = np.concatenate([np.arange(length // 2)] * 2)[None].repeat(b, 0).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
          "positions": positions, "loss_mask": np.ones((b, length), np.int32)}


def _run(mesh_shape, devices, steps=3, **kw):
  mesh, state, step = _setup(mesh_shape, devices, **kw)
  losses = []
  for i in range(steps):
    state, metrics = step(state, partitioning.shard_batch(_batch(seed=i), mesh, RULES))
    losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return losses, state, step


@pytest.fixture(scope="module")
def single(devices):
  return _run((1, 1, 1), devices[:1])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)],
                         ids=["data8", "fsdp8", "data2_fsdp2_tensor2"])
def test_sharded_step_matches_single_device(devices, single, mesh_shape):
  losses, state, step = _run(mesh_shape, devices)
  ref_losses, ref_state, _ = single
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_params_close(state.params, ref_state.params)
  assert step.compilations() == 1


def test_either_matmul_path_on_one_device_or_a_mesh_gives_the_same_step(devices, single):
  """`model.matmul`: the one-device default (the flattened GEMM, its backward
  written out) and the mesh's default (a dot over the kernel's dims) forced on the
  other side: the comparisons above then hold path for path."""
  ref_losses, ref_state, _ = single
  # (The mesh's own "dot" is test_sharded_step_matches_single_device's (2, 2, 2) case.)
  for mesh_shape, devs, matmul in (((1, 1, 1), devices[:1], "dot"),
                                   ((2, 2, 2), devices, "gemm")):
    losses, state, _ = _run(mesh_shape, devs, matmul=matmul)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=f"{mesh_shape} {matmul}")
    assert_params_close(state.params, ref_state.params)


def assert_params_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       atol=1e-6, rtol=1e-5), a, b)


def test_parameters_and_optimizer_state_really_are_sharded(devices):
  _, state, _ = _setup((2, 2, 2), devices)
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  up = state.params["layer_0"]["mlp"]["up"]["kernel"]  # (embed, mlp)
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(up.addressable_shards) == 8
  assert up.addressable_shards[0].data.shape == (cfg.d_model // 2, cfg.mlp_dim // 2)
  mu = state.opt_state[1][0].mu["layer_0"]["mlp"]["up"]["kernel"]
  assert mu.sharding.spec == up.sharding.spec
  q = state.params["layer_0"]["attention"]["query"]["kernel"]  # (embed, heads, kv)
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  _, state_fsdp, _ = _setup((1, 8, 1), devices)
  emb = state_fsdp.params["embedding"]  # (vocab, embed): embed over fsdp=8
  assert emb.addressable_shards[0].data.shape == (cfg.vocab_size, cfg.d_model // 8)


def test_scanned_layers_shard_and_match(devices):
  losses, state, _ = _run((2, 2, 2), devices, scan=True)
  ref_losses, ref_state, _ = _run((1, 1, 1), devices[:1], scan=True)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_params_close(state.params, ref_state.params)
  kernel = state.params["layers"]["mlp"]["up"]["kernel"]  # (layers, embed, mlp)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_windowed_qk_norm_chunked_vocab_step_shards_and_matches(devices):
  """Gemma-style layers (local/global, sandwich norms, q/k norms) and the chunked
  vocabulary loss, scanned, on a (2, 2, 2) mesh against one device."""
  model = dict(sliding_window=6, attention_pattern="lg", norm_placement="sandwich",
               qk_norm="head", vocab_chunk=12, scan=True)
  losses, state, _ = _run((2, 2, 2), devices, **model)
  ref_losses, ref_state, _ = _run((1, 1, 1), devices[:1], **model)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_params_close(state.params, ref_state.params)


def test_gradient_accumulation_matches_full_batch(devices, single):
  losses, state, _ = _run((1, 1, 1), devices[:1], microbatches=4)
  np.testing.assert_allclose(losses, single[0], rtol=1e-5)
  assert_params_close(state.params, single[1].params)


def test_unmatched_logical_axis_fails_loudly(devices):
  mesh = partitioning.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices[:1])
  rules = tuple(r for r in RULES if r[0] != "mlp")
  model = Decoder(model_config.DecoderConfig(**model_config.preset("tiny")))
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="no rule for logical axes 'mlp'"):
    partitioning.logical_shardings(boxed, mesh, rules)


def test_mesh_shape_resolution_and_errors():
  assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="config.mesh"):
    partitioning.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    partitioning.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
