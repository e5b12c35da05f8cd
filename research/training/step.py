"""The one step factory every objective trains through.

`loss_fn(params, batch, rng) -> (loss, metrics)` (an objective with its model
and config bound by `functools.partial`) becomes a jitted, sharded, donating
`step(state, batch) -> (state, metrics)`. PPO/A2C use it for their update
phase; CLM, SFT, reward fitting and DPO use it directly.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from research.training import partitioning
from research.training.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict]]


def _split_microbatches(batch: dict, n: int) -> dict:
  """B -> (n, B/n): microbatch i takes rows i, i+n, ... so it spans every shard."""
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"config.optimizer.grad_accum_steps={n}")
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _mean_metrics(stacked: dict) -> dict:
  # Counts (num_*) add up over microbatches; everything else is averaged.
  return {k: (v.sum(0) if k.startswith("num_") else v.mean(0)) for k, v in stacked.items()}


def grads_and_metrics(loss_fn: LossFn, params, batch: dict, rng, microbatches: int = 1):
  """Gradient of the mean loss; with microbatches, the mean of microbatch gradients."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (loss, metrics), grads = grad_fn(params, batch, rng)
    return grads, {**metrics, "loss": loss}

  def body(acc, xs):
    i, mb = xs
    (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, acc, grads), {**metrics, "loss": loss}

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, stacked = jax.lax.scan(
      body, zeros, (jnp.arange(microbatches), _split_microbatches(batch, microbatches)))
  grads = jax.tree.map(lambda g: g / microbatches, grads)
  return grads, _mean_metrics(stacked)


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, schedule=None, microbatches: int = 1,
               trainable=None):
  """One optimizer update; module-level so tests can call it without jit.
  `trainable` (a tree of bools like the params): only those are differentiated;
  the others' gradients are zero (never computed). Norms count real-valued leaves
  (an int8 base's codes are not weights)."""
  rng = jax.random.fold_in(state.rng, state.step)
  if trainable is None:
    grads, metrics = grads_and_metrics(loss_fn, state.params, batch, rng, microbatches)
  else:  # differentiate the trainable leaves only: a frozen one may be an integer (QLoRA)
    leaves, treedef = jax.tree.flatten(state.params)
    picked = [i for i, t in enumerate(jax.tree.leaves(trainable)) if t]

    def with_trainable(values):
      full = list(leaves)
      for i, value in zip(picked, values):
        full[i] = value
      return treedef.unflatten(full)

    some, metrics = grads_and_metrics(lambda values, b, r: loss_fn(with_trainable(values), b, r),
                                      [leaves[i] for i in picked], batch, rng, microbatches)
    grads = dict(zip(picked, some))
    grads = treedef.unflatten([grads[i] if i in grads else jnp.zeros_like(x)
                               for i, x in enumerate(leaves)])
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  real = lambda tree: [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  metrics = {**metrics, "grad_norm": optax.global_norm(real(grads)),
             "param_norm": optax.global_norm(real(params))}
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class CompiledStep:
  """A jitted function that enters the mesh and axis rules when called (tracing
  needs them), and can tell how many times it compiled."""

  def __init__(self, fn, mesh, rules):
    self._fn, self._mesh, self._rules = fn, mesh, rules

  def __call__(self, *args):
    with partitioning.activate(self._mesh, self._rules):
      return self._fn(*args)

  def lower(self, *args):
    with partitioning.activate(self._mesh, self._rules):
      return self._fn.lower(*args)

  def compilations(self) -> int:
    return self._fn._cache_size()


def make_train_step(loss_fn: LossFn, *, tx, state_shardings, mesh, rules, schedule=None,
                    microbatches: int = 1, donate: bool = True, trainable=None) -> CompiledStep:
  """jit(train_step) with the state's shardings in and out, batch over `batch`."""
  def step(state, batch):
    return train_step(state, batch, loss_fn=loss_fn, tx=tx, schedule=schedule,
                      microbatches=microbatches, trainable=trainable)
  # One sharding for the whole batch dict (a pytree prefix): `batch` on axis 0.
  batch_sharding = partitioning.data_sharding(mesh, rules, 1)
  fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
               out_shardings=(state_shardings, None),
               donate_argnums=(0,) if donate else ())
  return CompiledStep(fn, mesh, rules)


def make_eval_step(loss_fn: LossFn, *, params_sharding, mesh, rules) -> CompiledStep:
  """jit of the loss and metrics with no update (held-out evaluation)."""
  def evaluate(params, batch):
    loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0))
    return {**metrics, "loss": loss}
  batch_sharding = partitioning.data_sharding(mesh, rules, 1)
  fn = jax.jit(evaluate, in_shardings=(params_sharding, batch_sharding))
  return CompiledStep(fn, mesh, rules)
