"""Train-step throughput and model-FLOPs utilisation; prints one JSON document.

  python bench/train_step.py                       # tiny + small, on 1 and 8 devices
  python bench/train_step.py --presets=small --devices=1 --steps=10

MFU = model FLOPs per second (PaLM appendix B accounting, `flops_per_token`)
divided by the matmul peak measured in the same process. On CPU the "8 devices"
are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=8) and share
the same cores, so that row measures sharding overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import batches  # bench/ is on sys.path when run as a script
from peak import measure_matmul_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_step(preset: str, mesh_shape: dict, steps: int = 100):
  """(compiled-once train step, initial state, one batch, model config, config) of
  the CLM stage at `preset`, on random tokens of the config's batch shape."""
  import functools
  import numpy as np
  from configs import clm as clm_config
  from research import objectives
  from research.models import config as model_config
  from research.models.decoder import Decoder
  from research.training import partitioning, trainer

  config = clm_config.get_config(preset)
  config.mesh.update(mesh_shape)
  config.train.steps = steps + 10
  config.optimizer.warmup_steps = 1
  model_cfg = model_config.from_config(config.model)
  model = Decoder(model_cfg)
  loss = functools.partial(objectives.get("clm"), model=model, config=config)
  s = trainer.build(config, model, loss, evaluate=False)
  train_step = s.train_step
  b, length = config.data.batch_size, config.data.seq_len
  tokens = batches.lm_tokens(b, length, model_cfg.vocab_size)
  batch = partitioning.shard_batch({
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
      "segment_ids": np.ones((b, length), np.int32),
      "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
      "loss_mask": np.ones((b, length), np.int32)}, s.mesh, s.rules)
  return train_step, s, batch, model_cfg, config


def bench_preset(preset: str, steps: int, mesh_shape: dict) -> dict:
  import jax
  import numpy as np
  train_step, s, batch, model_cfg, config = make_step(preset, mesh_shape, steps)
  b, length = config.data.batch_size, config.data.seq_len
  state = s.state
  compiled_flops = None  # XLA's count, per device (the program of one shard)
  try:
    cost = train_step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    compiled_flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is best-effort and backend-dependent
    pass
  for _ in range(2):  # compile + warm up
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_time = float(np.median(times))
  model_flops = model_cfg.flops_per_token(length) * b * length
  return {"preset": preset, "parameters": model_cfg.num_params(), "batch": b, "seq_len": length,
          "mesh": dict(s.mesh.shape), "step_time_s": step_time,
          "step_time_min_s": float(min(times)), "tokens_per_sec": b * length / step_time,
          "model_flops_per_step": model_flops, "xla_flops_per_step_per_device": compiled_flops,
          "model_flops_per_sec": model_flops / step_time,
          "compilations": train_step.compilations()}


def child(args) -> None:
  import jax
  import jax.numpy as jnp
  dev = jax.devices()
  peak_dtype = jnp.float32 if dev[0].platform == "cpu" else jnp.bfloat16
  peak = measure_matmul_peak(jax, jnp, peak_dtype)
  meshes = {1: {"data": 1, "fsdp": 1, "tensor": 1}, 8: {"data": 2, "fsdp": 2, "tensor": 2}}
  rows = []
  for preset in args.presets.split(","):
    row = bench_preset(preset, args.steps, meshes.get(len(dev), {"data": -1, "fsdp": 1,
                                                                   "tensor": 1}))
    row["mfu"] = row["model_flops_per_sec"] / peak["flops_per_sec"]
    rows.append(row)
  print(json.dumps({"devices": len(dev), "platform": dev[0].platform,
                    "device_kind": dev[0].device_kind, "matmul_peak": peak, "results": rows}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--devices", default="1,8", help="comma list of simulated CPU device counts")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    from research import host_memory  # pylint: disable=g-import-not-at-top  # PYTHONPATH=ROOT
    host_memory.keep_freed_memory()  # as research.main does, before JAX starts
    child(args)
    return
  runs = []
  for n in args.devices.split(","):
    env = {**os.environ, "PYTHONPATH": ROOT}
    if int(n) > 1:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    out = subprocess.run([sys.executable, __file__, "--child", f"--presets={args.presets}",
                          f"--steps={args.steps}"], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
      sys.exit(f"benchmark on {n} device(s) failed:\n{out.stderr[-3000:]}")
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(json.dumps({"benchmark": "train_step", "host": platform.node(),
                    "cpu_count": os.cpu_count(), "runs": runs}, indent=2))


if __name__ == "__main__":
  main()
