"""Stage: one policy against its reference on held-out prompts (no training).

What it is measured on comes from the policy run unless the config says otherwise
(`resolve`): its reference (a DPO, RL or best-of-n run's `init_from`, the model
its KL is to; an SFT or CLM run is its own reference), and where its data came
from: source, fields, splits and template (`SOURCE_KEYS`; the other data keys,
e.g. prompt limits, are this config's). So a policy trained on a researcher's
data is judged on that data's held-out prompts, not on the embedded movie task.

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

import logging
import os

import jax
import ml_collections
import numpy as np

from research import evaluation, runs, sampling, seeds, verifiable
from research.data import preferences, prompt_fit
from research.errors import ConfigError
from research.reward_fn import RewardFunction
from research.rlhf import best_of_n, rewards
from research.rlhf.rollout import rollout
from research.training import partitioning


# Stages whose run is regularised to the run it starts from (its KL reference).
REGULARISED = ("dpo", "rlhf", "best_of_n")
LANGUAGE_MODELS = ("clm", "sft", *REGULARISED)
SFT_SOURCES = {"embedded_chat": ("embedded", "chat")}  # SFT's embedded set -> prompts, template
# The data keys that say where the prompts come from and how they read: taken from
# the policy run with its source; the others (prompt limits, ...) stay this config's.
SOURCE_KEYS = ("source", "field_map", "label_names", "tfds_splits", "tfds_data_dir",
               "holdout_every", "text_field", "corpus_seed", "corpus_size", "prompt_format",
               "num_responses", "template")


def resolve(config) -> dict:
  """Fills config.init_from, config.data and config.data.template from the policy run
  where they are empty (see the module doc); -> what came from where."""
  if not config.policy:
    raise ConfigError("config.policy (the run to evaluate) is required")
  if not os.path.exists(os.path.join(config.policy, runs.CONFIG_FILE)):
    raise ConfigError(f"config.policy={config.policy!r} is not the workdir of a run (no "
                      f"{runs.CONFIG_FILE})")
  policy = runs.load_config(config.policy)
  stage = policy.get("stage", "")
  if stage not in LANGUAGE_MODELS:
    raise ConfigError(f"config.policy={config.policy!r} is a {stage or 'unknown'} run; evaluate "
                      f"a language-model run ({', '.join(LANGUAGE_MODELS)})")
  came = {}
  with config.unlocked():
    if not config.init_from:
      regularised = stage in REGULARISED and policy.get("init_from")
      config.init_from = policy.init_from if regularised else config.policy
      came["reference"] = (f"{config.init_from} (the policy run's init_from)" if regularised
                           else f"{config.init_from} (the policy itself: a {stage} run)")
    if not config.data.source:  # where the data comes from: the policy run's keys
      theirs = policy.get("data", ml_collections.ConfigDict()).to_dict()
      data = ml_collections.ConfigDict({**config.data.to_dict(),
                                        **{k: v for k, v in theirs.items() if k in SOURCE_KEYS}})
      data.source, template = SFT_SOURCES.get(data.source, (data.source, data.get("template")))
      data.template = config.data.template or template or "alpaca"
      config.data = data
      came["data"] = f"source {data.source!r}, template {data.template!r} (the policy run's)"
    elif not config.data.template:
      config.data.template = policy.get("data", {}).get("template") or "alpaca"
      came["data"] = f"template {config.data.template!r} (the policy run's)"
  for what, where in came.items():
    logging.warning("evaluate: %s from %s", what, where)
  return came


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  del hooks, reward
  e = config.evaluate
  came = resolve(config)
  runs.resolve(config)  # init_from's architecture, every value checked
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
        model, params, ref_params, tok, prompts, data_cfg=config.data,
        prompt_format=fmt, mesh=mesh, rules=rules, max_new_tokens=e.max_new_tokens,
        seed=config.seed, reward_fn=rm, samples_per_prompt=e.samples_per_prompt)
  check = verifiable.checker(config)
  if check is not None:  # a task with checkable answers: pass@k of both, and the plot
    held = verifiable.held_out(config, tok, model.cfg)
    curves = {name: verifiable.report(model, p, tok, *held, check, n=e.pass_k_samples,
                                      max_new_tokens=e.max_new_tokens, seed=config.seed,
                                      mesh=mesh, rules=rules)
              for name, p in (("policy", params), ("reference", ref_params))}
    report["verifiable"] = curves
    if jax.process_index() == 0:
      verifiable.plot_pass_at_k({f"policy ({config.policy})": curves["policy"],
                                 f"reference ({config.init_from})": curves["reference"]},
                                os.path.join(workdir, "pass_at_k.png"))
  summary = {"policy": config.policy, "reference": config.init_from,
             "data": {"source": config.data.source, "template": config.data.template},
             "from_policy_run": came, "best_of_n": e.best_of_n, **report}
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
  fitted = prompt_fit.for_generation(prompts, config.data, tok, max_len=model.cfg.max_len,
                                     max_new_tokens=e.max_new_tokens, bucket=sampler.bucket,
                                     what="held-out prompts")
  prompts, ids = fitted.texts, fitted.ids
  texts, scores, _, lengths = best_of_n.sample_and_score(
      sampler, params, prompts, ids, tok, select, n=e.best_of_n,
      cfg=sampling.SamplingConfig(e.max_new_tokens, temperature=1.0),
      rng=jax.random.PRNGKey(seeds.derived_seed(config.seed, "evaluate_bon")),
      chunk=e.sample_batch)
  best = scores.argmax(1)
  rows = np.arange(len(prompts))
  greedy_ref = rollout(sampler, ref_params, ids, tok, jax.random.PRNGKey(config.seed),
                       sampling.SamplingConfig(e.max_new_tokens, greedy=True))
  report = {"num_prompts": len(prompts), "prompts": fitted.counts.as_dict(),
            "kl": best_of_n.kl_bound(e.best_of_n),
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
