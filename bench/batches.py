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


def hh_like_pairs(rng, pairs: int, seq_len: int, vocab: int, prompt_median: int = 40,
                  response_median: int = 60, eos_id: int | None = None) -> dict:
  """Comparison pairs with HH-like uneven lengths (Anthropic HH-RLHF: most
  exchanges short, a long tail): a shared prompt (BOS id 2, then ids) and two
  responses, lengths drawn log-normally around the medians and cut so a row fits
  `seq_len`; with `eos_id`, every response ends with it. The project's
  comparison layout: tokens / mask / response_mask (pairs x 2 x seq_len), ranks,
  margin, and placeholder reference log-probs."""
  lognormal = lambda median: max(int(rng.lognormal(np.log(median), 0.9)), 1)
  tokens = np.zeros((pairs, 2, seq_len), np.int32)
  mask = np.zeros((pairs, 2, seq_len), bool)
  response = np.zeros((pairs, 2, seq_len), bool)
  for b in range(pairs):
    prompt = [2, *rng.integers(4, vocab, min(lognormal(prompt_median), seq_len // 2))]
    for j in range(2):
      n = min(lognormal(response_median), seq_len - len(prompt))
      row = prompt + list(rng.integers(4, vocab, n))
      if eos_id is not None:
        row[-1] = eos_id
      tokens[b, j, :len(row)], mask[b, j, :len(row)] = row, True
      response[b, j, len(prompt):len(row)] = True
  return {"tokens": tokens, "mask": mask, "response_mask": response,
          "ranks": np.tile(np.arange(2, dtype=np.int32), (pairs, 1)),
          "margin": np.zeros(pairs, np.float32),
          "ref_logps": rng.normal(-200, 20, (pairs, 2)).astype(np.float32)}
