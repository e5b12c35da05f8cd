"""The one trainer build (research/training/trainer.py): a trainable filter trains
only what it selects, and the frozen parameters stay bit-identical, with no
optimizer state; the same on a (2, 2, 2) mesh as on one device."""

import functools

import jax
import ml_collections
import numpy as np
import optax
import pytest

from research.models import config as model_config
from research.models.decoder import Decoder
from research.objectives import clm
from research.training import partitioning
from tests import trainers
from tests.test_sharding import _batch

RULES = partitioning.DEFAULT_RULES
OUTPUT_LAYERS = lambda path: path[0] in ("unembed", "final_norm")  # noqa: E731


def _train(mesh_shape, trainable, steps=3):
  model = Decoder(model_config.DecoderConfig(**model_config.preset("tiny")))
  config = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  loss = functools.partial(clm.loss_fn, model=model, config=config)
  built = trainers.build(model, loss, mesh_shape, config, trainable=trainable)
  start = jax.device_get(built.state.params)
  state, metrics = built.state, []
  for i in range(steps):
    batch = _batch(seed=0)  # one batch again: the loss on it must fall
    if i == 0:  # the gradient norm counts the trainable parameters' gradients only
      grads = jax.grad(lambda p: loss(p, batch, None)[0])(start)
      want = optax.global_norm({k: v for k, v in grads.items() if OUTPUT_LAYERS((k,))}
                               if trainable else grads)
    state, m = built.train_step(state, partitioning.shard_batch(batch, built.mesh, RULES))
    metrics.append({k: float(v) for k, v in m.items()})
    if i == 0:
      np.testing.assert_allclose(metrics[0]["grad_norm"], float(want), rtol=1e-4)
  return start, jax.device_get(state.params), jax.device_get(state.opt_state), metrics


def _sizes(tree) -> int:
  return sum(np.size(x) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def frozen_run():
  return _train((1, 1, 1), OUTPUT_LAYERS)


def test_only_the_selected_parameters_train(frozen_run):
  start, end, opt_state, metrics = frozen_run
  assert metrics[-1]["loss"] < metrics[0]["loss"]
  for name in start:
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), start[name],
                                         end[name]))
    if OUTPUT_LAYERS((name,)):
      assert any(moved), name
    else:  # bit-identical: a zero update, no weight decay
      assert not any(moved), name
  # Adam's two moments for the trainable parameters only (plus a few counters).
  trained = _sizes({k: v for k, v in start.items() if OUTPUT_LAYERS((k,))})
  assert 2 * trained <= _sizes(opt_state) < 2 * trained + 16


def test_a_filter_that_selects_nothing_is_refused():
  with pytest.raises(ValueError, match="selects no parameter"):
    _train((1, 1, 1), lambda path: False, steps=0)


def test_frozen_training_on_a_mesh_matches_one_device(devices, frozen_run):
  start, end, _, metrics = frozen_run
  start8, end8, _, metrics8 = _train((2, 2, 2), OUTPUT_LAYERS)
  np.testing.assert_allclose([m["loss"] for m in metrics8], [m["loss"] for m in metrics],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), end8, end)


def test_config_train_freeze_names_parameters_by_pattern():
  """config.train.freeze: fnmatch patterns over 'a/b' paths, alone or on top of LoRA."""
  from configs import common as config_common  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))

  def mask(freeze, **lora):
    config = ml_collections.ConfigDict({
        "seed": 0, "mesh": {"data": 1, "fsdp": 1, "tensor": 1, "num_devices": 1},
        "sharding": {"rules": RULES}, "optimizer": config_common.optimizer(lr=1e-3, warmup_steps=1),
        "data": {"batch_size": 8}, "train": {"steps": 10, "freeze": freeze}})
    model = Decoder(model_config.DecoderConfig(**{**cfg.__dict__, **lora}))
    p = trainer.plan(config, model)
    return p.mask and {"/".join(k): v for k, v in __import__("flax").traverse_util
                       .flatten_dict(p.mask).items()}

  assert mask("") is None  # everything trains
  m = mask("embedding,unembed/*,*_norm/*")
  assert not m["embedding"] and not m["unembed/kernel"] and not m["final_norm/scale"]
  assert not m["layer_0/attention_norm/scale"] and m["layer_0/attention/query/kernel"]
  m = mask("layer_1/*", lora_rank=2)  # adapters only, and not layer 1's
  assert m["layer_0/mlp/up/lora_b"] and not m["layer_1/mlp/up/lora_b"]
  assert not m["layer_0/mlp/up/kernel"]
  with pytest.raises(ValueError, match="config.train.freeze"):
    mask("*")
