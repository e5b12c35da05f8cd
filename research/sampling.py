"""Generation.

`greedy_uncached` is the plain reference loop: every new token re-runs the
full forward pass over the whole buffer (O(N^2) work), one jitted step reused
for all N tokens.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def right_pad(token_lists, pad_id: int, length: int | None = None):
  """List of token lists -> (BxP int32 array, lengths_B)."""
  lengths = np.asarray([len(t) for t in token_lists], np.int32)
  width = int(lengths.max()) if length is None else length
  out = np.full((len(token_lists), width), pad_id, np.int32)
  for i, t in enumerate(token_lists):
    out[i, :len(t)] = t
  return out, lengths


def _greedy_step(logits_fn, params, buffer_BxT, lengths_B, done_B, eos_id: int):
  logits_BxTxV = logits_fn(params, buffer_BxT)
  last_BxV = jnp.take_along_axis(logits_BxTxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  next_B = jnp.argmax(last_BxV, axis=-1).astype(buffer_BxT.dtype)
  rows = jnp.arange(buffer_BxT.shape[0])
  write = jnp.where(done_B, buffer_BxT[rows, lengths_B], next_B)
  buffer_BxT = buffer_BxT.at[rows, lengths_B].set(write)
  lengths_B = lengths_B + (~done_B).astype(lengths_B.dtype)
  done_B = done_B | (next_B == eos_id)
  return buffer_BxT, lengths_B, done_B


def greedy_uncached(logits_fn: Callable, params, prompts_BxP, prompt_lengths_B,
                    max_new_tokens: int, eos_id: int, pad_id: int = 0):
  """Greedy continuation of right-padded prompts without a KV cache.

  `logits_fn(params, tokens_BxT) -> logits_BxTxV` is a causal model, so padding
  to the right of a row's length cannot change the logits at its last token.
  Returns (new_tokens_BxN, response_lengths_B); rows stop at EOS (included).
  """
  b, p = prompts_BxP.shape
  buffer = np.full((b, p + max_new_tokens), pad_id, np.int32)
  buffer[:, :p] = prompts_BxP
  step = jax.jit(lambda prm, buf, lens, done: _greedy_step(logits_fn, prm, buf, lens, done, eos_id))
  buf, lens = jnp.asarray(buffer), jnp.asarray(prompt_lengths_B, jnp.int32)
  done = jnp.zeros((b,), bool)
  for _ in range(max_new_tokens):
    buf, lens, done = step(params, buf, lens, done)
  buf, lens = np.asarray(buf), np.asarray(lens)
  start = np.asarray(prompt_lengths_B)
  new = np.full((b, max_new_tokens), pad_id, np.int32)
  for i in range(b):
    new[i, :lens[i] - start[i]] = buf[i, start[i]:lens[i]]
  return new, lens - start
