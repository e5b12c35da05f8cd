"""RL-group generation: G samples per prompt with the prompt prefilled once vs G times.

  python bench/group_sampling.py                        # small preset
  python bench/group_sampling.py --prompt_tokens=64,256 --groups=4,8

GRPO/RLOO/best-of-n draw G responses per prompt. `Sampler(...,
samples_per_prompt=G)` prefills each prompt once and repeats its KV cache G
times; the baseline passes every prompt G times. Both draw the same tokens
(checked per row) up to float rounding. Temperature 1, EOS off (every row makes `new_tokens`). Prints
one JSON document; rollout tokens/s counts the new tokens.
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

from research import sampling
from research.models import config as model_config
from research.models.decoder import Decoder


def _seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--prompts", type=int, default=8, help="distinct prompts per call")
  parser.add_argument("--groups", default="8", help="samples per prompt, G")
  parser.add_argument("--prompt_tokens", default="32,256")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  cfg = model_config.DecoderConfig(**model_config.preset(args.preset))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  sample_cfg = sampling.SamplingConfig(args.new_tokens, temperature=1.0)
  rng = np.random.default_rng(0)
  rows = []
  for p in map(int, args.prompt_tokens.split(",")):
    sampler = sampling.Sampler(model, eos_id=-1, pad_id=0, bucket=p)
    for g in map(int, args.groups.split(",")):
      prompts = rng.integers(4, cfg.vocab_size, (args.prompts, p)).astype(np.int32)
      lengths = np.full((args.prompts,), p, np.int32)
      shared = lambda: sampler(params, prompts, jax.random.PRNGKey(0), sample_cfg,
                               lengths=lengths, samples_per_prompt=g)
      repeated = lambda: sampler(params, np.repeat(prompts, g, 0), jax.random.PRNGKey(0),
                                 sample_cfg, lengths=np.repeat(lengths, g))
      # Float rounding differs between prefills of 8 and 64 rows (~1e-6 in the
      # log-probs), so a draw near a CDF boundary can go either way: count rows.
      differ = (np.asarray(shared().tokens) != np.asarray(repeated().tokens)).any(1)
      times = {}
      for _ in range(args.repeats):  # alternate, so drift hits both alike
        for name, fn in (("repeated", repeated), ("shared", shared)):
          times.setdefault(name, []).append(_seconds(fn))
      new = args.prompts * g * args.new_tokens
      row = {"prompt_tokens": p, "prompts": args.prompts, "samples_per_prompt": g,
             "new_tokens": args.new_tokens, "same_tokens": not differ.any(),
             "rows_differing": int(differ.sum())}
      for name, ts in times.items():
        row[f"{name}_s"] = float(np.median(ts))
        row[f"{name}_tokens_per_sec"] = new / row[f"{name}_s"]
      row["speedup"] = row["repeated_s"] / row["shared_s"]
      rows.append(row)
      print(json.dumps(row), flush=True)
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "group_sampling", "preset": args.preset,
                    "parameters": cfg.num_params(), "platform": dev.platform,
                    "device_kind": dev.device_kind, "host": platform.node(),
                    "results": rows}, indent=2))


if __name__ == "__main__":
  main()
