"""What every peer script shares: torch threads and device, the HF model, and the
--serve loop (one timed run per stdin line, one JSON answer each). torch and
transformers are imported where used, so the tunix peers (no torch) share the loop."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable


def parser(doc: str, generation: bool = False) -> argparse.ArgumentParser:
  """The flags every peer takes: --model_dir (the HF export), --seed, --threads
  (torch's; the JAX peers leave XLA its threads), --serve; with `generation`
  the decoding shape (--batch, --prompt_tokens, --new_tokens) too."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  p.add_argument("--serve", action="store_true")
  if generation:
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt_tokens", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=256)
  return p


def load_model(model_dir: str, threads: int):
  """(model in float32 on the GPU if there is one, device name)."""
  import torch, transformers  # pylint: disable=g-import-not-at-top,multiple-imports
  if threads:
    torch.set_num_threads(threads)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = transformers.AutoModelForCausalLM.from_pretrained(
      model_dir, torch_dtype=torch.float32).to(device)
  return model, device


def timed_answers(run: Callable[[], dict], serve: bool, ready: dict) -> None:
  """Without --serve: one JSON line of `run()`; with it, `ready` then one per request."""
  if not serve:
    print(json.dumps({**run(), **ready}))
    return
  print(json.dumps({"ready": True, **ready}), flush=True)
  for _ in sys.stdin:
    print(json.dumps(run()), flush=True)


def versions(device: str) -> dict:
  import torch, transformers  # pylint: disable=g-import-not-at-top,multiple-imports
  return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads()}
