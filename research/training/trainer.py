"""The one trainer build: a config, a module and its loss -> the sharded state and
the compiled steps that every stage, bench and test trains through.

  trainer = build(config, module, loss)                 # loss(params, batch, rng)
  result = loop.run(trainer, source, train_cfg=config.train, workdir=workdir)

What `build` reads from the config: the mesh and sharding rules, the optimizer
and its schedule (`config.optimizer`, over `config.train.steps` updates unless
told otherwise), the seed, gradient accumulation, and `config.init_from` (the
run whose parameters it starts from). `trainable` picks the parameters that
train; the others stay bit-identical, get no optimizer state and no gradient.
A module with LoRA adapters (`model.lora_rank`) trains its adapters (and a
fresh head) by default, its base restored from `init_from` and frozen.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import flax.traverse_util
import jax
import optax

from research.models import lora, quantize
from research.models.decoder import Decoder
from research.training import checkpoint, memory, optimizer, partitioning, state as state_lib
from research.training import step as step_lib

Trainable = Callable[[tuple[str, ...]], bool]  # a parameter's path -> does it train?


@dataclasses.dataclass
class Trainer:
  mesh: Any
  rules: Any
  tx: optax.GradientTransformation
  schedule: Callable
  state: state_lib.TrainState           # the starting state (loop.run may resume another)
  shardings: state_lib.TrainState       # of the state
  abstract_state: state_lib.TrainState  # shapes only: what a checkpoint restores into
  train_step: step_lib.CompiledStep     # (state, batch) -> (state, metrics), state donated
  eval_step: step_lib.CompiledStep | None  # (params, batch) -> metrics
  # Saved with every checkpoint: what reading its parameters needs (a LoRA run's
  # lora_alpha, so a later run or an export can merge its adapters).
  checkpoint_meta: dict = dataclasses.field(default_factory=dict)


def trainable_mask(params, trainable: Trainable):
  """A tree of bools like `params` (boxed or not): True where the parameter trains."""
  keys = lambda path: tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(trainable(keys(p))), params,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))


@dataclasses.dataclass
class Plan:
  """What a build allocates, as shapes: the mesh, the optimizer over the trainable
  parameters, the abstract state and its shardings (`--dry_run` reads it)."""
  mesh: Any
  rules: Any
  tx: optax.GradientTransformation
  schedule: Callable
  mask: Any                  # trainable leaves (None: all)
  abstract: state_lib.TrainState
  shardings: state_lib.TrainState
  init_params: Callable
  adapters: bool             # the module has LoRA adapters


def plan(config, module, *, total_steps: int | None = None, init_params: Callable | None = None,
         init_subtree: str | None = None, trainable: Trainable | None = None) -> Plan:
  """The state `build` would make, without allocating it."""
  mesh, rules = partitioning.mesh_and_rules(config)
  tx, schedule = optimizer.make_optimizer(config.optimizer, total_steps or config.train.steps)
  init_params = init_params or state_lib.init_fn(module)
  shapes = nn.unbox(jax.eval_shape(init_params, jax.random.PRNGKey(0)))
  adapters = lora.has_adapters(shapes)
  if adapters and trainable is None:
    # LoRA: the adapters train, and what the run does not take from init_from
    # (a reward model's head); the base stays as it was.
    trainable = lambda path: lora.is_adapter(path) or bool(  # noqa: E731
        init_subtree and path[0] != init_subtree)
  trainable = _with_frozen(trainable, str(config.get("train", {}).get("freeze", "") or ""))
  mask = None
  if trainable is not None:
    mask = trainable_mask(shapes, trainable)
    if not any(jax.tree.leaves(mask)):
      raise ValueError("the trainable filter selects no parameter (config.train.freeze, "
                       "model.lora_rank)")
    # Frozen parameters get no optimizer state and a zero update: they stay bit-identical.
    tx = optax.multi_transform({True: tx, False: optax.set_to_zero()},
                               lambda params: trainable_mask(params, trainable))
  abstract, shardings = state_lib.abstract_state(init_params, tx, mesh, rules, config.seed)
  return Plan(mesh, rules, tx, schedule, mask, abstract, shardings, init_params, adapters)


def _with_frozen(trainable: Trainable | None, freeze: str) -> Trainable | None:
  """`trainable` less the parameters `config.train.freeze` names (fnmatch patterns
  over 'a/b/c' paths, comma-separated)."""
  patterns = [p.strip() for p in freeze.split(",") if p.strip()]
  if not patterns:
    return trainable
  frozen = lambda path: any(fnmatch.fnmatchcase("/".join(path), p) for p in patterns)  # noqa: E731
  return lambda path: (trainable is None or trainable(path)) and not frozen(path)


def build(config, module, loss: step_lib.LossFn, *, total_steps: int | None = None,
          params=None, init_params: Callable | None = None, init_subtree: str | None = None,
          rows: int = 0, evaluate: bool = True, trainable: Trainable | None = None,
          donate: bool = True) -> Trainer:
  """The sharded state and the jitted steps of `module` trained on `loss`.

  The parameters: `params` (a tree like the module's, or a function of the
  abstract parameters that returns one), else those of `config.init_from`'s
  checkpoint (all of them, or with `init_subtree` only `params[init_subtree]`:
  a reward model's trunk from an SFT run, with a fresh head), else a fresh init
  (`init_params(rng)`, default the module's). With `rows` (sequences of
  `config.data.seq_len` per step), a step that cannot fit the memory is refused
  before anything is allocated (`training/memory.py`).
  """
  p = plan(config, module, total_steps=total_steps, init_params=init_params,
           init_subtree=init_subtree, trainable=trainable)
  mesh, rules, tx, schedule, mask, abstract, shardings = (
      p.mesh, p.rules, p.tx, p.schedule, p.mask, p.abstract, p.shardings)
  init_params, adapters = p.init_params, p.adapters
  if rows:
    memory.check_step_fits(
        config, module.cfg, rows=rows, seq_len=config.data.seq_len,
        batch_ways=partitioning.batch_axis_size(mesh, rules),
        tensor_ways=dict(mesh.shape).get("tensor", 1), logits=isinstance(module, Decoder),
        state_bytes=partitioning.per_device_bytes(abstract.params, shardings.params)
        + partitioning.per_device_bytes(abstract.opt_state, shardings.opt_state))
  if callable(params):
    params = params(abstract.params)
  if params is None and config.get("init_from"):
    target = abstract.params[init_subtree] if init_subtree else abstract.params
    target_shardings = shardings.params[init_subtree] if init_subtree else shardings.params
    if adapters:  # the run holds the base (a LoRA run's merged); the adapters start fresh
      target, target_shardings = lora.strip(target), lora.strip(target_shardings)
    if quantize.is_quantized(target):  # QLoRA: the float base is read (then quantized)
      dtype = _model_cfg(module).weight_dtype
      target, target_shardings = (quantize.float_twin(target, dtype),
                                  quantize.float_twin(target_shardings, dtype))
    params = checkpoint.restore_params(os.path.join(config.init_from, "checkpoints"),
                                       target, target_shardings)
    logging.info("initialised %s from %s", init_subtree or "parameters", config.init_from)
    if init_subtree:
      params = {init_subtree: params}
  if params is not None and quantize.is_quantized(abstract.params):  # float kernels -> int8
    params = quantize.quantize(params, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract.params,
        shardings.params))
  if params is not None:
    params = _with_fresh(params, abstract.params, init_params, shardings.params, mesh, rules,
                         config.seed, fresh=lambda p: lora.is_adapter(p) or bool(
                             init_subtree and p[0] != init_subtree))
  state, shardings = state_lib.create_state(init_params, tx, mesh, rules, config.seed, params)
  train_step = step_lib.make_train_step(
      loss, tx=tx, state_shardings=shardings, mesh=mesh, rules=rules, schedule=schedule,
      microbatches=config.optimizer.get("grad_accum_steps", 1), trainable=mask, donate=donate)
  eval_step = step_lib.make_eval_step(loss, params_sharding=shardings.params, mesh=mesh,
                                      rules=rules) if evaluate else None
  meta = {"lora_alpha": lora_alpha(module)} if adapters else {}
  return Trainer(mesh, rules, tx, schedule, state, shardings, abstract, train_step, eval_step,
                 meta)


def _with_fresh(params, abstract, init_params, shardings, mesh, rules, seed, fresh):
  """`params` completed with what it lacks and `fresh` allows (the adapters, B = 0;
  a fresh head) as a fresh init gives them; nothing else is computed."""
  have = set(flax.traverse_util.flatten_dict(params))
  missing = {k for k in flax.traverse_util.flatten_dict(abstract) if k not in have and fresh(k)}
  if not missing:
    return params
  return lora.fill(state_lib.init_params(init_params, shardings, mesh, rules, seed,
                                         only=lambda p: p in missing), params)


def _model_cfg(module):
  """The DecoderConfig of a decoder, a scalar model or an actor-critic (its policy's:
  they share config.model's adapters)."""
  return getattr(module, "cfg", None) or module.policy.cfg


def lora_alpha(module) -> float:
  return float(_model_cfg(module).lora_alpha)
