"""Stage: one policy against the SFT reference on held-out prompts (no training).

Every method of an experiment is measured by the same code on the same prompts
and seeds: the ground-truth score of temperature-1 samples and of greedy
responses, the reward model's score, KL(policy || SFT) summed over the response,
the win rate against the SFT model judged by the ground truth (on a researcher's
own data: by the reward model; `evaluation.ground_truth_format`), and the length.

`evaluate.best_of_n = n > 1` evaluates best-of-n sampling from `policy` instead:
n samples per prompt, the one `evaluate.select_by` prefers is kept, and its KL
to the sampling policy is the bound log n - (n - 1) / n (Stiennon et al. 2020).
"""

from __future__ import annotations

import jax
import numpy as np

from research import evaluation, runs, sampling, seeds
from research.data import comparisons, preferences
from research.errors import ConfigError
from research.reward_fn import RewardFunction
from research.rlhf import best_of_n, rewards
from research.rlhf.rollout import rollout
from research.training import partitioning


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  del hooks, reward
  e = config.evaluate
  if not (config.policy and config.init_from):
    raise ConfigError("config.policy (the run to evaluate) and config.init_from (the SFT "
                      "reference) are both required")
  runs.save_config(config, workdir)
  mesh, rules = partitioning.mesh_and_rules(config)
  tok = runs.tokenizer_for(config, workdir, lambda: ())
  model, ref_params = runs.load_policy(config.init_from, mesh, rules)
  _, params = runs.load_policy(config.policy, mesh, rules)
  rm = RewardFunction.load(e.reward_model, mesh, rules) if e.reward_model else None
  prompts = preferences.prompts(config.data, "validation")[:e.num_prompts]
  fmt = evaluation.ground_truth_format(config)
  if e.best_of_n > 1:
    report = _best_of_n(config, model, params, ref_params, tok, prompts, rm, mesh, rules)
  else:
    report = evaluation.policy_report(
        model, params, ref_params, tok, prompts, template=config.data.template,
        prompt_format=fmt, mesh=mesh, rules=rules, max_new_tokens=e.max_new_tokens,
        seed=config.seed, reward_fn=rm, samples_per_prompt=e.samples_per_prompt)
  summary = {"policy": config.policy, "best_of_n": e.best_of_n, **report}
  runs.write_json(workdir, "summary.json", summary)
  return summary


def _best_of_n(config, model, params, ref_params, tok, prompts, rm, mesh, rules) -> dict:
  e = config.evaluate
  if e.select_by == "reward_model":
    if rm is None:
      raise ConfigError("config.evaluate.select_by='reward_model' needs "
                        "config.evaluate.reward_model")
    select = rewards.TokenReward(rm)
  elif e.select_by == "ground_truth":
    select = rewards.ground_truth_source(config.data.prompt_format)  # asked for: always
  else:
    raise ConfigError(f"config.evaluate.select_by={e.select_by!r}; expected 'reward_model' or "
                      f"'ground_truth'")
  fmt = evaluation.ground_truth_format(config)
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  ids = [comparisons.prompt_ids(p, config.data.template, tok) for p in prompts]
  texts, scores, _, lengths = best_of_n.sample_and_score(
      sampler, params, prompts, ids, tok, select, n=e.best_of_n,
      cfg=sampling.SamplingConfig(e.max_new_tokens, temperature=1.0),
      rng=jax.random.PRNGKey(seeds.derived_seed(config.seed, "evaluate_bon")),
      chunk=e.sample_batch)
  best = scores.argmax(1)
  rows = np.arange(len(prompts))
  greedy_ref = rollout(sampler, ref_params, ids, tok, jax.random.PRNGKey(config.seed),
                       sampling.SamplingConfig(e.max_new_tokens, greedy=True))
  report = {"num_prompts": len(prompts), "kl": best_of_n.kl_bound(e.best_of_n),
            "sampled/length": float(lengths[rows, best].mean())}
  if e.select_by == "reward_model":
    report["sampled/reward_model"] = float(scores[rows, best].mean())
  if fmt is not None:  # judged by the ground truth
    truth = rewards.ground_truth_source(fmt)
    judged = (np.asarray(truth.fn(prompts, [texts[i][best[i]] for i in rows])),
              np.asarray(truth.fn(prompts, greedy_ref.texts)))
    report.update({"sampled/ground_truth": float(judged[0].mean()),
                   "reference/ground_truth": float(judged[1].mean()),
                   "win_rate_judge": "ground_truth"})
  elif e.select_by == "reward_model":  # a researcher's own data: judged by the reward model
    judged = (scores[rows, best], np.asarray(rm(greedy_ref.tokens, greedy_ref.mask)))
    report.update({"reference/reward_model": float(judged[1].mean()),
                   "win_rate_judge": "reward_model"})
  else:
    return report
  report["win_rate_vs_reference"] = float(np.mean((np.sign(judged[0] - judged[1]) + 1) / 2))
  return report
