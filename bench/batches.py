"""The benchmark batches, drawn with numpy only, so bench/peers (another
environment, no jax) build exactly the tokens the project's side uses."""

from __future__ import annotations

import numpy as np

EOS_ID = 1


def lm_tokens(batch: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
  """CLM: batch x (length + 1) tokens (inputs and next-token targets)."""
  return np.random.default_rng(seed).integers(4, vocab_size, (batch, length + 1)).astype(np.int32)


def prompts(batch: int, prompt_tokens: int, vocab_size: int, seed: int = 0) -> np.ndarray:
  """Generation and RL: batch x prompt_tokens prompt ids."""
  return np.random.default_rng(seed).integers(4, vocab_size, (batch, prompt_tokens)).astype(
      np.int32)


def words(ids) -> str:
  """The word-level text of ids (id i is the word "ti"): what the peers' tokenizers
  read back to the same ids."""
  return " ".join(f"t{int(i)}" for i in ids)


def even_share(responses) -> list[float]:
  """The PPO benchmarks' reward: the share of even ids among a response's words."""
  return [float(np.mean([int(w[1:]) % 2 == 0 for w in r.split()])) if r else 0.0
          for r in responses]


def dpo_pairs(batch: int, length: int, vocab_size: int, prompt_tokens: int,
              seed: int = 0) -> np.ndarray:
  """DPO: batch x 2 (chosen, rejected) x length tokens; both rows of a pair share
  the first `prompt_tokens` (the prompt), and every response ends with EOS."""
  tokens = np.random.default_rng(seed).integers(4, vocab_size, (batch, 2, length)).astype(np.int32)
  tokens[:, 1, :prompt_tokens] = tokens[:, 0, :prompt_tokens]
  tokens[:, :, -1] = EOS_ID
  return tokens
