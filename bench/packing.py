"""Packed against padded comparison batches: DPO and reward-model steps; prints JSON.

  python bench/packing.py                 # small preset, ~3 min on 2 CPU cores
  python bench/packing.py --pairs=32 --seq_len=1024

A batch of `pairs` pairs with HH-like uneven lengths (Anthropic HH-RLHF: most
exchanges short, a long tail): prompt and response lengths drawn log-normally
(medians `prompt_median` and `response_median` tokens), cut so a row fits
`seq_len`. Padded: the Bx2x`seq_len` layout; packed: the same sequences end to
end in the fewest rows first fit finds (`research/data/packing.py`). Each side
runs the gradient of the loss (the DPO step's forward and backward, reference
log-probs given; the reward model's ranking loss) after compiling; both must
give the same loss. Tokens/s counts real tokens; medians of `repeats`
alternating rounds, with freed memory kept (`research/host_memory.py`) as
research.main runs training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# The repository root, for `research` when run as `python bench/X.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import host_memory
from research.data import packing
from research.models import config as model_config
from research.models.decoder import Decoder
from research.models.heads import ScalarModel
from research.objectives import dpo, reward
import batches  # bench/batches.py; bench/ is on sys.path when run as a script
import timing


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--pairs", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--prompt_median", type=int, default=40)
  parser.add_argument("--response_median", type=int, default=60)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # as research.main does, before JAX starts

  cfg = model_config.DecoderConfig(**{**model_config.preset(args.preset),
                                      "max_len": max(args.seq_len, 256)})
  batch = batches.hh_like_pairs(np.random.default_rng(0), args.pairs, args.seq_len,
                                cfg.vocab_size, args.prompt_median, args.response_median)
  lengths = packing.sequence_lengths(batch)
  rows = packing.rows_needed(lengths, args.seq_len)
  packed = packing.pack(batch, rows)
  config = ml_collections.ConfigDict({"objective": {"beta": 0.1, "label_smoothing": 0.0,
                                                    "nll_coef": 0.0, "margin": 0.0,
                                                    "center_coef": 0.0}})
  results = []
  for stage, model, fn in (("dpo", Decoder(cfg), dpo.dpo_fn),
                           ("reward", ScalarModel(cfg), reward.loss_fn)):
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
    grad = jax.jit(jax.value_and_grad(
        lambda p, b, fn=fn, model=model: fn(p, b, None, model=model, config=config)[0]))
    inputs = {"padded": batch, "packed": packed}
    losses = {name: float(jax.block_until_ready(grad(params, b))[0]) for name, b in inputs.items()}
    times = {name: [] for name in inputs}
    for _ in range(args.repeats):
      for name, b in inputs.items():
        start = time.perf_counter()
        jax.block_until_ready(grad(params, b))
        times[name].append(time.perf_counter() - start)
    row = {"stage": stage, "pairs": args.pairs, "seq_len": args.seq_len,
           "real_tokens": int(lengths.sum()), "padded_rows": int(lengths.size),
           "packed_rows": rows, "loss_padded": losses["padded"], "loss_packed": losses["packed"]}
    results.append(timing.add_rates(row, times, int(lengths.sum()), "padded", "packed", 4))
    print(json.dumps(row), flush=True)
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "packing", "preset": args.preset,
                    "parameters": cfg.num_params(), "length_percentiles_10_50_90": [
                        int(x) for x in np.percentile(lengths, [10, 50, 90])],
                    "platform": dev.platform, "device_kind": dev.device_kind,
                    "cpus": os.cpu_count(), "host": platform.node(), "results": results},
                   indent=2))


if __name__ == "__main__":
  main()
