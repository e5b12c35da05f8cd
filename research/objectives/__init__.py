"""Objectives by name: losses and RL advantage estimators, one registry for both.

A new objective is one pure function plus one `register` call, chosen by a
config string: `config.objective.name` (a loss) or `config.objective.advantage`
(an advantage estimator of the online stage).

Losses have the signature `loss_fn(params, batch, rng, *, model, config) ->
(loss, metrics)` and depend on arrays only: quantities from frozen models
(reference log-probs, old values, advantages) arrive in the batch. An online
loss declares the rollout arrays its minibatch needs (`batch_keys`, a tuple or
a function of the config); a preference loss declares whether it needs the
reference model (`reference_free`) and whether it reads unpaired examples
(`unpaired`) rather than pairs.

Advantage estimators have the signature `estimator(inputs, *, config) ->
(advantages_BxT, returns_BxT)` over the rollout arrays of `advantages.Inputs`;
`needs_critic` says whether they read the critic's values.

A module that registers objectives can be named in `config.imports`
(comma-separated): `research.main` and the experiment runner import it before
the stage runs, so `--config.imports=my_pkg.my_loss` works from the CLI and in
every sweep point.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from research.errors import ConfigError

KINDS = ("loss", "advantage")


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered function and what the stages need to know about it."""
  name: str
  fn: Callable
  kind: str = "loss"
  batch_keys: Any = ()           # online losses: tuple, or config -> tuple
  reference_free: bool = False   # preference losses that never read reference log-probs
  unpaired: bool = False         # preference losses on unpaired examples (KTO), not pairs
  single_pass: bool = False      # on-policy losses: one pass over each rollout
  needs_critic: bool = False     # advantage estimators that read the critic's values
  min_group_size: int = 1        # advantage estimators that compare a prompt's G responses

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def keys(self, config) -> tuple[str, ...]:
    return tuple(self.batch_keys(config) if callable(self.batch_keys) else self.batch_keys)


REGISTRY: dict[str, dict[str, Objective]] = {kind: {} for kind in KINDS}
LOSSES = REGISTRY["loss"]
ADVANTAGES = REGISTRY["advantage"]
_CONFIG_KEY = {"loss": "config.objective.name", "advantage": "config.objective.advantage"}


def register(name: str, fn: Callable | None = None, *, kind: str = "loss", **properties):
  """`register('my_loss', fn, ...)` or `@register('my_adv', kind='advantage')`;
  `properties` are `Objective` fields. Re-registering a name overwrites it."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {KINDS}")

  def add(f):
    REGISTRY[kind][name] = Objective(name, getattr(f, "fn", f), kind, **properties)
    return f
  return add(fn) if fn is not None else add


def get(name: str, kind: str = "loss") -> Objective:
  table = REGISTRY[kind]
  if name not in table:
    raise ConfigError(f"{_CONFIG_KEY[kind]}={name!r} is not a registered {kind}; known: "
                      f"{sorted(table)} (a module that registers more can be listed in "
                      f"config.imports)")
  return table[name]


def import_modules(config) -> list[str]:
  """Imports the modules named in `config.imports` (comma-separated), which
  register their objectives as a side effect."""
  names = [m.strip() for m in str(config.get("imports", "") or "").split(",") if m.strip()]
  for module in names:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ImportError(f"config.imports: cannot import {module!r} ({e}); is it on the Python "
                        f"path (the working directory, or an installed package)?") from e
  return names


# The built-in objectives register themselves on import.
from research.objectives import advantages, clm, dpo, policy_gradient, reward  # pylint: disable=g-import-not-at-top,wrong-import-position

def _register_all(table: dict, kind: str = "loss", **common) -> None:
  for name, spec in table.items():
    register(name, spec["fn"], kind=kind, **common,
             **{k: v for k, v in spec.items() if k != "fn"})


register("clm", clm.loss_fn)
register("reward", reward.loss_fn)
_register_all(dpo.LOSSES)
_register_all(policy_gradient.LOSSES, batch_keys=policy_gradient.batch_keys)
_register_all(advantages.ESTIMATORS, kind="advantage")
