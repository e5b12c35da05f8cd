"""What the training stages do the same way: the objective, the trainer build, the loop.

Reading and writing workdirs (config, tokenizer, parameters) is `research/runs.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from research.training import partitioning, trainer


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
  """What one train step holds per device, from abstract shapes only (no
  allocation): the parameters (an int8 base at a byte each), the optimizer state
  (the trainable parameters' only: LoRA's adapters), and the activations (an
  estimate, `memory.activation_bytes`) plus the logits and their gradient."""
  from research.training import memory  # pylint: disable=g-import-not-at-top
  p = trainer.plan(config, module, total_steps=max(config.train.steps, 2))
  leaves = jax.tree.leaves(p.abstract.params)
  n_params = sum(int(np.prod(x.shape)) for x in leaves)
  trained = (sum(int(np.prod(x.shape)) for x, t in zip(leaves, jax.tree.leaves(p.mask)) if t)
             if p.mask is not None else n_params)
  params_b = partitioning.per_device_bytes(p.abstract.params, p.shardings.params)
  opt_b = partitioning.per_device_bytes(p.abstract.opt_state, p.shardings.opt_state)
  ways = dict(batch_ways=partitioning.batch_axis_size(p.mesh, p.rules),
              tensor_ways=dict(p.mesh.shape).get("tensor", 1))
  rows, seq_len = config.data.batch_size, config.data.seq_len
  microbatches = config.optimizer.get("grad_accum_steps", 1)
  act_b = memory.activation_bytes(module.cfg, rows=rows, seq_len=seq_len,
                                  microbatches=microbatches, **ways)
  logits_b = memory.step_lower_bound(
      dataclasses.replace(module.cfg, num_layers=0), rows=rows, seq_len=seq_len,
      microbatches=microbatches, **ways)
  gib = lambda b: round(b / 2**30, 3)  # noqa: E731
  return {"parameters": n_params, "trainable_parameters": trained,
          "mesh": dict(p.mesh.shape), "devices": p.mesh.size,
          "param_bytes_per_device": params_b, "optimizer_bytes_per_device": opt_b,
          "state_gib_per_device": gib(params_b + opt_b),
          "activation_gib_per_device_estimate": gib(act_b),
          "logits_gib_per_device": gib(logits_b),
          "step_gib_per_device_estimate": gib(params_b + opt_b + act_b + logits_b),
          "batch": {"rows": rows, "seq_len": seq_len, "microbatches": microbatches,
                    "remat": module.cfg.remat}}
