"""Chunked vocabulary loss (`model.vocab_chunk`): peak memory and step time; prints JSON.

  python bench/vocab_chunk.py                # both parts, ~3 min on 2 CPU cores
  python bench/vocab_chunk.py --skip_time    # only the compiled-memory part

1. Memory, from XLA's analysis of the compiled program (nothing is run): the
   gradient of the CLM loss of a Qwen2-0.5B-shaped model (vocab 151,936, tied, 24
   scanned layers, bf16 compute, full remat: the layers keep only their inputs) at
   8 x 1024 tokens, with the
   whole logits at once and in chunks. `temp_gib` is XLA's temporary buffers,
   where the B x L x V logits and their gradient live; parameters and the
   optimizer's state come on top and are the same either way.
2. Step time, run here: the same gradient on a vocabulary-heavy small model
   (d 256, 2 layers, vocab 32,768) at 4 x 512, where the logits are most of the work.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def _grad_fn(cfg_overrides: dict, b: int, l: int):
  import jax
  import ml_collections
  import numpy as np
  from research.models import config as model_config
  from research.models.decoder import Decoder
  from research.objectives import clm
  cfg = model_config.DecoderConfig(**{**model_config.defaults(), **cfg_overrides})
  model = Decoder(cfg)
  config = ml_collections.ConfigDict({"objective": {"z_loss": 1e-4}})
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, l + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "segment_ids": np.ones((b, l), np.int32),
           "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
           "loss_mask": np.ones((b, l), np.int32)}
  grad = jax.jit(jax.value_and_grad(
      lambda p: clm.loss_fn(p, batch, None, model=model, config=config)[0]))
  return model, grad, batch


def memory(chunks) -> list[dict]:
  import flax.linen as nn
  import jax
  qwen2_05b = dict(vocab_size=151_936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
                   head_dim=64, mlp_dim=4864, max_len=1024, tie_embeddings=True,
                   embed_scale=False, qkv_bias=True, family="qwen2", dtype="bfloat16",
                   scan_layers=True, remat="full", attention_block=0)
  rows = []
  for chunk in chunks:
    model, grad, batch = _grad_fn({**qwen2_05b, "vocab_chunk": chunk}, 8, 1024)
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                        batch["inputs"][:, :8]))["params"])
    t = time.perf_counter()
    analysis = grad.lower(params).compile().memory_analysis()
    rows.append({"vocab_chunk": chunk, "temp_gib": round(analysis.temp_size_in_bytes / 2**30, 3),
                 "arguments_gib": round(analysis.argument_size_in_bytes / 2**30, 3),
                 "compile_s": round(time.perf_counter() - t, 1)})
  return rows


def step_time(chunks, steps: int = 5) -> list[dict]:
  import flax.linen as nn
  import jax
  small = dict(vocab_size=32_768, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2,
               head_dim=64, mlp_dim=768, max_len=512)
  rows = []
  for chunk in chunks:
    model, grad, batch = _grad_fn({**small, "vocab_chunk": chunk}, 4, 512)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), batch["inputs"][:, :8])["params"])
    compiled = grad.lower(params).compile()
    jax.block_until_ready(compiled(params))
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      jax.block_until_ready(compiled(params))
      times.append(time.perf_counter() - t)
    rows.append({"vocab_chunk": chunk, "step_s": round(sorted(times)[len(times) // 2], 4),
                 "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)})
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--chunks", default="0,128,512")
  parser.add_argument("--skip_time", action="store_true")
  args = parser.parse_args()
  import jax
  chunks = [int(c) for c in args.chunks.split(",")]
  out = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.machine()}, "
                   f"{__import__('os').cpu_count()} cores)",
         "jax": jax.__version__,
         "qwen2_0.5b_8x1024_grad_memory": memory(chunks)}
  if not args.skip_time:
    out["small_vocab32k_4x512_grad_step"] = step_time(chunks)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
