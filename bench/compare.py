"""The project against the peer a user would pick instead, side by side in one run.

  python bench/compare.py --peer_python=/tmp/peers/bin/python          # small, 64x256 and 1x256
  python bench/compare.py --peer_python=... --shapes=64x256 --rounds=5 --markdown

Generation: this project's KV-cache sampler against Hugging Face `generate`
(bench/peers/hf_generate.py, run in the peer's own environment) on the same
weights (a randomly initialised preset exported with `research.convert`), the
same prompts (16 tokens), greedy, EOS off. Each round times the project once,
then the peer once (A B A B ...), both compiled / warmed beforehand; the
report is the median of each side and their ratio, plus whether both decoded
the same tokens. Prints JSON (and a markdown table with --markdown).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# The repository root, for `research` when run as `python bench/compare.py`.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from research import convert, sampling  # pylint: disable=wrong-import-position
from research.models import config as model_config  # pylint: disable=wrong-import-position
from research.models.decoder import Decoder  # pylint: disable=wrong-import-position

PEER = os.path.join(ROOT, "bench", "peers", "hf_generate.py")


class PeerServer:
  """bench/peers/hf_generate.py --serve: one timed generate per request."""

  def __init__(self, python: str, model_dir: str, batch: int, prompt_tokens: int,
               new_tokens: int, threads: int):
    cmd = [python, PEER, f"--model_dir={model_dir}", f"--batch={batch}",
           f"--prompt_tokens={prompt_tokens}", f"--new_tokens={new_tokens}", "--serve"]
    if threads:
      cmd.append(f"--threads={threads}")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = self.proc.stdout.readline()
    if not ready:
      raise RuntimeError(f"the peer did not start: {' '.join(cmd)}")

  def run(self) -> dict:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def export(preset: str, directory: str):
  """A randomly initialised preset, and the same weights as a Hugging Face model."""
  cfg = model_config.DecoderConfig(**model_config.preset(preset))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  convert.write_hf_model(cfg, jax.device_get(params), directory)
  return cfg, model, params


def compare_generation(args, cfg, model, params, model_dir: str, batch: int,
                       new_tokens: int) -> dict:
  prompts = np.random.default_rng(args.seed).integers(
      4, cfg.vocab_size, (batch, args.prompt_tokens)).astype(np.int32)
  lengths = np.full((batch,), args.prompt_tokens, np.int32)
  sampler = sampling.Sampler(model, eos_id=-1, pad_id=0, bucket=args.prompt_tokens,
                             segment=args.segment)
  sample_cfg = sampling.SamplingConfig(new_tokens, greedy=True)

  def ours() -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = sampler(params, prompts, jax.random.PRNGKey(0), sample_cfg, lengths=lengths)
    tokens = np.asarray(jax.block_until_ready(out.tokens))
    return time.perf_counter() - start, tokens

  start = time.perf_counter()
  _, tokens = ours()  # compile
  compile_s = time.perf_counter() - start
  peer = PeerServer(args.peer_python, model_dir, batch, args.prompt_tokens, new_tokens,
                    args.threads)
  mine, theirs, peer_info = [], [], {}
  try:
    for _ in range(args.rounds):
      mine.append(ours()[0])
      peer_info = peer.run()
      theirs.append(peer_info["seconds"])
  finally:
    peer.close()
  ours_s, peer_s = statistics.median(mine), statistics.median(theirs)
  return {"task": "generate", "batch": batch, "prompt_tokens": args.prompt_tokens,
          "new_tokens": new_tokens, "ours_s": ours_s, "peer_s": peer_s,
          "ours_tokens_per_sec": batch * new_tokens / ours_s,
          "peer_tokens_per_sec": batch * new_tokens / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "rounds": args.rounds,
          "ours_first_call_s": compile_s, "segment": args.segment,
          "ours_all_s": mine, "peer_all_s": theirs,
          "same_tokens": hashlib.sha1(tokens.tobytes()).hexdigest() == peer_info["tokens_sha1"],
          "peer": {k: peer_info[k] for k in ("peer", "torch", "transformers", "threads",
                                             "device")}}


def markdown(rows: list[dict], device: str) -> str:
  lines = [f"Device: {device}", "",
           "| batch x new tokens | ours tok/s | HF generate tok/s | ratio | same tokens |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['batch']} x {r['new_tokens']} | {r['ours_tokens_per_sec']:,.0f} | "
                 f"{r['peer_tokens_per_sec']:,.0f} | {r['speedup_vs_peer']:.2f}x | "
                 f"{'yes' if r['same_tokens'] else 'no'} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peer_python", required=True,
                      help="python of an environment with torch + transformers")
  parser.add_argument("--preset", default="small")
  parser.add_argument("--shapes", default="64x256,1x256", help="batch x new tokens, comma-separated")
  parser.add_argument("--prompt_tokens", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=0, help="the peer's torch threads")
  parser.add_argument("--segment", type=int, default=sampling.SEGMENT,
                      help="the sampler's decode segment (0: attend over the whole cache)")
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args()
  dev = jax.devices()[0]
  device = f"{dev.platform} {dev.device_kind}, {os.cpu_count()} cores ({platform.node()})"
  rows = []
  with tempfile.TemporaryDirectory() as model_dir:
    cfg, model, params = export(args.preset, model_dir)
    for shape in args.shapes.split(","):
      batch, new_tokens = map(int, shape.split("x"))
      row = compare_generation(args, cfg, model, params, model_dir, batch, new_tokens)
      rows.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
  print(json.dumps({"benchmark": "compare", "preset": args.preset,
                    "parameters": cfg.num_params(), "device": device, "results": rows},
                   indent=2))
  if args.markdown:
    print(markdown(rows, device))


if __name__ == "__main__":
  main()
