"""Trainers for the step tests, through the one build (research/training/trainer.py)."""

import math

import ml_collections

from configs import common as config_common
from research.training import partitioning, trainer


def build(module, loss, mesh_shape, config=None, microbatches: int = 1, batch_size: int = 8,
          **build_kw) -> trainer.Trainer:
  """`module` trained on `loss` over the first prod(mesh_shape) devices, a 10-step
  schedule. eps=1e-3 makes Adam's update a smooth function of the gradient: with
  the default 1e-8, m / sqrt(v) is scale-free, and on the few entries whose
  gradient is ~1e-7 (near zero by chance), float32 roundoff from another
  summation order (gradients agree to ~2e-7) flips a large part of an lr step."""
  c = ml_collections.ConfigDict(config.to_dict() if config is not None else {})
  c.seed, c.init_from = 0, ""
  c.mesh = {**dict(zip(("data", "fsdp", "tensor"), mesh_shape)),
            "num_devices": math.prod(mesh_shape)}
  c.sharding = {"rules": partitioning.DEFAULT_RULES}
  c.optimizer = config_common.optimizer(lr=1e-3, warmup_steps=1, eps=1e-3,
                                        grad_accum_steps=microbatches)
  c.train = {"steps": 10}
  c.data = {**(c.get("data") or {}), "batch_size": batch_size}
  return trainer.build(c, module, loss, evaluate=False, **build_kw)
