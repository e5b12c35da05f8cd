"""Rollouts: prompts -> the KV-cache sampler -> prompt + response rows.

A row is the left-aligned prompt followed by the response and right padding
(the sampler's layout), so every row's response starts at the same column and
one jitted log-prob pass over BxT serves the policy, the reference and the critic.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from research import sampling


@dataclasses.dataclass
class Rollouts:
  """Prompts joined with sampled responses: what scoring and log-prob passes need."""
  tokens: np.ndarray          # BxT  left-aligned prompt, then the response, then padding
  mask: np.ndarray            # BxT  real tokens
  response_mask: np.ndarray   # BxT  response tokens (EOS included)
  texts: list[str]            # decoded responses
  lengths: np.ndarray         # B
  ended: np.ndarray           # B    emitted EOS
  sample: sampling.SampleOutput


def rollout(sampler: sampling.Sampler, params, prompt_ids, tok, rng, cfg,
            prompt_width: int = 0, samples_per_prompt: int = 1) -> Rollouts:
  """`samples_per_prompt` = G: G rows per prompt (rows i*G .. i*G+G-1 answer prompt
  i), the prompt prefilled once for all G."""
  out = jax.device_get(sampler(params, prompt_ids, rng, cfg, prompt_width=prompt_width,
                               samples_per_prompt=samples_per_prompt))
  prompts, plens = np.asarray(out.prompts), np.asarray(out.prompt_lengths)
  p = prompts.shape[1]
  prompt_mask = np.arange(p)[None] >= (p - plens)[:, None]
  response_mask = np.asarray(out.mask)
  return Rollouts(
      tokens=np.concatenate([prompts, np.asarray(out.tokens)], 1),
      mask=np.concatenate([prompt_mask, response_mask], 1),
      response_mask=np.concatenate([np.zeros_like(prompt_mask), response_mask], 1),
      texts=[tok.decode(t) for t in out.tokens], lengths=np.asarray(out.lengths),
      ended=np.asarray(out.ended), sample=out)


def take(roll: Rollouts, rows) -> Rollouts:
  """The rollout's rows `rows` (an index array), every field alike."""
  rows = np.asarray(rows, np.int64)
  return Rollouts(tokens=roll.tokens[rows], mask=roll.mask[rows],
                  response_mask=roll.response_mask[rows], texts=[roll.texts[i] for i in rows],
                  lengths=roll.lengths[rows], ended=roll.ended[rows],
                  sample=jax.tree.map(lambda x: np.asarray(x)[rows], roll.sample))


def concat(rolls: list[Rollouts]) -> Rollouts:
  """Rollouts of the same width, one after the other."""
  if len(rolls) == 1:
    return rolls[0]
  cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs])
  return Rollouts(tokens=cat(*(r.tokens for r in rolls)), mask=cat(*(r.mask for r in rolls)),
                  response_mask=cat(*(r.response_mask for r in rolls)),
                  texts=[t for r in rolls for t in r.texts],
                  lengths=cat(*(r.lengths for r in rolls)), ended=cat(*(r.ended for r in rolls)),
                  sample=jax.tree.map(cat, *(r.sample for r in rolls)))


def sampler_logp(roll: Rollouts) -> np.ndarray:
  """BxT: each response token's log-prob under the sampling distribution, in the
  rollout rows' layout (0 on the prompt and padding): the behaviour policy of
  truncated importance sampling."""
  out = np.zeros(roll.tokens.shape, np.float32)
  lp = np.asarray(roll.sample.logprobs, np.float32)
  out[:, roll.tokens.shape[1] - lp.shape[1]:] = lp
  return out
