"""Peer: Hugging Face `transformers` `generate` (torch, KV cache), greedy, EOS off.

Runs in its own environment (not this project's requirements, never in CI):

  python -m venv /tmp/peers && . /tmp/peers/bin/activate
  pip install "torch==2.13.0+cpu" transformers    # the CPU wheel; on a GPU the CUDA one

  python bench/peers/hf_generate.py --model_dir=DIR --batch=64 --new_tokens=256
  python bench/peers/hf_generate.py --model_dir=DIR --batch=64 --new_tokens=256 --serve

`--serve` loads and warms up once, then times one `generate` per line read on
stdin and answers each with one JSON line, so `bench/compare.py` can alternate
it with the project's sampler (A B A B) with both sides warm. The prompts are
`prompt_tokens` ids per row from numpy's default_rng(seed), as bench/compare.py
draws them, so both sides decode the same prompts with the same weights.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np
import torch

import serve  # bench/peers/serve.py, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batches  # pylint: disable=wrong-import-position  # bench/batches.py: numpy only


def main() -> None:
  args = serve.parser(__doc__, generation=True).parse_args()
  model, device = serve.load_model(args.model_dir, args.threads)
  model.eval()
  ids = torch.from_numpy(batches.prompts(args.batch, args.prompt_tokens, model.config.vocab_size,
                                         args.seed).astype(np.int64)).to(device)
  kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                use_cache=True, eos_token_id=None, pad_token_id=0,
                attention_mask=torch.ones_like(ids))

  def once() -> dict:
    if device == "cuda":
      torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
      out = model.generate(ids, **kwargs)
    if device == "cuda":
      torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out[:, ids.shape[1]:].cpu().numpy().astype(np.int32)
    return {"peer": "hf_generate", "seconds": seconds, "tokens_per_sec": new.size / seconds,
            "tokens_sha1": hashlib.sha1(new.tobytes()).hexdigest(), **serve.versions(device)}

  once()  # warm-up
  serve.timed_answers(once, args.serve, {})


if __name__ == "__main__":
  main()
