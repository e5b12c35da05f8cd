"""How a tuned policy compares with its reference on held-out prompts.

The numbers the DPO paper plots (Rafailov et al. 2023, Fig. 2) and RLHF runs
track: the ground-truth score of the policy's responses, and the sequence-level
KL(pi || pi_ref) = E_{y ~ pi} [sum_t log pi(y_t | ...) - log pi_ref(y_t | ...)],
estimated from samples at temperature 1 (unbiased; k1 summed over tokens).
"""

from __future__ import annotations

import jax
import numpy as np

from research import sampling
from research.data import comparisons
from research.rlhf.reference import ReferenceScorer
from research.rlhf.rewards import ground_truth
from research.rlhf.rollout import rollout


def policy_report(model, policy_params, ref_params, tok, prompts: list[str], *, template: str,
                  prompt_format: str, mesh, rules, max_new_tokens: int, seed: int = 0,
                  reward_fn=None, samples_per_prompt: int = 1) -> dict:
  """Greedy ground-truth scores of policy and reference, and the sampled KL."""
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
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
  report.update(sampled_report(sampler, model, policy_params, ref_params, tok, prompts, ids,
                               prompt_format=prompt_format, mesh=mesh, rules=rules,
                               max_new_tokens=max_new_tokens, seed=seed + 1, reward_fn=reward_fn,
                               samples_per_prompt=samples_per_prompt))
  # Per prompt, judged by the ground-truth scorer; ties count a half.
  wins = np.sign(greedy_scores["policy"] - greedy_scores["reference"])
  report["win_rate_vs_reference"] = float(np.mean((wins + 1) / 2))
  return report


def sampled_report(sampler, model, policy_params, ref_params, tok, prompts, ids, *,
                   prompt_format: str, mesh, rules, max_new_tokens: int, seed: int,
                   reward_fn=None, reward=None, samples_per_prompt: int = 1) -> dict:
  """Temperature-1 samples of the policy: KL(pi || pi_ref) summed over the response
  (k1, unbiased), and their mean ground-truth score; with `reward_fn` (tokens, mask)
  also the reward model's, with `reward` (an `rlhf.rewards` source) also its."""
  many = [i for i in ids for _ in range(samples_per_prompt)]
  sampled = rollout(sampler, policy_params, many, tok, jax.random.PRNGKey(seed),
                    sampling.SamplingConfig(max_new_tokens, temperature=1.0))
  policy_lp = np.asarray(sampled.sample.model_logprobs).sum(1)
  ref_lp = ReferenceScorer(model, ref_params, mesh, rules)(
      sampled.tokens, sampled.mask, sampled.response_mask)
  out = {"kl": float(np.mean(policy_lp - ref_lp)),
         "sampled/ground_truth": float(np.mean(
             [ground_truth(prompts[i // samples_per_prompt], r, prompt_format)
              for i, r in enumerate(sampled.texts)])),
         "sampled/length": float(sampled.lengths.mean())}
  if reward_fn is not None:
    out["sampled/reward_model"] = float(np.mean(reward_fn(sampled.tokens, sampled.mask)))
  if reward is not None:
    out["sampled/reward"] = float(np.mean(reward(
        sampled, [prompts[i // samples_per_prompt] for i in range(len(many))])))
  return out
