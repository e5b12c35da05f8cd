"""How a tuned policy compares with its reference on held-out prompts.

The numbers the DPO paper plots (Rafailov et al. 2023, Fig. 2) and RLHF runs
track: the ground-truth score of the policy's responses, and the sequence-level
KL(pi || pi_ref) = E_{y ~ pi} [sum_t log pi(y_t | ...) - log pi_ref(y_t | ...)],
estimated from samples at temperature 1 (unbiased; k1 summed over tokens).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from research import sampling
from research.data import comparisons, scorer
from research.rlhf.reference import ReferenceScorer


def ground_truth(prompt: str, response: str, prompt_format: str) -> float:
  """The embedded task's reward: positivity of the review the policy wrote."""
  text = prompt + response if prompt_format == "prefix" else response
  return scorer.score(text)


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


def rollout(sampler: sampling.Sampler, params, prompt_ids, tok, rng, cfg) -> Rollouts:
  out = jax.device_get(sampler(params, prompt_ids, rng, cfg))
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


def policy_report(model, policy_params, ref_params, tok, prompts: list[str], *, template: str,
                  prompt_format: str, mesh, rules, max_new_tokens: int, seed: int = 0,
                  reward_fn=None, samples_per_prompt: int = 1) -> dict:
  """Greedy ground-truth scores of policy and reference, and the sampled KL."""
  sampler = sampling.Sampler(model, eos_id=tok.eos_id, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  ids = [comparisons.prompt_ids(p, template, tok) for p in prompts]
  greedy = sampling.SamplingConfig(max_new_tokens, greedy=True)
  report = {"num_prompts": len(prompts)}
  greedy_scores = {}
  for name, params in (("policy", policy_params), ("reference", ref_params)):
    roll = rollout(sampler, params, ids, tok, jax.random.PRNGKey(seed), greedy)
    gt = [ground_truth(p, r, prompt_format) for p, r in zip(prompts, roll.texts)]
    greedy_scores[name] = np.asarray(gt)
    report[f"{name}/ground_truth"] = float(np.mean(gt))
    report[f"{name}/length"] = float(roll.lengths.mean())
    report[f"{name}/ended"] = float(roll.ended.mean())
    if reward_fn is not None:
      report[f"{name}/reward_model"] = float(np.mean(reward_fn(roll.tokens, roll.mask)))
    if name == "policy":
      report["samples"] = [{"prompt": p, "response": r, "ground_truth": g}
                           for p, r, g in zip(prompts[:8], roll.texts[:8], gt[:8])]
  # KL(pi || pi_ref) from temperature-1 samples of the policy.
  many = [i for i in ids for _ in range(samples_per_prompt)]
  sampled = rollout(sampler, policy_params, many, tok, jax.random.PRNGKey(seed + 1),
                    sampling.SamplingConfig(max_new_tokens, temperature=1.0))
  policy_lp = np.asarray(sampled.sample.model_logprobs).sum(1)
  ref_lp = ReferenceScorer(model, ref_params, mesh, rules)(
      sampled.tokens, sampled.mask, sampled.response_mask)
  report["kl"] = float(np.mean(policy_lp - ref_lp))
  report["sampled/ground_truth"] = float(np.mean(
      [ground_truth(prompts[i // samples_per_prompt], r, prompt_format)
       for i, r in enumerate(sampled.texts)]))
  # Per prompt, judged by the ground-truth scorer; ties count a half.
  wins = np.sign(greedy_scores["policy"] - greedy_scores["reference"])
  report["win_rate_vs_reference"] = float(np.mean((wins + 1) / 2))
  return report
