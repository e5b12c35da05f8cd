"""What `research.main --dry_run` reports: one train step's memory per device, with
nothing allocated and no data read.

Two reports of the same step:

  estimate  from shapes (`describe`): the parameters, the optimizer state, the
            gradients (of the trainable parameters), and the activations and
            logits from `training/memory.py`'s per-token counts.
  compiled  XLA's memory analysis of the stage's train step (`compiled`): the
            step `trainer.build` makes (the config's objective, optimizer, mesh,
            microbatches, trainable filter, donated state), lowered and compiled
            on `ShapeDtypeStruct`s with their shardings. These are the compiled
            program's figures on this backend and device count: run the dry run
            where the job will run (a TPU host for a TPU job) for that machine's.

The batch layout is fixed by the config for the stages in `BATCHES` (a DPO or
reward batch in its padded layout: packing makes the rows data-dependent, and
fewer); the online stage's batch comes from rollouts, so it gets the estimate only.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.training import partitioning, step as step_lib, trainer

_GIB = 2**30


def _gib(n: int) -> float:
  return round(n / _GIB, 3)


def module_for(config):
  """The module the stage trains: for a reward model, the decoder's trunk and a
  scalar head."""
  from research.models import config as model_config  # pylint: disable=g-import-not-at-top
  from research.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from research.models.heads import ScalarModel  # pylint: disable=g-import-not-at-top
  cfg = model_config.from_config(config.model)
  return ScalarModel(cfg, head_init="reward") if config.stage == "reward" else Decoder(cfg)


def rows_per_example(config) -> int:
  """Sequences per example: a DPO pair's two, a reward ranking's K."""
  return {"dpo": 2, "reward": config.data.get("num_responses", 2)}.get(config.stage, 1)


def _clm_batch(config) -> dict:
  """Packed CLM / SFT rows (`research/data/pipeline.py`)."""
  shape = (config.data.batch_size, config.data.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
          for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}


def _comparison_batch(config, *, ref_logps: bool = False, label: bool = False) -> dict:
  """K responses per example, right-padded (`research/data/comparisons.py`)."""
  b, k, l = config.data.batch_size, rows_per_example(config), config.data.seq_len
  batch = {"tokens": jax.ShapeDtypeStruct((b, k, l), jnp.int32),
           "mask": jax.ShapeDtypeStruct((b, k, l), jnp.bool_),
           "response_mask": jax.ShapeDtypeStruct((b, k, l), jnp.bool_),
           "ranks": jax.ShapeDtypeStruct((b, k), jnp.int32),
           "margin": jax.ShapeDtypeStruct((b,), jnp.float32)}
  if ref_logps:
    batch["ref_logps"] = jax.ShapeDtypeStruct((b, k), jnp.float32)
  if label:
    batch["label"] = jax.ShapeDtypeStruct((b,), jnp.float32)
  return batch


def _dpo_batch(config) -> dict:
  from research import objectives  # pylint: disable=g-import-not-at-top
  objective = objectives.get(config.objective.name)
  # The reference log-probs arrive in the batch, except for a LoRA policy whose
  # reference (its base) runs inside the step (stages/dpo.py).
  in_step = bool(config.model.get("lora_rank", 0)) and not objective.reference_free and (
      config.objective.get("reference") == "online"
      or config.model.get("quantize_base", "none") != "none")
  return _comparison_batch(config, ref_logps=not in_step, label=objective.unpaired)


BATCHES = {"clm": _clm_batch, "sft": _clm_batch, "best_of_n": _clm_batch,
           "dpo": _dpo_batch, "reward": _comparison_batch}


def plan_for(config, module) -> trainer.Plan:
  """The abstract state both reports read (`describe`, `compiled`): build it once."""
  return trainer.plan(config, module, total_steps=max(config.train.steps, 2))


def describe(config, module, plan: trainer.Plan | None = None) -> dict[str, Any]:
  """The estimate from shapes: the parameters (an int8 base at a byte each), the
  optimizer state and the gradients (the trainable parameters' only: LoRA's
  adapters), the activations (`memory.activation_bytes`) and the logits with
  their gradient (`memory.step_lower_bound`)."""
  from research.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from research.training import memory  # pylint: disable=g-import-not-at-top
  p = plan or plan_for(config, module)
  leaves = jax.tree.leaves(p.abstract.params)
  mask = jax.tree.leaves(p.mask) if p.mask is not None else [True] * len(leaves)
  n_params = sum(int(np.prod(x.shape)) for x in leaves)
  trained = sum(int(np.prod(x.shape)) for x, t in zip(leaves, mask) if t)
  params_b = partitioning.per_device_bytes(p.abstract.params, p.shardings.params)
  opt_b = partitioning.per_device_bytes(p.abstract.opt_state, p.shardings.opt_state)
  grads_b = sum(partitioning.per_device_bytes(x, s) for x, s, t in
                zip(leaves, jax.tree.leaves(p.shardings.params), mask) if t)
  ways = dict(batch_ways=partitioning.batch_axis_size(p.mesh, p.rules),
              tensor_ways=dict(p.mesh.shape).get("tensor", 1))
  rows, seq_len = config.data.batch_size * rows_per_example(config), config.data.seq_len
  microbatches = config.optimizer.get("grad_accum_steps", 1)
  act_b = memory.activation_bytes(module.cfg, rows=rows, seq_len=seq_len,
                                  microbatches=microbatches, **ways)
  logits_b = memory.step_lower_bound(
      dataclasses.replace(module.cfg, num_layers=0), rows=rows, seq_len=seq_len,
      microbatches=microbatches, logits=isinstance(module, Decoder), **ways)
  return {"parameters": n_params, "trainable_parameters": trained,
          "mesh": dict(p.mesh.shape), "devices": p.mesh.size,
          "param_bytes_per_device": params_b, "optimizer_bytes_per_device": opt_b,
          "gradient_bytes_per_device": grads_b,
          "state_gib_per_device": _gib(params_b + opt_b),
          "activation_gib_per_device_estimate": _gib(act_b),
          "logits_gib_per_device": _gib(logits_b),
          "step_gib_per_device_estimate": _gib(params_b + opt_b + grads_b + act_b + logits_b),
          "batch": {"rows": rows, "seq_len": seq_len, "microbatches": microbatches,
                    "remat": module.cfg.remat}}


def compiled(config, module, plan: trainer.Plan | None = None) -> dict[str, Any]:
  """XLA's memory analysis of `config`'s train step, per device (see the module doc)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  if config.stage not in BATCHES:
    why = ("trains on rollouts, whose batch the config does not fix" if config.stage == "rlhf"
           else "has no train step")
    return {"skipped": f"stage {config.stage!r} {why}"}
  loss = functools.partial(objectives.get(config.objective.name), model=module, config=config)
  p = plan or plan_for(config, module)
  step = step_lib.make_train_step(
      loss, tx=p.tx, state_shardings=p.shardings, mesh=p.mesh, rules=p.rules,
      schedule=p.schedule, microbatches=config.optimizer.get("grad_accum_steps", 1),
      trainable=p.mask)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       p.abstract, p.shardings)
  start = time.perf_counter()
  analysis = step.lower(state, BATCHES[config.stage](config)).compile().memory_analysis()
  seconds = time.perf_counter() - start
  arguments, outputs = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
  donated, temporaries = analysis.alias_size_in_bytes, analysis.temp_size_in_bytes
  return {"backend": f"{jax.default_backend()} x{p.mesh.size}",
          "arguments_gib": _gib(arguments),      # the state and the batch
          "outputs_gib": _gib(outputs),          # the new state and the metrics
          "donated_gib": _gib(donated),          # outputs written over donated arguments
          "temporaries_gib": _gib(temporaries),  # activations, gradients, logits, updates
          "peak_gib": _gib(arguments + outputs - donated + temporaries),
          "compile_s": round(seconds, 1)}
