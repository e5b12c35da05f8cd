"""Reward functions by name, chosen and weighted in the config.

  --config.reward.source=functions --config.reward.functions="math:1.0,format:0.1"

A reward function scores one response: `fn(prompt, response, record, options) ->
float`, where `record` is the data record the prompt came from (its reference
fields: `answer`, `solution`, `tests`, ...) and `options` is `config.reward` (the
functions' settings, e.g. `math_tolerance`). A batched function (`batched=True`)
takes the lists `(prompts, responses, records, options)` and returns one score
per response (the `remote` function sends a whole batch at once). `fields` names
the record fields a function needs: records without them are refused before
training, naming the record.

Built in (importing this package registers them): `math`, `exact`, `regex`,
`format` (`checks.py`), `code` (`code.py`, a sandbox), `remote` (`remote.py`).
A module that registers more is named in `config.imports`, as for objectives:

  from research import rewards

  @rewards.register("brevity")
  def brevity(prompt, response, record, options):
    return -len(response) / 1000
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """A registered reward function and what the stages need to know about it."""
  name: str
  fn: Callable
  fields: tuple[str, ...] = ()   # record fields it reads (checked before training)
  batched: bool = False          # fn(prompts, responses, records, options) -> scores


REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, fn: Callable | None = None, *, fields=(), batched: bool = False):
  """`register('name', fn)` or `@register('name', fields=('answer',))`; a name
  registered again is replaced, with a warning."""
  def add(f):
    if name in REGISTRY and REGISTRY[name].fn is not f:
      logging.warning("reward function %r registered again: the new one replaces it", name)
    REGISTRY[name] = RewardSpec(name, f, tuple(fields), batched)
    return f
  return add(fn) if fn is not None else add


def get(name: str) -> RewardSpec:
  if name not in REGISTRY:
    raise ConfigError(f"config.reward.functions: {name!r} is not a registered reward function; "
                      f"known: {sorted(REGISTRY)} (a module that registers more can be listed "
                      f"in config.imports)")
  return REGISTRY[name]


def parse(spec: str) -> list[tuple[RewardSpec, float]]:
  """'math:1.0,format:0.1' -> [(math, 1.0), (format, 0.1)]; a name alone weighs 1."""
  out = []
  for part in (p.strip() for p in str(spec or "").split(",")):
    if not part:
      continue
    name, _, weight = part.partition(":")
    try:
      w = float(weight) if weight.strip() else 1.0
    except ValueError:
      raise ConfigError(f"config.reward.functions={spec!r}: weight {weight!r} of {name!r} is "
                        f"not a number (expected NAME:WEIGHT,...)") from None
    out.append((get(name.strip()), w))
  if not out:
    raise ConfigError("config.reward.functions is empty; name at least one, e.g. 'math' or "
                      "'math:1.0,format:0.1'")
  return out


# The built-in functions register themselves on import.
from research.rewards import checks, code, remote  # noqa: E402,F401  (they register)
