"""AdamW with linear warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from research.errors import ConfigError


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """0 -> lr over `warmup_steps`, then cosine to lr * min_lr_ratio at `total_steps`."""
  warmup = int(opt_cfg.warmup_steps)
  if warmup >= total_steps:
    raise ConfigError(f"config.optimizer.warmup_steps={warmup} must be below the number of "
                      f"training steps ({total_steps})")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_cfg.lr, warmup_steps=warmup,
      decay_steps=total_steps, end_value=opt_cfg.lr * opt_cfg.min_lr_ratio)


def _decay_mask(params):
  # Decay matrices only; norm scales (and any other vectors) are left alone.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_cfg, total_steps: int):
  """Returns (tx, schedule)."""
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  parts = []
  if opt_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule
