"""Generation throughput: the KV-cache sampler against the no-cache greedy loop.

  python bench/sampling.py                                   # small preset
  python bench/sampling.py --preset=tiny --batches=1,8 --new_tokens=64

Prints one JSON document. EOS is disabled so every row generates exactly
`new_tokens`. The no-cache loop re-runs the full forward over the fixed
(prompt + new_tokens) buffer for every token, compiled once; it is timed for
batches up to --uncached_max_batch (it is O(N^2) and slow by design).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import platform
import time

# The repository root, for `configs` and `research` when run as `python bench/X.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.models import config as model_config
from research.models.decoder import Decoder

PROMPT_TOKENS = 16


def _timed(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--batches", default="1,8,64")
  parser.add_argument("--new_tokens", default="128,256")
  parser.add_argument("--uncached_max_batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  cfg = model_config.DecoderConfig(**model_config.preset(args.preset))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  no_eos = -1
  sampler = sampling.Sampler(model, eos_id=no_eos, pad_id=0, bucket=PROMPT_TOKENS)
  logits_fn = jax.jit(lambda p, t: model.apply({"params": p}, t))
  rng = np.random.default_rng(0)
  rows = []
  for n in map(int, args.new_tokens.split(",")):
    for b in map(int, args.batches.split(",")):
      prompts = rng.integers(4, cfg.vocab_size, (b, PROMPT_TOKENS)).astype(np.int32)
      lengths = np.full((b,), PROMPT_TOKENS, np.int32)
      sample_cfg = sampling.SamplingConfig(n, greedy=True)
      before = sampler.compilations()
      call = lambda: sampler(params, prompts, jax.random.PRNGKey(0), sample_cfg, lengths=lengths)
      call()  # compile
      cached_s = _timed(call, args.repeats)
      # Other prompts of the same bucket must reuse the compiled program.
      other = rng.integers(4, cfg.vocab_size, (b, PROMPT_TOKENS)).astype(np.int32)
      sampler(params, other, jax.random.PRNGKey(1), sample_cfg, lengths=lengths - 3)
      row = {"batch": b, "new_tokens": n, "cached_s": cached_s,
             "cached_tokens_per_sec": b * n / cached_s,
             "compilations_for_this_bucket": sampler.compilations() - before}
      if b <= args.uncached_max_batch:
        uncached = lambda: sampling.greedy_uncached(
            lambda p, t: logits_fn(p, t), params, prompts, lengths, n, no_eos)
        uncached_s = _timed(uncached, 1)
        row.update(uncached_s=uncached_s, uncached_tokens_per_sec=b * n / uncached_s,
                   speedup=uncached_s / cached_s)
        same = np.array_equal(np.asarray(call().tokens), uncached()[0])
        row["same_tokens_as_uncached"] = bool(same)
      rows.append(row)
      print(json.dumps(row), flush=True)
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "sampling", "preset": args.preset,
                    "parameters": cfg.num_params(), "prompt_tokens": PROMPT_TOKENS,
                    "platform": dev.platform, "device_kind": dev.device_kind,
                    "host": platform.node(), "results": rows}, indent=2))


if __name__ == "__main__":
  main()
