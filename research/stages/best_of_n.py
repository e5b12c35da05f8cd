"""Stage: best-of-n rejection-sampling fine-tuning, for several rounds (Llama 2 style).

Round r: the current policy (round 1: the SFT run in `config.init_from`) samples
`best_of_n.n` responses for each of `best_of_n.prompts_per_round` prompts; the
reward (`config.reward`, or the `reward` argument) keeps the best per prompt;
the policy is fine-tuned on them with the SFT objective for `train.steps` steps
into `workdir/round_<r>`, which the next round starts from. Finished rounds are
skipped on a rerun. Each round is evaluated on held-out prompts: the mean
reward of temperature-1 samples and their KL to the SFT model.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np

from research import evaluation, runs, sampling, seeds
from research.data import preferences, prompt_fit, sft
from research.errors import ConfigError
from research.models import config as model_config
from research.models.decoder import Decoder
from research.rlhf import best_of_n, rewards
from research.stages import common
from research.training import partitioning

ROUND_SUMMARY = "round_summary.json"


def round_prompts(config, round_index: int, num_prompts: int) -> np.ndarray:
  """A fresh slice of one fixed permutation per round (wrapping around)."""
  per = config.best_of_n.prompts_per_round
  order = np.random.default_rng(seeds.derived_seed(config.seed, "bon_prompts")).permutation(
      num_prompts)
  return order[np.arange(round_index * per, (round_index + 1) * per) % num_prompts]


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  if not config.init_from:
    raise ConfigError("config.init_from must name the SFT run (round 1's policy and the "
                      "reference)")
  if config.data.template not in ("alpaca", "chat"):
    raise ConfigError(f"config.data.template={config.data.template!r}: best-of-n fine-tunes "
                      f"with the SFT templates, 'alpaca' or 'chat'")
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  b = config.best_of_n
  mesh, rules = partitioning.mesh_and_rules(config)
  tok = runs.tokenizer_for(config, workdir, lambda: ())
  # Samples from each round's model merged; with model.lora_rank each round's SFT
  # trains adapters on the last round's (merged) weights.
  model = Decoder(model_config.from_config(config.model).without_lora())
  ref_params = runs.load_params(config.init_from, model, mesh, rules)
  source = rewards.as_source(reward) if reward is not None else \
      rewards.from_config(config, mesh, rules)
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  fit = lambda records, new_tokens, what: prompt_fit.fit_records(
      records, config.data, tok, max_len=model.cfg.max_len, max_new_tokens=new_tokens,
      bucket=sampler.bucket, what=what, reward=source)
  fitted, prompt_records = fit(preferences.prompt_records(config.data, "train"),
                               b.max_new_tokens, "training prompts")
  prompt_stats = prompt_fit.announce(fitted, "training prompts")
  prompts, ids = fitted.texts, fitted.ids
  eval_prompts, eval_ids, eval_records = [], [], []
  if config.evaluate.num_prompts:
    held_out, eval_records = fit(
        preferences.prompt_records(config.data, "validation")[:config.evaluate.num_prompts],
        config.evaluate.max_new_tokens, "held-out prompts")
    eval_prompts, eval_ids = held_out.texts, held_out.ids
  sample_cfg = sampling.SamplingConfig(b.max_new_tokens, temperature=b.temperature)

  def evaluate(params, r: int) -> dict:
    if not eval_prompts:  # config.evaluate.num_prompts = 0
      return {}
    return evaluation.sampled_report(
        sampler, model, params, ref_params, tok, eval_prompts, eval_ids,
        prompt_format=evaluation.ground_truth_format(config), mesh=mesh, rules=rules,
        max_new_tokens=config.evaluate.max_new_tokens,
        seed=seeds.derived_seed(config.seed, f"bon_eval_{r}"), reward=source,
        samples_per_prompt=config.evaluate.samples_per_prompt, records=eval_records)

  history = [{"round": 0, **evaluate(ref_params, 0)}]  # the SFT model
  current, params = config.init_from, ref_params
  for r in range(1, b.rounds + 1):
    round_dir = os.path.join(workdir, f"round_{r}")
    done = os.path.join(round_dir, ROUND_SUMMARY)
    if os.path.exists(done):
      with open(done, encoding="utf-8") as f:
        history.append(json.load(f))
      current = round_dir
      continue
    params = runs.load_params(current, model, mesh, rules) if r > 1 else ref_params
    chosen = round_prompts(config, r - 1, len(prompts))
    texts, scores, ended, _ = best_of_n.sample_and_score(
        sampler, params, [prompts[i] for i in chosen], [ids[i] for i in chosen], tok, source,
        n=b.n, cfg=sample_cfg, rng=jax.random.PRNGKey(seeds.derived_seed(config.seed, f"bon_{r}")),
        chunk=b.sample_batch, records=[prompt_records[i] for i in chosen])
    records, stats = best_of_n.best_records([prompts[i] for i in chosen], texts, scores, ended,
                                            b.require_eos, b.get("min_score"))
    if not records:
      raise ConfigError(f"round {r}: no sampled response ended with EOS within "
                        f"config.best_of_n.max_new_tokens={b.max_new_tokens}"
                        + (f" and scored at least config.best_of_n.min_score={b.min_score}"
                           if b.get("min_score") is not None else "")
                        + "; raise it or set config.best_of_n.require_eos=False")
    os.makedirs(round_dir, exist_ok=True)
    with open(os.path.join(round_dir, "best_responses.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(rec) + "\n" for rec in records)
    round_config = copy.deepcopy(config)
    with round_config.unlocked():
      round_config.init_from = current
      round_config.stage = "sft"
    runs.resolve(round_config)  # init_from's architecture, every value checked
    runs.save_config(round_config, round_dir)
    cap, overflow = prompt_fit.settings(config.data)
    data = sft.build(records, tok, config.data.template, config.data.seq_len,
                     max_prompt_len=cap, overflow=overflow)
    batches = lambda train, data=data: sft.batches(  # pylint: disable=cell-var-from-loop
        data, seq_len=config.data.seq_len, global_batch_size=config.data.batch_size,
        seed=seeds.derived_seed(config.seed, f"bon_data_{r}"), train=train)
    # Held-out evaluation is by sampling (below), not by the loss on these targets.
    result, _ = common.train(round_config, round_dir, model, train_iter=iter(batches(True)),
                                eval_batches=None, hooks=hooks)
    if result.preempted:
      return {"preempted": True, "round": r}
    entry = {"round": r, **stats, "train": result.train_metrics,
             **evaluate(result.state.params, r)}
    runs.write_json(round_dir, ROUND_SUMMARY, entry)
    history.append(entry)
    current = round_dir

  key = "sampled/reward"
  summary = {"rounds": history, "n": b.n, "final": current, "prompts": prompt_stats,
             "curves": {k: curve_ends_of_rounds(history, k) for k in (key, "kl")
                        if k in history[0]}}
  runs.record_policy(workdir, run=current)  # the policy is the last round's run
  runs.write_json(workdir, "summary.json", summary)
  return summary


def curve_ends_of_rounds(history: list[dict], key: str) -> dict:
  """The SFT model's value (round 0) and the last round's."""
  return {"start": history[0][key], "end": history[-1][key]}

