"""Rollouts of uneven length: continuous batching against static batches; prints JSON.

  python bench/continuous_batching.py                  # small preset, ~3 min on 2 cores
  python bench/continuous_batching.py --rows=256 --slots=64 --new_tokens=256
  python bench/continuous_batching.py --samples=8 --distributions=uneven   # RL groups

`rows` prompts (16 tokens each), greedy, through `slots` rows of KV cache:
static: `Sampler` on `slots` rows at a time, each batch decoding until its
longest row ends; continuous: `ContinuousSampler` with `slots` slots, a row's
slot refilled with the next prompt when it ends. Same memory for the cache on
both sides. The response lengths are imposed as per-row budgets
(`max_new_per_row`; EOS off), drawn from:

  uneven    half the rows end within 16 tokens (uniform 1..16), the rest run to
            `new_tokens`: an RL-with-checkable-answers batch where many answers
            are short and some reasoning runs to the limit
  full      every row runs to `new_tokens` (where continuous batching has
            nothing to gain: is anything lost?)

Both sides must return the same tokens (checked). Tokens/s counts generated
tokens; medians of `repeats` alternating rounds after a compiling call.
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
import numpy as np

from research import continuous_batching, sampling
from research.models import config as model_config
from research.models.decoder import Decoder
import timing  # bench/timing.py; bench/ is on sys.path when run as a script


def budgets(kind: str, rows: int, new_tokens: int, rng) -> np.ndarray:
  if kind == "full":
    return np.full(rows, new_tokens, np.int32)
  short = rng.integers(1, 17, rows // 2)
  out = np.concatenate([short, np.full(rows - rows // 2, new_tokens)]).astype(np.int32)
  return rng.permutation(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--rows", type=int, default=128)
  parser.add_argument("--slots", type=int, default=64)
  parser.add_argument("--refill", type=int, default=0, help="0: an eighth of the slots")
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--distributions", default="uneven,full")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--samples", type=int, default=1,
                      help="samples per prompt (RL groups): rows / samples prompts")
  args = parser.parse_args()
  g = args.samples
  if args.rows % g or args.slots % g:
    parser.error("--rows and --slots must be multiples of --samples")

  cfg = model_config.DecoderConfig(**model_config.preset(args.preset))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  sample_cfg = sampling.SamplingConfig(args.new_tokens, greedy=True)
  rng = np.random.default_rng(0)
  prompts = rng.integers(4, cfg.vocab_size, (args.rows // g, 16)).astype(np.int32)
  lengths = np.full(args.rows // g, 16, np.int32)
  per_batch = args.slots // g  # prompts per static batch
  static = sampling.Sampler(model, eos_id=-1, pad_id=0)
  continuous = continuous_batching.ContinuousSampler(model, eos_id=-1, pad_id=0,
                                                     slots=args.slots, refill=args.refill)
  results = []
  for kind in args.distributions.split(","):
    limits = budgets(kind, args.rows, args.new_tokens, rng)

    def run_static():
      parts = [static(params, prompts[i:i + per_batch], jax.random.PRNGKey(0), sample_cfg,
                      lengths=lengths[i:i + per_batch], samples_per_prompt=g,
                      max_new_per_row=limits[i * g:(i + per_batch) * g])
               for i in range(0, len(prompts), per_batch)]
      return np.concatenate([np.asarray(p.tokens) for p in parts])

    def run_continuous():
      return np.asarray(continuous(params, prompts, jax.random.PRNGKey(0), sample_cfg,
                                   lengths=lengths, samples_per_prompt=g,
                                   max_new_per_row=limits).tokens)

    differ = (run_static() != run_continuous()).any(1)  # also compiles both
    times = {"static": [], "continuous": []}
    for _ in range(args.repeats):
      for name, fn in (("static", run_static), ("continuous", run_continuous)):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    row = {"distribution": kind, "rows": args.rows, "samples_per_prompt": g, "slots": args.slots,
           "new_tokens": args.new_tokens, "generated_tokens": int(limits.sum()),
           "mean_length": float(limits.mean()), "same_tokens": not differ.any(),
           "rows_differing": int(differ.sum()),
           "static_steps": sum(int(limits[i:i + args.slots].max())
                               for i in range(0, args.rows, args.slots)),
           "continuous_steps": continuous.steps,
           "continuous_prefilled_rows": continuous.prefilled_rows,
           "cache_resizes": len(continuous.capacities) - 1,
           "compilations": continuous.compilations()}
    results.append(timing.add_rates(row, times, int(limits.sum()), "static", "continuous"))
    print(json.dumps(row), flush=True)
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "continuous_batching", "preset": args.preset,
                    "parameters": cfg.num_params(), "refill": continuous.refill,
                    "platform": dev.platform, "device_kind": dev.device_kind,
                    "cpus": os.cpu_count(), "host": platform.node(),
                    "results": results}, indent=2))


if __name__ == "__main__":
  main()
