"""Objectives by name. A new objective is one pure function plus one entry here.

Every entry has the signature `loss_fn(params, batch, rng, *, model, config) ->
(loss, metrics)` and depends on arrays only: quantities from frozen models
(reference log-probs, old values, advantages) arrive in the batch.
"""

from __future__ import annotations

from typing import Callable

from research.objectives import clm, dpo, policy_gradient, reward

LOSSES: dict[str, Callable] = {
    "clm": clm.loss_fn,
    "reward": reward.loss_fn,
    **dpo.LOSSES,  # dpo, cdpo, ipo, slic, simpo, orpo
    **policy_gradient.LOSSES,  # ppo, a2c
}


def register(name: str, fn: Callable | None = None):
  """`register('my_loss', fn)` or `@register('my_loss')`; re-registering overwrites."""
  def add(f):
    LOSSES[name] = f
    return f
  return add(fn) if fn is not None else add


def get(name: str) -> Callable:
  if name not in LOSSES:
    raise ValueError(f"config.objective.name={name!r} is not registered; known: {sorted(LOSSES)}")
  return LOSSES[name]
