"""Best-of-n: sample n responses per prompt, keep the one the reward likes best.

Used two ways: as rejection-sampling fine-tuning (Llama 2, Touvron et al. 2023,
sec. 3.2.3: each round fine-tunes on the best of n samples of the current
policy; `stages/best_of_n.py`), and as an inference-time policy for the
reward/KL frontier, whose KL to the sampling policy is at most
log n - (n - 1) / n (Stiennon et al. 2020, appendix G.3).
"""

from __future__ import annotations

import jax
import numpy as np

from research.data import layouts
from research.rlhf.rollout import rollout


def kl_bound(n: int) -> float:
  """KL(best-of-n || base) <= log n - (n - 1) / n (Stiennon et al. 2020)."""
  return float(np.log(n) - (n - 1) / n)


def sample_and_score(sampler, params, prompts, prompt_ids, tok, reward, *, n: int, cfg, rng,
                     chunk: int, prompt_width: int = 0, records=None):
  """n temperature samples per prompt -> (texts [P][n], scores Pxn, ended Pxn, lengths Pxn);
  `records` (one per prompt) carry the reference fields reward functions read.

  Calls of `chunk` rows; when whole prompts fit in one (chunk a multiple of n),
  each prompt is prefilled once for its n samples (the same rows either way)."""
  rows = [i for i in range(len(prompts)) for _ in range(n)]
  share = n if chunk % n == 0 else 1
  texts, scores, ended, lengths = [], [], [], []
  for k, lo in enumerate(range(0, len(rows), chunk)):
    part = rows[lo:lo + chunk]
    roll = rollout(sampler, params, [prompt_ids[i] for i in part[::share]], tok,
                   jax.random.fold_in(rng, k), cfg, prompt_width=prompt_width,
                   samples_per_prompt=share)
    texts += roll.texts
    scores.append(reward(roll, [prompts[i] for i in part],
                         None if records is None else [records[i] for i in part]))
    ended.append(roll.ended)
    lengths.append(roll.lengths)
  shape = (len(prompts), n)
  return ([texts[i * n:(i + 1) * n] for i in range(len(prompts))],
          np.concatenate(scores).reshape(shape), np.concatenate(ended).reshape(shape),
          np.concatenate(lengths).reshape(shape))


def choose(scores_PxN, ended_PxN, require_eos: bool = True) -> np.ndarray:
  """Index of the best response per prompt; with `require_eos`, unfinished responses
  lose to any finished one (a truncated review must not become a training target)."""
  ranked = np.where(ended_PxN | (not require_eos), scores_PxN, scores_PxN - 1e9)
  return ranked.argmax(1)


def best_records(prompts, texts, scores_PxN, ended_PxN, require_eos: bool = True,
                 min_score: float | None = None):
  """SFT records (prompt-completion, so every template renders the prompt as RL
  saw it) of the best responses, and the pool's statistics. With `min_score`, a
  prompt whose best scores below it gives no record (rejection-sampling fine-tuning
  on a checker: only correct responses are trained, DeepSeekMath sec. 5.2.1)."""
  best = choose(scores_PxN, ended_PxN, require_eos)
  rows = np.arange(len(prompts))
  keep = ended_PxN[rows, best] | (not require_eos)
  if min_score is not None:
    keep &= scores_PxN[rows, best] >= min_score
  records = [layouts.sft({"prompt": prompts[i], "completion": texts[i][best[i]]},
                         f"best-of-n response {i}") for i in rows if keep[i]]
  stats = {"pool/score": float(scores_PxN.mean()),
           "best/score": float(scores_PxN[rows, best].mean()),
           "pool/ended": float(ended_PxN.mean()), "kept": len(records),
           "kl_bound": kl_bound(scores_PxN.shape[1])}
  return records, stats
