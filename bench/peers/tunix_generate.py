"""Peer: tunix's sampler (JAX + Flax NNX, KV cache), greedy, EOS off.

Runs in its own environment (not this project's requirements, never in CI):

  python -m venv /tmp/tunix && /tmp/tunix/bin/pip install google-tunix

  python bench/peers/tunix_generate.py --model_dir=DIR --batch=64 --new_tokens=256
  python bench/peers/tunix_generate.py --model_dir=DIR --batch=64 --new_tokens=256 --serve

Loads the Hugging Face export (`research.convert.write_hf_model`) as tunix's
`Llama3` (its safetensors loader), builds `tunix.generate.Sampler` with a cache
of prompt + new tokens, and decodes the prompts bench/compare.py draws (numpy's
default_rng(seed), `prompt_tokens` ids per row). tunix's sampler takes strings:
a word-level tokenizer maps id i to the word "ti" and back, with no BOS, so the
model sees exactly those ids. `--serve` answers one timed call per stdin line
(bench/peers/serve.py's loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import serve  # bench/peers/serve.py, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batches  # pylint: disable=wrong-import-position  # bench/batches.py: numpy only


class WordTokenizer:
  """Id i <-> the word "ti"; what tunix's TokenizerAdapter asks of a custom tokenizer."""

  def encode(self, text, **_) -> list[int]:
    if not isinstance(text, str):  # tunix's RL loop hands over numpy string arrays
      text = " ".join(str(t) for t in np.ravel(text))
    return [int(w[1:]) for w in text.split()]

  def decode(self, ids, **_) -> str:
    return batches.words(ids)

  def bos_id(self) -> int:
    return 0  # falsy: tunix's sampler then prepends no BOS

  def eos_id(self) -> int:
    return -1

  def pad_id(self) -> int:
    return 0


def load_llama(model_dir: str):
  """tunix's Llama3 from an HF Llama export directory (config.json + safetensors)."""
  from tunix.models.llama3 import model as llama_lib, params as llama_params  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  config = llama_lib.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"], rope_theta=hf["rope_theta"],
      norm_eps=hf["rms_norm_eps"], weight_tying=hf["tie_word_embeddings"])
  model = llama_params.create_model_from_safe_tensors(model_dir, config, dtype=jnp.float32)
  return model, config


def versions() -> dict:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"device": f"{dev.platform} {dev.device_kind}", "jax": jax.__version__,
          "tunix": importlib.metadata.version("google-tunix"), "threads": os.cpu_count()}


def main() -> None:
  args = serve.parser(__doc__, generation=True).parse_args()
  from tunix.generate import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  model, config = load_llama(args.model_dir)
  tokenizer = WordTokenizer()
  sampler = sampler_lib.Sampler(model, tokenizer, sampler_lib.CacheConfig(
      cache_size=args.prompt_tokens + args.new_tokens, num_layers=config.num_layers,
      num_kv_heads=config.num_kv_heads, head_dim=config.head_dim))
  ids = batches.prompts(args.batch, args.prompt_tokens, config.vocab_size, args.seed)
  texts = [batches.words(row) for row in ids]

  def once() -> dict:
    start = time.perf_counter()
    out = sampler(texts, max_generation_steps=args.new_tokens,
                  max_prompt_length=args.prompt_tokens, eos_tokens=[-1], temperature=0.0)
    new = np.stack([np.asarray(t) for t in out.tokens]).astype(np.int32)
    seconds = time.perf_counter() - start
    if new.shape != (args.batch, args.new_tokens):
      raise RuntimeError(f"tunix returned {new.shape} tokens, expected "
                         f"{(args.batch, args.new_tokens)}")
    return {"peer": "tunix_generate", "seconds": seconds, "tokens_per_sec": new.size / seconds,
            "tokens_sha1": hashlib.sha1(new.tobytes()).hexdigest(), **versions()}

  once()  # compile
  serve.timed_answers(once, args.serve, {})


if __name__ == "__main__":
  main()
