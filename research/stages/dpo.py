"""Stage: DPO and its variants, from preference pairs, with the SFT model as reference.

The policy starts from `config.init_from` (the SFT run), which is also the
frozen reference. Rankings are expanded to all their ordered pairs. KTO (an
`unpaired` objective) reads unpaired examples instead: an unpaired source, or
pairs and rankings cut into desirable and undesirable halves; each example also
carries another example's completion for KTO's KL reference point. After
training: held-out preference metrics, and the policy report (ground-truth score
of greedy samples against the reference's, sequence-level KL to the reference).
"""

from __future__ import annotations

import random

from research import evaluation, objectives, runs, seeds
from research.data import comparisons, packing, preferences, prompt_fit
from research.data import summary as data_summary
from research.errors import ConfigError
from research.models import config as model_config, lora
from research.models.decoder import Decoder
from research.reward_fn import RewardFunction
from research.rlhf import reference
from research.stages import common
from research.training import partitioning


def pair_records(records) -> list[dict]:
  return [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "ranks": [0, 1],
           "where": p["where"]} for p in preferences.pairs(records)]


def unpaired_records(records, seed: int) -> list[dict]:
  """Unpaired examples as two rows each: the completion, and the completion of the
  example after it in a seeded shuffle (x_i, y_j with j != i: TRL's shift by one,
  fixed here so the reference log-probs can be precomputed). Order is kept."""
  order = list(range(len(records)))
  random.Random(seed).shuffle(order)
  other = {order[p]: order[(p + 1) % len(order)] for p in range(len(order))}
  return [{"prompt": r["prompt"], "responses": [r["completion"], records[other[i]]["completion"]],
           "ranks": [0, 1], "label": r["label"], "where": r["where"]}
          for i, r in enumerate(records)]


def run(config, workdir: str, hooks=()) -> dict:
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  d, obj = config.data, config.objective
  if not config.init_from:
    raise ConfigError("config.init_from must name the SFT run (the policy's start and the "
                      "reference)")
  unpaired = objectives.get(obj.name).unpaired
  read = preferences.unpaired_records if unpaired else preferences.preference_records
  train_records = read(d, "train", seed=seeds.derived_seed(config.seed, "label_noise"))
  eval_records = read(d, "validation")
  tok = runs.tokenizer_for(config, workdir, lambda: ())
  cap, overflow = prompt_fit.settings(d)
  rows = ((lambda r: unpaired_records(r, seeds.derived_seed(config.seed, "kto_pairs")))
          if unpaired else pair_records)
  encode = lambda records: comparisons.encode(rows(records), tok, d.template,
                                              d.seq_len, 2, max_prompt_len=cap, overflow=overflow)
  (train_ex, train_stats), (eval_ex, eval_stats) = encode(train_records), encode(eval_records)
  what = "examples" if unpaired else "pairs"
  data = data_summary.report({f"train {what}": train_stats, f"validation {what}": eval_stats},
                             holdout=train_records.holdout, seq_len=d.seq_len,
                             tokenizer_from=runs.tokenizer_origin(config))
  data_summary.check_heldout_batch(eval_stats, d, train_records.holdout)
  model = Decoder(model_config.from_config(config.model))
  mesh, rules = partitioning.mesh_and_rules(config)
  if obj.reference not in ("precompute", "online"):
    raise ConfigError(f"config.objective.reference={obj.reference!r}; expected 'precompute' "
                      f"or 'online'")
  # With LoRA the reference is the policy's own base (its adapters off): precomputed
  # from the base before training (that copy freed before the trainer's), or
  # online inside the step (objectives/dpo.reference_logps); never a second copy.
  adapters = bool(model.cfg.lora_rank)
  base = Decoder(model.cfg.without_lora())
  needs_reference = not objectives.get(obj.name).reference_free
  ref_params = None if adapters else runs.load_params(config.init_from, base, mesh, rules)
  # An int8 base is not the float run it came from: its reference is computed in the
  # step (the quantized base, adapters off), whatever objective.reference says.
  precompute = obj.reference == "precompute" and model.cfg.quantize_base == "none"
  if needs_reference and precompute:
    scorer = reference.ReferenceScorer(
        base, ref_params if ref_params is not None else
        runs.load_params(config.init_from, base, mesh, rules), mesh, rules)
    train_ex = reference.precompute(train_ex, scorer, d.batch_size, workdir, "train")
    eval_ex = reference.precompute(eval_ex, scorer, d.batch_size, workdir, "eval")
    del scorer
  batches = lambda examples, train: comparisons.batches(
      examples, global_batch_size=d.batch_size, seed=seeds.derived_seed(config.seed, "data"),
      train=train)
  online_scorer = (reference.ReferenceScorer(base, ref_params, mesh, rules)
                   if needs_reference and not adapters else None)
  wrap = lambda it: (it if "ref_logps" in train_ex[0] or (adapters and needs_reference)
                     else reference.WithReference(it, online_scorer))
  # Packed before the online reference scores them: its forward runs on the packed rows too.
  rows = packing.rows_for(d, train_ex, partitioning.batch_axis_size(mesh, rules),
                          seeds.derived_seed(config.seed, "packing"))
  pack = (lambda it: packing.Packed(it, rows)) if rows else (lambda it: it)
  packed_iter = pack(iter(batches(train_ex, True)))
  result, s = common.train(
      config, workdir, model, train_iter=wrap(packed_iter),
      eval_batches=lambda: wrap(pack(iter(batches(eval_ex, False)))), hooks=hooks,
      rows_per_example=2)

  summary = {"step": result.step, "preempted": result.preempted, "objective": obj.name,
             "beta": obj.beta,
             "data": {**data, **packing.report(packed_iter, d.batch_size * 2)},
             "train": result.train_metrics, "eval": result.eval_metrics,
             "eval_at_start": result.eval_history.get(0, {}),
             "compilations": s.train_step.compilations()}
  if not result.preempted and config.evaluate.num_prompts:
    prompts = preferences.distinct_prompts(eval_records)[:config.evaluate.num_prompts]
    reward_fn = (RewardFunction.load(config.evaluate.reward_model, mesh, rules)
                 if config.evaluate.reward_model else None)
    summary["policy"] = evaluation.policy_report(
        model, result.state.params, lora.disabled(result.state.params) if adapters else
        ref_params, tok, prompts, data_cfg=d,
        prompt_format=evaluation.ground_truth_format(config), mesh=mesh, rules=rules,
        max_new_tokens=config.evaluate.max_new_tokens, seed=config.seed, reward_fn=reward_fn,
        samples_per_prompt=config.evaluate.samples_per_prompt)
  runs.write_json(workdir, "summary.json", summary)
  return summary
