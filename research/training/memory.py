"""A lower bound on a train step's memory, checked before anything is allocated.

A config that cannot fit (a `data.seq_len` of 100,000 asks the attention of a
16-row batch for terabytes) should be refused in one line up front, not by an
allocator after the first step. The bound counts only what the step must hold
at once: the attention probabilities autodiff keeps for the backward pass (the
causal half of L x L per head, per layer unless layers are rematerialised) and
the logits with their gradient, per device, for one microbatch; parameters and
optimizer state on top. Everything else the step needs comes in addition, so a
config refused here is sure not to fit.
"""

from __future__ import annotations

import os

import jax

from research.errors import ConfigError

GIB = 2 ** 30


def available_bytes() -> tuple[int, str]:
  """(bytes, what): an accelerator's memory limit per device, or on a CPU the host's
  memory shared by all of its (simulated) devices, per device."""
  device = jax.local_devices()[0]  # another process's devices have no stats here
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"the {device.device_kind} memory per device"
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return total // max(jax.local_device_count(), 1), "this host's memory per CPU device"


def step_lower_bound(model_cfg, *, rows: int, seq_len: int, batch_ways: int, tensor_ways: int,
                     microbatches: int = 1, remat: str = "none", logits: bool = True) -> int:
  """Bytes per device that one train step certainly holds (see the module doc);
  `logits=False` for a scalar head (a reward model has none)."""
  rows = max(rows // max(microbatches, 1) // max(batch_ways, 1), 1)
  heads = max(model_cfg.num_heads // max(tensor_ways, 1), 1)
  layers = 1 if remat != "none" else model_cfg.num_layers
  probs = layers * rows * heads * seq_len * (seq_len + 1) // 2 * 4      # float32, causal half
  # The logits and their gradient, the vocabulary split over the tensor axis; with
  # `vocab_chunk`, those of that many positions of each row at a time.
  positions = min(seq_len, getattr(model_cfg, "vocab_chunk", 0) or seq_len)
  vocab = 2 * rows * positions * -(-model_cfg.vocab_size // max(tensor_ways, 1)) * 4 \
      if logits else 0
  return probs + vocab


def activation_bytes(model_cfg, *, rows: int, seq_len: int, batch_ways: int, tensor_ways: int,
                     microbatches: int = 1) -> int:
  """An estimate of the activations one step keeps for its backward pass, per
  device, for one microbatch (in the manner of Korthikanti et al. 2022, sec. 4.1,
  counted for this decoder). Per token and layer, in the compute dtype: the
  norms' and projections' inputs (4 d), q/k/v and the attention output
  ((2 h + 2 k) e), the MLP's gate, up and hidden (3 f), and the attention
  probabilities in float32 (h s, the causal half). `remat` keeps less: 'full'
  the layer inputs only (plus one layer's worth, recomputed in the backward),
  'dots' the matmul outputs, 'dots_no_batch' those without the attention's
  batched dots. The logits and their gradient come on top (`step_lower_bound`)."""
  c = model_cfg
  rows = max(rows // max(microbatches, 1) // max(batch_ways, 1), 1)
  t = max(tensor_ways, 1)
  h, k = max(c.num_heads // t, 1), max(c.num_kv_heads // t, 1)
  e, d, f = c.head_dim, c.d_model, -(-c.mlp_dim // t)
  width = 2 if c.dtype in ("bfloat16", "float16") else 4
  probs = 4 * h * (seq_len + 1) // 2
  full = width * (4 * d + (2 * h + 2 * k) * e + 3 * f) + probs
  dots = width * ((h + 2 * k) * e + 2 * d + 2 * f)
  per_token_layer = {"none": full, "dots": dots + probs, "dots_no_batch": dots,
                     "full": width * d}.get(c.remat, full)
  layers = c.num_layers * per_token_layer + (full if c.remat == "full" else 0)
  return rows * seq_len * layers


def check_step_fits(config, model_cfg, *, rows: int, seq_len: int, batch_ways: int,
                    tensor_ways: int, state_bytes: int = 0, logits: bool = True) -> None:
  """Raises ConfigError when the lower bound (+ `state_bytes`) exceeds the memory."""
  need = step_lower_bound(model_cfg, rows=rows, seq_len=seq_len, batch_ways=batch_ways,
                          tensor_ways=tensor_ways,
                          microbatches=config.optimizer.get("grad_accum_steps", 1),
                          remat=model_cfg.remat, logits=logits) + state_bytes
  have, what = available_bytes()
  if need > have:
    raise ConfigError(
        f"a train step needs at least {need / GIB:,.1f} GiB per device ({rows} rows of "
        f"config.data.seq_len={seq_len}: attention over {seq_len}x{seq_len} positions and "
        f"{model_cfg.vocab_size}-way logits), more than {what} ({have / GIB:,.1f} GiB); lower "
        f"config.data.seq_len or config.data.batch_size, raise "
        f"config.optimizer.grad_accum_steps, set config.model.remat='full', or shard over "
        f"more devices")
