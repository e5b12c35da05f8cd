"""What the training stages do the same way: the objective, the trainer build, the loop.

Reading and writing workdirs (config, tokenizer, parameters) is `research/runs.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from research.training import optimizer, partitioning, state as state_lib, trainer


def train(config, workdir: str, module: nn.Module, *, train_iter, eval_batches,
          hooks=(), tokens_per_batch: int = 0, init_params: Callable | None = None,
          init_subtree: str | None = None, rows_per_example: int = 1):
  """The registered objective (`config.objective.name`) -> one trainer build -> the loop.

  `eval_batches=None` trains without held-out evaluation. `rows_per_example`: the
  sequences of one example (K responses of a comparison).

  Returns (LoopResult, Trainer)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.training import loop  # pylint: disable=g-import-not-at-top
  loss = functools.partial(objectives.get(config.objective.name), model=module, config=config)
  built = trainer.build(config, module, loss, init_params=init_params, init_subtree=init_subtree,
                        rows=config.data.batch_size * rows_per_example,
                        evaluate=eval_batches is not None)
  result = loop.run(built, loop.IteratorSource(train_iter), train_cfg=config.train,
                    workdir=workdir, eval_batches=eval_batches,
                    tokens_per_batch=tokens_per_batch, hooks=hooks)
  return result, built


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
