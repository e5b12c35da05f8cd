"""Stage 3: a reward model fitted to preference pairs / K-way rankings.

The trunk starts from `config.init_from` (an SFT or CLM run), the head fresh; with
`config.init_head`, `init_from` is a reward run whose trunk and head both continue
(preference-model pretraining, then fine-tuning on this run's data). The summary
records the chain of runs it descends from (`lineage`).
After training, on held-out data (always with clean labels): pairwise accuracy,
Spearman correlation with the ground-truth scorer (embedded data), and the
normalisation (mean/std of held-out scores) that `RewardFunction` applies.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from research import runs, seeds
from research.data import comparisons, packing, preferences, prompt_fit
from research.data import summary as data_summary
from research.models import config as model_config
from research.models.heads import ScalarModel
from research.reward_fn import NORMALIZATION_FILE, RewardFunction
from research.stages import common
from research.training import partitioning


def _texts(records, limit: int):
  for record in records[:limit]:
    yield record["prompt"]
    yield from record["responses"]


def run(config, workdir: str, hooks=()) -> dict:
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  d = config.data
  train_records = preferences.preference_records(
      d, "train", seed=seeds.derived_seed(config.seed, "label_noise"))
  eval_records = preferences.preference_records(d, "validation")
  tok = runs.tokenizer_for(config, workdir,
                             lambda: _texts(train_records, d.tokenizer_train_docs))
  cap, overflow = prompt_fit.settings(d)
  encode = lambda records: comparisons.encode(records, tok, d.template, d.seq_len,
                                              d.num_responses, max_prompt_len=cap,
                                              overflow=overflow)
  (train_ex, train_stats), (eval_ex, eval_stats) = encode(train_records), encode(eval_records)
  data = data_summary.report({"train": train_stats, "validation": eval_stats},
                             holdout=train_records.holdout, seq_len=d.seq_len,
                             tokenizer_from=runs.tokenizer_origin(config))
  data_summary.check_heldout_batch(eval_stats, d, train_records.holdout)
  model = ScalarModel(model_config.from_config(config.model), head_init="reward")
  batches = lambda examples, train: comparisons.batches(
      examples, global_batch_size=d.batch_size, seed=seeds.derived_seed(config.seed, "data"),
      train=train)
  rows = packing.rows_for(d, train_ex, partitioning.batch_axis_size(
      *partitioning.mesh_and_rules(config)), seeds.derived_seed(config.seed, "packing"))
  pack = (lambda it: packing.Packed(it, rows)) if rows else (lambda it: it)
  train_iter = pack(iter(batches(train_ex, True)))
  result, s = common.train(
      config, workdir, model, train_iter=train_iter,
      eval_batches=lambda: pack(iter(batches(eval_ex, False))), hooks=hooks,
      init_subtree=None if config.get("init_head") else "decoder",
      rows_per_example=d.num_responses)

  summary = {"step": result.step, "preempted": result.preempted,
             "lineage": runs.lineage(config), "init_head": bool(config.get("init_head")),
             "data": {**data, "label_noise": d.label_noise,
                      **packing.report(train_iter, d.batch_size * d.num_responses)},
             "train": result.train_metrics, "eval": result.eval_metrics,
             "eval_at_start": result.eval_history.get(0, {}),
             "compilations": s.train_step.compilations()}
  if not result.preempted:
    reward_fn = RewardFunction(model, result.state.params, s.mesh, s.rules)
    analysis = held_out_analysis(reward_fn, eval_ex, eval_records, d.batch_size)
    summary["held_out"] = analysis
    if jax.process_index() == 0:
      with open(os.path.join(workdir, NORMALIZATION_FILE), "w", encoding="utf-8") as f:
        json.dump({"offset": analysis["score_mean"], "scale": analysis["score_std"],
                   "num_responses": analysis["num_responses"]}, f, indent=2)
  runs.write_json(workdir, "summary.json", summary)
  return summary


def held_out_analysis(reward_fn: RewardFunction, examples, records, batch_size: int) -> dict:
  """Scores every held-out response once; accuracy over all ranked pairs, rank
  correlation with the ground-truth scores (when the data has them)."""
  tokens = np.concatenate([e["tokens"] for e in examples])
  mask = np.concatenate([e["mask"] for e in examples])
  valid = np.concatenate([e["ranks"] >= 0 for e in examples])
  scores = np.concatenate([reward_fn.raw(tokens[i:i + batch_size], mask[i:i + batch_size])
                           for i in range(0, len(tokens), batch_size)])
  k = examples[0]["ranks"].shape[0]
  scores_NxK, ranks_NxK = scores.reshape(-1, k), np.stack([e["ranks"] for e in examples])
  correct = total = 0
  for s_row, r_row in zip(scores_NxK, ranks_NxK):
    for i in range(k):
      for j in range(k):
        if r_row[i] >= 0 and r_row[j] >= 0 and r_row[i] < r_row[j]:
          correct += int(s_row[i] > s_row[j])
          total += 1
  out = {"pairwise_accuracy": correct / max(total, 1), "num_pairs": total,
         "num_responses": int(valid.sum()), "score_mean": float(scores[valid].mean()),
         "score_std": float(scores[valid].std() + 1e-6)}
  if "scores" in records[0] and len(records) == len(examples):
    truth = np.concatenate([np.asarray(r["scores"] + [np.nan] * (k - len(r["scores"])))
                            for r in records])
    keep = valid & np.isfinite(truth)
    out["spearman_vs_ground_truth"] = preferences.spearman(scores[keep], truth[keep])
  return out
