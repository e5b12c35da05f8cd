"""Up-front checks of a run's config: one table, each failure naming the key and
what it allows. `runs.resolve` calls `check` before anything is written to a
workdir, so a bad value never leaves a half-written run behind.
"""

from __future__ import annotations

from typing import Any, Callable

from research.errors import ConfigError  # pylint: disable=unused-import (re-exported)



def _int_at_least(low: int) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number_in(low: float, high: float, *, high_open: bool = True) -> Callable[[Any], bool]:
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return False
    return low <= v < high if high_open else low <= v <= high
  return ok


_AXIS = lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)
INF = float("inf")

# key -> (check, what it allows). Keys a config does not have are skipped.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "train.steps": (_int_at_least(0), "an integer >= 0"),
    "train.log_every": (_int_at_least(1), "an integer >= 1"),
    "train.checkpoint_every": (_int_at_least(1), "an integer >= 1"),
    "train.eval_every": (_int_at_least(0), "an integer >= 0 (0: no periodic evaluation)"),
    "train.eval_batches": (_int_at_least(1), "an integer >= 1"),
    "train.max_to_keep": (_int_at_least(1), "an integer >= 1 (0 would delete every checkpoint)"),
    "optimizer.lr": (_number_in(0, INF), "a number >= 0"),
    "optimizer.warmup_steps": (_int_at_least(0), "an integer >= 0"),
    "optimizer.min_lr_ratio": (_number_in(0, 1, high_open=False), "in [0, 1]"),
    "optimizer.b1": (_number_in(0, 1), "in [0, 1)"),
    "optimizer.b2": (_number_in(0, 1), "in [0, 1)"),
    "optimizer.eps": (lambda v: _number_in(0, INF)(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (_number_in(0, INF), "a number >= 0"),
    "optimizer.grad_clip_norm": (_number_in(0, INF), "a number >= 0 (0: no clipping)"),
    "optimizer.grad_accum_steps": (_int_at_least(1), "an integer >= 1"),
    "data.seq_len": (_int_at_least(2), "an integer >= 2"),
    "data.max_prompt_len": (_int_at_least(0), "an integer >= 0 (0: no cap of its own)"),
    "data.prompt_overflow": (lambda v: v in ("truncate_left", "drop"), "'truncate_left' or 'drop'"),
    "model.vocab_size": (_int_at_least(8), "an integer >= 8"),
    "data.batch_size": (_int_at_least(1), "an integer >= 1"),
    "data.holdout_every": (_int_at_least(2), "an integer >= 2 (every n-th record is held out)"),
    "data.corpus_size": (_int_at_least(1), "an integer >= 1"),
    "data.packed_rows": (_int_at_least(0), "an integer >= 0 (0: from the data)"),
    "mesh.data": (_AXIS, "-1 (the remaining devices) or an integer >= 1"),
    "mesh.fsdp": (_AXIS, "-1 (the remaining devices) or an integer >= 1"),
    "mesh.tensor": (_AXIS, "-1 (the remaining devices) or an integer >= 1"),
    "mesh.num_devices": (_AXIS, "-1 (all devices) or an integer >= 1"),
    "ppo.epochs": (_int_at_least(1), "an integer >= 1"),
    "ppo.minibatch_size": (_int_at_least(1), "an integer >= 1"),
    "rollout.samples_per_prompt": (_int_at_least(1), "an integer >= 1"),
    "rollout.max_new_tokens": (_int_at_least(1), "an integer >= 1"),
    "rollout.max_draws": (_int_at_least(1), "an integer >= 1"),
    "rollout.slots": (_int_at_least(0), "an integer >= 0 (0: every row in one batch)"),
    "objective.tis_cap": (_number_in(0, INF), "a number >= 0 (0: off)"),
    "objective.overlong_buffer": (_int_at_least(0), "an integer >= 0 (0: off)"),
    "objective.overlong_penalty": (_number_in(0, INF), "a number >= 0"),
    "evaluate.pass_k_samples": (_int_at_least(1), "an integer >= 1"),
}


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return None, False
    node = node[part]
  return node, True


def _ints(config, *keys: str) -> tuple[int, ...] | None:
  """The values of `keys` when every one is present and an int (not a bool), else None:
  what a check between two fields reads."""
  values = []
  for key in keys:
    value, found = _lookup(config, key)
    if not found or not isinstance(value, int) or isinstance(value, bool):
      return None
    values.append(value)
  return tuple(values)


def problems(config) -> list[str]:
  """Every failed check, as 'config.KEY=VALUE: must be ...'."""
  out = []
  for key, (ok, allowed) in CHECKS.items():
    value, found = _lookup(config, key)
    if found and not ok(value):
      out.append(f"config.{key}={value!r} must be {allowed}")
  if pair := _ints(config, "objective.overlong_buffer", "rollout.max_new_tokens"):
    buffer, new_tokens = pair
    if buffer > new_tokens:
      out.append(f"config.objective.overlong_buffer={buffer} must be at most "
                 f"config.rollout.max_new_tokens={new_tokens} (it would punish every response)")
  # RL counts optimizer updates instead of train.steps (stages/rlhf.py).
  if (pair := _ints(config, "optimizer.warmup_steps", "train.steps")) \
      and config.get("stage") != "rlhf":
    warmup, steps = pair
    if 0 < steps <= warmup:
      out.append(f"config.optimizer.warmup_steps={warmup} must be below the number of "
                 f"training steps (config.train.steps={steps})")
  if pair := _ints(config, "data.seq_len", "model.max_len"):
    seq_len, max_len = pair
    if seq_len > max_len:
      out.append(f"config.data.seq_len={seq_len} must be at most config.model.max_len="
                 f"{max_len} (the longest sequence the model is built for)")
  tensor, found = _lookup(config, "mesh.tensor")
  if found and isinstance(tensor, int) and tensor > 1 and "model" in config:
    for key in ("num_heads", "num_kv_heads"):
      heads = config.model.get(key)
      if isinstance(heads, int) and heads % tensor:
        out.append(f"config.mesh.tensor={tensor} must divide config.model.{key}={heads} "
                   f"(attention heads are split over the tensor axis)")
  return out


def check(config) -> None:
  """Raises ConfigError listing every problem of `config`."""
  found = problems(config)
  if found:
    raise ConfigError("; ".join(found))
