"""Peer: one causal-LM training step in PyTorch (`transformers` Llama, AdamW with
gradient clipping), the step a researcher would otherwise write.

Runs in its own environment (see bench/peers/hf_generate.py):

  python bench/peers/torch_clm_step.py --model_dir=DIR --batch=8 --seq_len=256 [--serve]

The batch is bench/train_step.py's (bench/batches.py): batch x (seq_len + 1)
tokens, inputs and next-token targets, every position in the loss. The
first step's loss is reported, so a caller with the same weights can check it
computes the same loss. `--serve` times one step per stdin line (JSON answers).
"""

from __future__ import annotations

import time

import os
import sys

import torch

import serve  # bench/peers/serve.py, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batches  # pylint: disable=wrong-import-position  # bench/batches.py: numpy only


def main() -> None:
  parser = serve.parser(__doc__)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--lr", type=float, default=1e-3)
  args = parser.parse_args()
  model, device = serve.load_model(args.model_dir, args.threads)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                          weight_decay=0.1)
  tokens = batches.lm_tokens(args.batch, args.seq_len, model.config.vocab_size,
                             args.seed).astype("int64")
  inputs = torch.from_numpy(tokens[:, :-1]).to(device)
  targets = torch.from_numpy(tokens[:, 1:]).to(device)

  def step() -> dict:
    if device == "cuda":
      torch.cuda.synchronize()
    start = time.perf_counter()
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    value = float(loss)
    if device == "cuda":
      torch.cuda.synchronize()
    return {"peer": "torch_clm_step", "seconds": time.perf_counter() - start, "loss": value,
            **serve.versions(device)}

  first = step()  # warm-up; its loss is the loss of the shared initial weights
  serve.timed_answers(step, args.serve, {"first_loss": first["loss"]})


if __name__ == "__main__":
  main()
