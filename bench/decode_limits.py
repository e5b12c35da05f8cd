"""Greedy decoding against this machine's two limits, all measured in one run; prints JSON.

  python bench/decode_limits.py                 # small preset, 64 x 256 and 1 x 256, ~2 min
  python bench/decode_limits.py --shapes=64x256 --rounds=5

For each batch B the static sampler (`research.sampling.Sampler`, KV cache,
16-token prompts, EOS off) decodes `new` tokens per row; tokens/s counts them.
Beside it, in the same process:

  GEMM floor    one decode step's matmuls alone, at this batch: every layer's
                q / k / v / out projections and the MLP's, then the
                unembedding, as B x D GEMMs on the preset's weight shapes, in
                one jitted function (no attention, norms, RoPE, sampling or cache
                writes). B / its time is the most tokens/s a step built of these
                GEMMs could reach; `of_gemm_floor` is the sampler's share of it.
  DRAM limit    a decode step reads every weight once (the unembedding's
                included) and the filled part of the KV cache (grown in the
                sampler's 64-token segments); the read bandwidth is XLA's sum
                over a 512 MiB float32 array. B / (bytes / bandwidth) is the most
                tokens/s memory allows; `of_dram_limit` is the sampler's share.

At batch 64 the GEMM floor binds (each weight read serves 64 rows); at batch 1
the DRAM limit does (2 FLOPs per weight read). Issue 30's targets: >= 0.8 of the
GEMM floor at 64 x 256 and of the DRAM limit at 1 x 256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# The repository root, for `research` when run as `python bench/X.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.models import config as model_config
from research.models.decoder import Decoder

PROMPT_TOKENS = 16


def _median_seconds(fn, rounds: int) -> float:
  jax.block_until_ready(fn())  # compile / warm up
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_weights(params: dict, cfg) -> list[jax.Array]:
  """Every weight a decode step multiplies by, as an in x out matrix: the
  kernels (attention's `out` takes heads x head_dim in; the others one input
  dimension), each layer's separately, and the tied unembedding (D x V)."""
  mats = []
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, "key", "") for k in path]
    if names[-1] != "kernel":
      continue
    layers = [w] if not (cfg.scan_layers and "layers" in names) else list(w)
    for x in layers:
      split = 2 if "out" in names and "attention" in names else 1
      mats.append(x.reshape(int(np.prod(x.shape[:split])), -1))
  if cfg.tie_embeddings:
    mats.append(params["embedding"].T)
  return mats


def gemm_floor_seconds(mats, batch: int, rounds: int) -> float:
  """One call of all the step's GEMMs at this batch (inputs drawn at random)."""
  keys = jax.random.split(jax.random.PRNGKey(1), len(mats))
  xs = [jax.random.normal(k, (batch, w.shape[0]), w.dtype) for k, w in zip(keys, mats)]
  mats = [jnp.asarray(w) for w in mats]
  gemms = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
  return _median_seconds(lambda: gemms(xs, mats), rounds)


def read_bandwidth(rounds: int, mib: int = 512) -> float:
  """Bytes/s of XLA reading a large float32 array once (a sum)."""
  big = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  return big.nbytes / _median_seconds(lambda: total(big), rounds)


def kv_bytes_read(cfg, batch: int, new: int, segment: int) -> float:
  """Mean KV-cache bytes a step reads: the slots filled so far, rounded up to the
  sampler's segments, times keys and values of every layer."""
  ends = sampling.segment_ends(new, segment)
  slots = [PROMPT_TOKENS + next(e for e in ends if e > t) for t in range(new)]
  per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4 * batch
  return float(np.mean(slots)) * per_slot


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--shapes", default="64x256,1x256", help="batch x new tokens")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  cfg = model_config.DecoderConfig(**model_config.preset(args.preset))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  stored = matmul_weights(params, cfg)
  weight_bytes = sum(w.size * w.dtype.itemsize for w in stored)  # what a step reads
  mats = [w.astype(cfg.compute_dtype) for w in stored]  # what its GEMMs multiply
  n_weights = sum(w.size for w in mats)
  bandwidth = read_bandwidth(args.rounds * 3)
  sampler = sampling.Sampler(model, eos_id=-1, pad_id=0)
  rows = []
  for shape in args.shapes.split(","):
    batch, new = map(int, shape.split("x"))
    prompts = np.random.default_rng(0).integers(4, cfg.vocab_size, (batch, PROMPT_TOKENS))
    cfg_s = sampling.SamplingConfig(new, greedy=True)
    decode_s = _median_seconds(
        lambda: sampler(params, prompts, jax.random.PRNGKey(0), cfg_s).tokens, args.rounds)
    gemm_s = gemm_floor_seconds(mats, batch, args.rounds * 10)
    step_bytes = weight_bytes + kv_bytes_read(cfg, batch, new, sampler.segment)
    tok_s = batch * new / decode_s
    floor_tok_s, dram_tok_s = batch / gemm_s, batch * bandwidth / step_bytes
    rows.append({"batch": batch, "new_tokens": new, "decode_s": round(decode_s, 3),
                 "tokens_per_sec": round(tok_s, 1), "step_ms": round(1e3 * decode_s / new, 3),
                 "gemm_floor_step_ms": round(1e3 * gemm_s, 3),
                 "gemm_floor_gflops": round(2 * batch * n_weights / gemm_s / 1e9, 1),
                 "gemm_floor_tokens_per_sec": round(floor_tok_s, 1),
                 "of_gemm_floor": round(tok_s / floor_tok_s, 3),
                 "step_bytes_read": int(step_bytes),
                 "dram_limit_tokens_per_sec": round(dram_tok_s, 1),
                 "of_dram_limit": round(tok_s / dram_tok_s, 3)})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "decode_limits", "preset": args.preset,
                    "parameters": cfg.num_params(), "weight_bytes": int(weight_bytes),
                    "read_bandwidth_gb_per_sec": round(bandwidth / 1e9, 1),
                    "platform": dev.platform, "device_kind": dev.device_kind,
                    "cpus": os.cpu_count(), "host": platform.node(), "results": rows},
                   indent=2))


if __name__ == "__main__":
  main()
