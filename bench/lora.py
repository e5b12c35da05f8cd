"""LoRA and QLoRA against full fine-tuning: step time and memory of the SFT (CLM
loss) and DPO steps; prints one JSON document.

  python bench/lora.py                              # small, one device
  python bench/lora.py --presets=tiny --steps=3

For each preset and step, three arms through the one trainer build: full
fine-tuning, LoRA rank 16 on every projection, and QLoRA (the same adapters on
an int8 base). Memory per device from the compiled program (XLA's memory
analysis: the state the step takes and returns, and the temporaries it needs
at its peak), and the state's bytes (parameters, optimizer). The DPO arms
take the reference log-probs in the batch (precomputed), so all three run the
same policy forward and backward.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import batches  # noqa: E402  (bench/ is on sys.path when run as a script)

ARMS = {"full": {}, "lora_r16": {"lora_rank": 16, "lora_alpha": 32.0},
        "qlora_r16_int8": {"lora_rank": 16, "lora_alpha": 32.0, "quantize_base": "int8"}}
PROMPT_TOKENS = 32


def _build(stage: str, preset: str, arm: dict, steps: int):
  from configs import clm as clm_config, dpo as dpo_config
  from research import objectives
  from research.models import config as model_config
  from research.models.decoder import Decoder
  from research.training import partitioning, trainer

  config = (clm_config if stage == "sft" else dpo_config).get_config(preset)
  config.init_from = ""  # random weights: time and memory do not depend on them
  config.mesh.num_devices = 1
  config.model.update(arm)
  config.optimizer.warmup_steps = 1
  model_cfg = model_config.from_config(config.model)
  model = Decoder(model_cfg)
  loss = functools.partial(objectives.get("clm" if stage == "sft" else "dpo"), model=model,
                           config=config)
  s = trainer.build(config, model, loss, total_steps=steps + 10, evaluate=False)
  b, length = config.data.batch_size, config.data.seq_len
  if stage == "sft":
    tokens = batches.lm_tokens(b, length, model_cfg.vocab_size)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "segment_ids": np.ones((b, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
            "loss_mask": np.ones((b, length), np.int32)}
    rows = b
  else:
    response = np.zeros((b, 2, length), bool)
    response[..., PROMPT_TOKENS:] = True
    host = {"tokens": batches.dpo_pairs(b, length, model_cfg.vocab_size, PROMPT_TOKENS),
            "mask": np.ones((b, 2, length), bool), "response_mask": response,
            "ranks": np.tile(np.array([0, 1], np.int32), (b, 1)),
            "ref_logps": np.zeros((b, 2), np.float32)}
    rows = 2 * b
  return s, partitioning.shard_batch(host, s.mesh, s.rules), rows * length


def bench(stage: str, preset: str, arm_name: str, steps: int) -> dict:
  from research.training import partitioning
  s, batch, tokens = _build(stage, preset, ARMS[arm_name], steps)
  state = s.state
  compiled = s.train_step.lower(state, batch).compile()
  memory = compiled.memory_analysis()
  for _ in range(2):  # compile + warm up
    state, metrics = s.train_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = s.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  params_b = partitioning.per_device_bytes(s.abstract_state.params, s.shardings.params)
  opt_b = partitioning.per_device_bytes(s.abstract_state.opt_state, s.shardings.opt_state)
  step_time = float(np.median(times))
  row = {"stage": stage, "preset": preset, "arm": arm_name, "tokens_per_step": tokens,
         "step_time_s": step_time, "tokens_per_sec": tokens / step_time,
         "param_mib": params_b / 2**20, "optimizer_mib": opt_b / 2**20,
         "compilations": s.train_step.compilations()}
  if memory is not None:
    row["xla_temp_mib"] = memory.temp_size_in_bytes / 2**20
    row["xla_argument_mib"] = memory.argument_size_in_bytes / 2**20
    # The state is donated: its buffers are the outputs', so the peak is the
    # arguments plus the temporaries.
    row["xla_peak_mib"] = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**20
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="small")
  parser.add_argument("--stages", default="sft,dpo")
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  from research import host_memory
  host_memory.keep_freed_memory()
  dev = jax.devices()
  rows = [bench(stage, preset, arm, args.steps) for preset in args.presets.split(",")
          for stage in args.stages.split(",") for arm in args.arms.split(",")]
  for row in rows:  # against full fine-tuning of the same stage and preset
    full = next(r for r in rows if (r["stage"], r["preset"], r["arm"]) ==
                (row["stage"], row["preset"], "full"))
    row["step_time_vs_full"] = row["step_time_s"] / full["step_time_s"]
    if "xla_peak_mib" in row:
      row["peak_vs_full"] = row["xla_peak_mib"] / full["xla_peak_mib"]
  print(json.dumps({"platform": dev[0].platform, "device_kind": dev[0].device_kind,
                    "devices": len(dev), "cpu": platform.processor() or platform.machine(),
                    "results": rows}, indent=2))


if __name__ == "__main__":
  main()
