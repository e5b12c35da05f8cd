"""How a tuned policy compares with its reference on held-out prompts.

On a researcher's own data (`ground_truth_format`), the report is what that
data supports: reward-model scores (with a reward model), KL, length, EOS rate
and the win rate judged by the reward model.

The numbers the DPO paper plots (Rafailov et al. 2023, Fig. 2) and RLHF runs
track: the ground-truth score of the policy's responses, and the sequence-level
KL(pi || pi_ref) = E_{y ~ pi} [sum_t log pi(y_t | ...) - log pi_ref(y_t | ...)],
estimated from samples at temperature 1 (unbiased; k1 summed over tokens).
"""

from __future__ import annotations

import jax
import numpy as np

from research import sampling
from research.data import prompt_fit
from research.errors import ConfigError
from research.rlhf.reference import ReferenceScorer
from research.rlhf.rewards import ground_truth
from research.rlhf.rollout import rollout


GROUND_TRUTHS = ("auto", "embedded_sentiment", "none")


def ground_truth_format(config) -> str | None:
  """The prompt format the embedded movie-review scorer judges this run's prompts in,
  or None when it does not judge them: `config.evaluate.ground_truth` 'auto' (the
  default) uses it on the embedded data only, since on a researcher's own data it
  would score every answer ~0.5; 'embedded_sentiment' forces it, 'none' drops it."""
  choice = config.evaluate.get("ground_truth", "auto")
  if choice not in GROUND_TRUTHS:
    raise ConfigError(f"config.evaluate.ground_truth={choice!r}; expected one of {GROUND_TRUTHS}")
  if choice == "none" or (choice == "auto" and config.data.source != "embedded"):
    return None
  return config.data.prompt_format


def policy_report(model, policy_params, ref_params, tok, prompts: list, *, data_cfg,
                  prompt_format: str | None, mesh, rules, max_new_tokens: int, seed: int = 0,
                  reward_fn=None, samples_per_prompt: int = 1) -> dict:
  """Greedy responses of policy and reference: length, EOS rate, ground-truth score
  (`prompt_format` None: none), reward-model score; the win rate per prompt by the
  ground truth, else by the reward model; and the sampled KL (`sampled_report`).

  The prompts are rendered with `data_cfg.template`, and long ones cut or dropped
  as in training (`prompt_fit`); `prompts` reports how many."""
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  fitted = prompt_fit.for_generation(prompts, data_cfg, tok, max_len=model.cfg.max_len,
                                     max_new_tokens=max_new_tokens, bucket=sampler.bucket,
                                     what="held-out prompts")
  prompts, ids = fitted.texts, fitted.ids
  greedy = sampling.SamplingConfig(max_new_tokens, greedy=True)
  report = {"num_prompts": len(prompts), "prompts": fitted.counts.as_dict()}
  judged = {}
  for name, params in (("policy", policy_params), ("reference", ref_params)):
    roll = rollout(sampler, params, ids, tok, jax.random.PRNGKey(seed), greedy)
    report[f"{name}/length"] = float(roll.lengths.mean())
    report[f"{name}/ended"] = float(roll.ended.mean())
    gt = None
    if prompt_format is not None:
      gt = np.asarray([ground_truth(p, r, prompt_format) for p, r in zip(prompts, roll.texts)])
      report[f"{name}/ground_truth"] = float(np.mean(gt))
      judged[name] = gt
    if reward_fn is not None:
      rm = np.asarray(reward_fn(roll.tokens, roll.mask))
      report[f"{name}/reward_model"] = float(np.mean(rm))
      if prompt_format is None:
        judged[name] = rm
    if name == "policy":
      report["samples"] = [{"prompt": p, "response": r,
                            **({"ground_truth": float(gt[i])} if gt is not None else {})}
                           for i, (p, r) in enumerate(zip(prompts[:8], roll.texts[:8]))]
  report.update(sampled_report(sampler, model, policy_params, ref_params, tok, prompts, ids,
                               prompt_format=prompt_format, mesh=mesh, rules=rules,
                               max_new_tokens=max_new_tokens, seed=seed + 1, reward_fn=reward_fn,
                               samples_per_prompt=samples_per_prompt))
  if judged:  # per prompt, by the ground truth (else the reward model); ties count a half
    report["win_rate_vs_reference"] = float(np.mean(
        (np.sign(judged["policy"] - judged["reference"]) + 1) / 2))
    report["win_rate_judge"] = "ground_truth" if prompt_format is not None else "reward_model"
  return report


def sampled_report(sampler, model, policy_params, ref_params, tok, prompts, ids, *,
                   prompt_format: str | None, mesh, rules, max_new_tokens: int, seed: int,
                   reward_fn=None, reward=None, samples_per_prompt: int = 1,
                   records=None) -> dict:
  """Temperature-1 samples of the policy: KL(pi || pi_ref) summed over the response
  (k1, unbiased), and their mean ground-truth score (unless `prompt_format` is None);
  with `reward_fn` (tokens, mask) also the reward model's, with `reward` (an
  `rlhf.rewards` source, reading the prompts' `records`) also its."""
  sampled = rollout(sampler, policy_params, ids, tok, jax.random.PRNGKey(seed),
                    sampling.SamplingConfig(max_new_tokens, temperature=1.0),
                    samples_per_prompt=samples_per_prompt)
  policy_lp = np.asarray(sampled.sample.model_logprobs).sum(1)
  ref_lp = ReferenceScorer(model, ref_params, mesh, rules)(
      sampled.tokens, sampled.mask, sampled.response_mask)
  out = {"kl": float(np.mean(policy_lp - ref_lp)),
         "sampled/length": float(sampled.lengths.mean())}
  if prompt_format is not None:
    out["sampled/ground_truth"] = float(np.mean(
        [ground_truth(prompts[i // samples_per_prompt], r, prompt_format)
         for i, r in enumerate(sampled.texts)]))
  if reward_fn is not None:
    out["sampled/reward_model"] = float(np.mean(reward_fn(sampled.tokens, sampled.mask)))
  if reward is not None:
    rows = [i // samples_per_prompt for i in range(len(sampled.texts))]
    row_records = None if records is None else [records[i] for i in rows]
    out["sampled/reward"] = float(np.mean(reward(sampled, [prompts[i] for i in rows],
                                                 row_records)))
  return out
