"""TrainState and its sharded initialisation.

Abstract init first (`jax.eval_shape`), logical specs -> NamedShardings, then a
jitted init with those `out_shardings`, so a 7B model is never materialised on
one device.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.training import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; per-step keys are fold_in(rng, step)


def init_fn(module: nn.Module, seq_len: int = 8) -> Callable:
  """rng -> boxed params of a module that takes token ids."""
  return lambda rng: module.init(rng, jnp.ones((1, seq_len), jnp.int32))["params"]


def _boxed_state(init_params: Callable, tx: optax.GradientTransformation, seed_key):
  init_key, step_key = jax.random.split(seed_key)
  params = init_params(init_key)  # boxed with logical names
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=step_key)


def abstract_state(init_params: Callable, tx, mesh, rules, seed: int):
  """(abstract unboxed state, its shardings) without allocating anything."""
  rng = jax.random.PRNGKey(seed)
  boxed = jax.eval_shape(lambda r: _boxed_state(init_params, tx, r), rng)
  shardings = partitioning.logical_shardings(boxed, mesh, rules)
  return nn.unbox(boxed), shardings


def init_params(init_params_fn: Callable, shardings, mesh, rules, seed: int,
                only: Callable[[tuple], bool] | None = None):
  """The parameters `create_state` would initialise (the same key), sharded, without
  an optimizer state. `only` (a parameter's path -> bool): just those, as a partial
  tree; the others are never computed (a fresh head or adapters beside a restored
  base)."""
  init_key = jax.random.split(jax.random.PRNGKey(seed))[0]
  pick = (lambda tree: tree) if only is None else (lambda tree: flax.traverse_util.unflatten_dict(
      {k: v for k, v in flax.traverse_util.flatten_dict(tree).items() if only(k)}))
  init = jax.jit(lambda r: pick(nn.unbox(init_params_fn(r))), out_shardings=pick(shardings))
  with partitioning.activate(mesh, rules):
    return init(init_key)


def create_state(init_params: Callable, tx, mesh, rules, seed: int, params=None):
  """Sharded TrainState. `params` (e.g. from an earlier stage) replaces the init."""
  abstract, shardings = abstract_state(init_params, tx, mesh, rules, seed)
  rng = jax.random.PRNGKey(seed)
  if params is None:
    init = jax.jit(lambda r: nn.unbox(_boxed_state(init_params, tx, r)), out_shardings=shardings)
    with partitioning.activate(mesh, rules):
      return init(rng), shardings
  _check_same_structure(abstract.params, params)
  params = jax.device_put(params, shardings.params)
  init = jax.jit(lambda p, r: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                         opt_state=tx.init(p), rng=jax.random.split(r)[1]),
                 out_shardings=shardings)
  with partitioning.activate(mesh, rules):
    return init(params, rng), shardings


def _check_same_structure(expected, given) -> None:
  exp = {jax.tree_util.keystr(p): (l.shape, l.dtype)
         for p, l in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(p): (l.shape, l.dtype)
         for p, l in jax.tree_util.tree_flatten_with_path(given)[0]}
  if exp.keys() != got.keys():
    missing, extra = sorted(exp.keys() - got.keys()), sorted(got.keys() - exp.keys())
    raise ConfigError(f"loaded parameters do not fit the model: missing {missing[:5]}, "
                      f"unexpected {extra[:5]}")
  bad = [(k, exp[k][0], got[k][0]) for k in exp if exp[k][0] != got[k][0]]
  if bad:
    raise ConfigError(f"loaded parameter shapes do not fit the model (path, expected, got): "
                      f"{bad[:5]}")
