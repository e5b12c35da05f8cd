"""Evaluation on tasks with checkable answers, as the reasoning-RL papers report it.

n temperature-1 samples per held-out prompt, each judged by a checker (reward
functions by name, `research/rewards/`: a response is correct when it scores
1), give:

  pass@k            the unbiased estimator of Chen et al. 2021 (eq. 1):
                    E[1 - C(n - c, k) / C(n, k)] over prompts with c correct of n,
                    for k = 1, 2, 4, ..., n (in its stable product form)
  maj@k             majority voting over the first k samples' final answers
                    (`answers.final_answer`; ties go to the answer seen first, as
                    verl's; no answer casts no vote): correct when the winning
                    answer's samples are
  length/correct, length/incorrect   mean response tokens of each
  truncated         the share of samples that never emitted EOS
  entropy           the policy's mean per-token entropy over the samples (nats)

Yue et al. 2025 ("Does RL really incentivize reasoning capacity?") compare
exactly these pass@k curves of a base and an RL model; `plot_pass_at_k` draws them.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.models.logprobs import positions_from_mask, token_logprobs
from research.rewards import answers
from research.rlhf.rollout import rollout
from research.training import partitioning


def pass_at_k(n: int, c: int, k: int) -> float:
  """1 - C(n - c, k) / C(n, k): the chance that k of the n samples, drawn without
  replacement, include a correct one (Chen et al. 2021, eq. 1; their stable form)."""
  if k > n:
    raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks(n: int) -> list[int]:
  """1, 2, 4, ... up to n, and n."""
  out = [2 ** i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []
  return out + ([n] if out and out[-1] != n else [])


def majority_correct(final_answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
  """maj@k of one prompt (see the module doc)."""
  votes: dict[str, list[int]] = {}
  for i, a in enumerate(final_answers[:k]):
    if a is not None:
      votes.setdefault(a, []).append(i)
  if not votes:
    return False
  winner = max(votes, key=lambda a: len(votes[a]))  # dicts keep order: first seen wins ties
  return bool(correct[votes[winner][0]])


def _entropy(model, params, tokens_BxT, mask_BxT, response_BxT):
  """Mean per-token entropy of each row's response (nats); jitted per model."""
  logits = model.apply({"params": params}, tokens_BxT, positions_from_mask(mask_BxT),
                       mask_BxT.astype(jnp.int32))[:, :-1].astype(jnp.float32)
  _, log_z = token_logprobs(logits, tokens_BxT[:, 1:])
  probs = jax.nn.softmax(logits, axis=-1)
  entropy = log_z - jnp.sum(probs * logits, axis=-1)
  resp = response_BxT[:, 1:].astype(jnp.float32)
  return jnp.sum(entropy * resp, 1) / jnp.maximum(resp.sum(1), 1.0)


_ENTROPY_FNS: dict[int, tuple] = {}


def response_entropy(model, params, roll, mesh, rules) -> np.ndarray:
  """Per-row mean entropy of a rollout's responses, sharded like the sampler."""
  if id(model) not in _ENTROPY_FNS:
    _ENTROPY_FNS[id(model)] = (model, jax.jit(functools.partial(_entropy, model)))
  fn = _ENTROPY_FNS[id(model)][1]
  padded, n = partitioning.pad_rows({"tokens": roll.tokens, "mask": roll.mask,
                                     "response_mask": roll.response_mask}, mesh, rules)
  batch = partitioning.shard_batch(padded, mesh, rules)
  with partitioning.activate(mesh, rules):
    return np.asarray(fn(params, batch["tokens"], batch["mask"], batch["response_mask"]))[:n]


def report(model, params, tok, prompts: Sequence, prompt_ids: Sequence, records: Sequence[dict],
           checker, *, n: int, max_new_tokens: int, seed: int, mesh=None, rules=None,
           sampler=None) -> dict:
  """The module doc's metrics for `params` on `prompts` (with their `records`), n
  samples each; `checker` is a `rewards.scoring.FunctionReward`."""
  sampler = sampler or sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id,
                                        mesh=mesh, rules=rules)
  roll = rollout(sampler, params, list(prompt_ids), tok, jax.random.PRNGKey(seed),
                 sampling.SamplingConfig(max_new_tokens, temperature=1.0), samples_per_prompt=n)
  rows = np.repeat(np.arange(len(prompts)), n)
  scored = checker.score([prompts[i] for i in rows], roll.texts, [records[i] for i in rows])
  correct = (scored.total >= 1.0 - 1e-6).reshape(len(prompts), n)
  final = [answers.final_answer(t) for t in roll.texts]
  out = {"num_prompts": len(prompts), "samples_per_prompt": n}
  counts = correct.sum(1)
  for k in ks(n):
    out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in counts]))
    out[f"maj@{k}"] = float(np.mean([majority_correct(final[i * n:(i + 1) * n], correct[i], k)
                                     for i in range(len(prompts))]))
  flat, lengths = correct.reshape(-1), roll.lengths
  out["length/correct"] = float(lengths[flat].mean()) if flat.any() else 0.0
  out["length/incorrect"] = float(lengths[~flat].mean()) if (~flat).any() else 0.0
  out["truncated"] = float(1.0 - roll.ended.mean())
  out["entropy"] = float(np.mean(response_entropy(model, params, roll, sampler.mesh,
                                                 sampler.rules)))
  out["reward_errors"] = scored.metrics.get("reward/errors", 0.0)
  return out


def plot_pass_at_k(curves: dict[str, dict], path: str) -> str:
  """pass@k against k (log2 axis) for each named report; written to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, rep in curves.items():
    k = sorted(int(key.split("@")[1]) for key in rep if key.startswith("pass@"))
    ax.plot(k, [rep[f"pass@{i}"] for i in k], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set(xlabel="k (samples)", ylabel="pass@k", ylim=(0, 1.02), title="pass@k on held-out prompts")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def checker(config):
  """The reward functions `config.evaluate.checker` names (with `config.reward`'s
  options), or None when it names none."""
  spec = config.evaluate.get("checker", "") if config.get("evaluate") else ""
  if not spec:
    return None
  from research.rewards.scoring import FunctionReward  # pylint: disable=g-import-not-at-top
  return FunctionReward(spec, config.get("reward"))


def held_out(config, tok, model_cfg, *, bucket: int = sampling.BUCKET):
  """(prompts, token ids, records) of the held-out prompts the checker judges:
  `config.evaluate.num_prompts` of them, spread evenly over the set, fitted as
  every prompt is (`prompt_fit`), their records checked for the checker's fields."""
  from research.data import preferences, prompt_fit  # pylint: disable=g-import-not-at-top
  e = config.evaluate
  records = preferences.prompt_records(config.data, "validation")
  if len(records) > e.num_prompts:  # evenly through the sorted prompts, not their start
    records = [records[int(i)] for i in np.linspace(0, len(records) - 1, e.num_prompts)]
  fitted, records = prompt_fit.fit_records(records, config.data, tok, max_len=model_cfg.max_len,
                                          max_new_tokens=e.max_new_tokens, bucket=bucket,
                                          what="held-out prompts", reward=checker(config))
  return fitted.texts, fitted.ids, records
