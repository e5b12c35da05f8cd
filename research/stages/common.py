"""What the training stages set up the same way: mesh, optimizer, sharded state, loop.

Reading and writing workdirs (config, tokenizer, parameters) is `research/runs.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from research.models.decoder import Decoder
from research.training import checkpoint, memory, optimizer, partitioning, state as state_lib


@dataclasses.dataclass
class Setup:
  mesh: Any
  rules: Any
  tx: Any
  schedule: Any
  state: Any
  shardings: Any
  abstract_state: Any


def setup(config, module: nn.Module, total_steps: int,
          init_params: Callable | None = None, init_subtree: str | None = None,
          rows: int = 0) -> Setup:
  """Mesh, optimizer and the sharded TrainState.

  With `config.init_from`, the parameters come from that run's checkpoint: all
  of them, or, with `init_subtree`, only `params[init_subtree]` (a reward
  model's trunk from an SFT run, with a fresh head). With `rows` (sequences of
  `config.data.seq_len` per step), a config whose step cannot fit the memory is
  refused before anything is allocated (`training/memory.py`).
  """
  mesh, rules = partitioning.mesh_and_rules(config)
  tx, schedule = optimizer.make_optimizer(config.optimizer, total_steps)
  init_params = init_params or state_lib.init_fn(module)
  abstract, shardings = state_lib.abstract_state(init_params, tx, mesh, rules, config.seed)
  if rows:
    memory.check_step_fits(
        config, module.cfg, rows=rows, seq_len=config.data.seq_len,
        batch_ways=partitioning.batch_axis_size(mesh, rules),
        tensor_ways=dict(mesh.shape).get("tensor", 1), logits=isinstance(module, Decoder),
        state_bytes=partitioning.per_device_bytes(abstract.params, shardings.params)
        + partitioning.per_device_bytes(abstract.opt_state, shardings.opt_state))
  params = None
  if config.get("init_from"):
    target = abstract.params[init_subtree] if init_subtree else abstract.params
    target_shardings = shardings.params[init_subtree] if init_subtree else shardings.params
    params = checkpoint.restore_params(os.path.join(config.init_from, "checkpoints"),
                                       target, target_shardings)
    logging.info("initialised %s from %s", init_subtree or "parameters", config.init_from)
  if init_subtree:
    state, shardings = state_lib.create_state(init_params, tx, mesh, rules, config.seed)
    if params is not None:  # Adam's moments start at zero whatever the values
      state = state.replace(params={**state.params, init_subtree: params})
  else:
    state, shardings = state_lib.create_state(init_params, tx, mesh, rules, config.seed, params)
  return Setup(mesh, rules, tx, schedule, state, shardings, abstract)


def train(config, workdir: str, module: nn.Module, *, train_iter, eval_batches,
          hooks=(), tokens_per_batch: int = 0, init_params: Callable | None = None,
          init_subtree: str | None = None, rows_per_example: int = 1):
  """Sharded state -> the registered objective through the one step factory -> the loop.

  `eval_batches=None` trains without held-out evaluation. `rows_per_example`: the
  sequences of one example (K responses of a comparison).

  Returns (LoopResult, Setup, train_step)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.training import loop, step as step_lib  # pylint: disable=g-import-not-at-top
  s = setup(config, module, config.train.steps, init_params, init_subtree,
            rows=config.data.batch_size * rows_per_example)
  loss = functools.partial(objectives.get(config.objective.name), model=module, config=config)
  train_step = step_lib.make_train_step(
      loss, tx=s.tx, state_shardings=s.shardings, mesh=s.mesh, rules=s.rules,
      schedule=s.schedule, microbatches=config.optimizer.grad_accum_steps)
  eval_step = None if eval_batches is None else step_lib.make_eval_step(
      loss, params_sharding=s.shardings.params, mesh=s.mesh, rules=s.rules)
  result = loop.run(
      train_cfg=config.train, workdir=workdir, state=s.state, abstract_state=s.abstract_state,
      state_shardings=s.shardings, train_step=train_step,
      source=loop.IteratorSource(train_iter), mesh=s.mesh,
      rules=s.rules, eval_step=eval_step, eval_batches=eval_batches,
      tokens_per_batch=tokens_per_batch, hooks=hooks)
  return result, s, train_step


def describe(config, module: nn.Module) -> dict[str, Any]:
  """Parameter count and per-device bytes, from abstract shapes only (no allocation)."""
  mesh, rules = partitioning.mesh_and_rules(config)
  tx, _ = optimizer.make_optimizer(config.optimizer, max(config.train.steps, 2))
  abstract, shardings = state_lib.abstract_state(state_lib.init_fn(module), tx, mesh, rules,
                                                 config.seed)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  params_b = partitioning.per_device_bytes(abstract.params, shardings.params)
  opt_b = partitioning.per_device_bytes(abstract.opt_state, shardings.opt_state)
  return {"parameters": n_params, "mesh": dict(mesh.shape), "devices": mesh.size,
          "param_bytes_per_device": params_b, "optimizer_bytes_per_device": opt_b,
          "state_gib_per_device": round((params_b + opt_b) / 2**30, 3)}
