"""DPO step throughput: the policy step, the frozen reference's forward, and both; one JSON.

  python bench/dpo.py                          # tiny and small presets (configs/dpo.py)
  python bench/dpo.py --presets=small --steps=5

Each pair is two full rows of `seq_len` tokens (a 32-token prompt, the rest
response), so tokens/s counts 2 * batch * seq_len tokens per step. Rows:

  step_precomputed  the train step alone (reference log-probs already in the
                    batch: `objective.reference=precompute`);
  reference         the reference scorer's forward over the same batch;
  online            both, what `objective.reference=online` costs per step.

MFU counts the policy's forward + backward (6N per token) and the reference's
forward (2N per token) against the matmul peak measured in this process.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import os
import platform
import time

# The repository root, for `configs` and `research` when run as `python bench/X.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from research import host_memory
import jax.numpy as jnp
import numpy as np

import batches  # bench/ is on sys.path when run as a script
from peak import measure_matmul_peak

PROMPT_TOKENS = 32


def _median_time(fn, steps: int) -> float:
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def make_dpo_step(preset: str, steps: int = 100, batch_size: int = 0, seq_len: int = 0):
  """(compiled-once DPO step, state, sharded batch with the reference log-probs,
  host batch, reference scorer, model config, config) at `preset` (its
  `data.batch_size` and `data.seq_len` unless given), one device, on
  bench/batches.py's pairs."""
  from configs import dpo as dpo_config
  from research import objectives
  from research.models import config as model_config
  from research.models.decoder import Decoder
  from research.rlhf import reference
  from research.training import partitioning, trainer

  config = dpo_config.get_config(preset)
  config.init_from = ""  # random weights: throughput does not depend on them
  config.mesh.num_devices = 1
  config.data.batch_size = batch_size or config.data.batch_size
  config.data.seq_len = seq_len or config.data.seq_len
  config.model.max_len = max(config.model.max_len, config.data.seq_len)
  model_cfg = model_config.from_config(config.model)
  model = Decoder(model_cfg)
  config.optimizer.warmup_steps = 1
  loss = functools.partial(objectives.get("dpo"), model=model, config=config)
  s = trainer.build(config, model, loss, total_steps=steps + 10, evaluate=False)
  train_step = s.train_step
  b, length = config.data.batch_size, config.data.seq_len
  response_mask = np.zeros((b, 2, length), bool)
  response_mask[..., PROMPT_TOKENS:] = True
  host_batch = {"tokens": batches.dpo_pairs(b, length, model_cfg.vocab_size, PROMPT_TOKENS),
                "mask": np.ones((b, 2, length), bool), "response_mask": response_mask,
                "ranks": np.tile(np.array([0, 1], np.int32), (b, 1))}
  # A copy: the train step donates the state's buffers.
  scorer = reference.ReferenceScorer(model, jax.tree.map(jnp.copy, s.state.params), s.mesh,
                                     s.rules)
  host_batch["ref_logps"] = scorer.pairs(host_batch)  # compiles the scorer
  batch = partitioning.shard_batch(host_batch, s.mesh, s.rules)
  return train_step, s.state, batch, host_batch, scorer, model_cfg, config


def bench_preset(preset: str, steps: int) -> dict:
  train_step, state, batch, host_batch, scorer, model_cfg, config = make_dpo_step(preset, steps)
  b, length = config.data.batch_size, config.data.seq_len
  for _ in range(2):  # compile + warm up
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)

  def one_step():
    nonlocal state
    state, m = train_step(state, batch)
    return m

  step_time = _median_time(one_step, steps)
  ref_time = _median_time(lambda: scorer.pairs(host_batch), steps)
  tokens = 2 * b * length
  fwd_flops = model_cfg.flops_per_token(length) / 3 * tokens
  row = {"preset": preset, "parameters": model_cfg.num_params(), "pairs_per_batch": b,
         "seq_len": length, "tokens_per_step": tokens, "compilations": train_step.compilations()}
  for name, seconds, flops in (("step_precomputed", step_time, 3 * fwd_flops),
                               ("reference", ref_time, fwd_flops),
                               ("online", step_time + ref_time, 4 * fwd_flops)):
    row[name] = {"time_s": seconds, "tokens_per_sec": tokens / seconds,
                 "model_flops_per_sec": flops / seconds}
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--steps", type=int, default=6)
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # as research.main does, before JAX starts
  dev = jax.devices()
  peak = measure_matmul_peak(jax, jnp, jnp.float32 if dev[0].platform == "cpu" else jnp.bfloat16)
  rows = [bench_preset(p, args.steps) for p in args.presets.split(",")]
  for row in rows:
    for name in ("step_precomputed", "reference", "online"):
      row[name]["mfu"] = row[name]["model_flops_per_sec"] / peak["flops_per_sec"]
  print(json.dumps({"benchmark": "dpo", "host": platform.node(), "cpu_count": os.cpu_count(),
                    "platform": dev[0].platform, "device_kind": dev[0].device_kind,
                    "matmul_peak": peak, "results": rows}, indent=2))


if __name__ == "__main__":
  main()
