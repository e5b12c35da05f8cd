"""Stage 2: supervised fine-tuning on instructions, the loss on responses only.

Starts from `config.init_from` (a CLM run). Reports the response loss and
perplexity on held-out data, and generation metrics for the base model and the
fine-tuned one on held-out prompts: exact match against the reference answer
(on the tasks that have one) and the rate of answers closed with EOS.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from research import runs, sampling, seeds
from research.data import instructions, layouts, prompt_fit, sft, summary as data_summary
from research.data import templates
from research.models import config as model_config, lora
from research.models.decoder import Decoder
from research.stages import common


def _record_texts(records, limit: int):
  """The text of the first `limit` records, for training a tokenizer."""
  fields = {"alpaca": ("instruction", "input", "output"),
            "prompt_completion": ("prompt", "completion")}
  for record in records[:limit]:
    if "messages" in record:
      yield from (m["content"] for m in record["messages"])
    else:
      yield from (record[f] for f in fields[layouts.sft_kind(record)] if record.get(f))


def run(config, workdir: str, hooks=()) -> dict:
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  train_records = instructions.instruction_records(config.data, "train")
  eval_records = instructions.instruction_records(config.data, "validation")
  tok = runs.tokenizer_for(config, workdir, lambda: _record_texts(
      train_records, config.data.tokenizer_train_docs))
  d = config.data
  cap, overflow = prompt_fit.settings(d)
  build = lambda records: sft.build(records, tok, d.template, d.seq_len, max_prompt_len=cap,
                                    overflow=overflow)
  train_data, eval_data = build(train_records), build(eval_records)
  data = data_summary.report({"train": train_data.stats, "validation": eval_data.stats},
                             holdout=train_records.holdout, seq_len=d.seq_len,
                             tokenizer_from=runs.tokenizer_origin(config))
  data_summary.check_heldout_batch(eval_data.stats, d, train_records.holdout)
  model = Decoder(model_config.from_config(config.model))
  batches = lambda data, train: sft.batches(
      data, seq_len=d.seq_len, global_batch_size=d.batch_size,
      seed=seeds.derived_seed(config.seed, "data"), train=train)
  result, s = common.train(
      config, workdir, model, train_iter=iter(batches(train_data, True)),
      eval_batches=lambda: iter(batches(eval_data, False)),
      tokens_per_batch=d.batch_size * d.seq_len, hooks=hooks)

  summary = {"step": result.step, "preempted": result.preempted,
             "data": data,
             "train": result.train_metrics, "eval": result.eval_metrics,
             "eval_at_start": result.eval_history.get(0, {}),
             "compilations": s.train_step.compilations()}
  if not result.preempted and config.generate.num_examples:
    cases = generation_cases(eval_data.records, config)
    if model.cfg.lora_rank:  # the base is the same weights with the adapters off
      base = lora.disabled(result.state.params)
    else:
      base = (runs.load_params(config.init_from, model, s.mesh, s.rules)
              if config.init_from else None)
    summary["generate"] = {}
    outputs = {}
    for name, params in (("base", base), ("tuned", result.state.params)):
      if params is not None:
        summary["generate"][name], outputs[name] = evaluate_generation(
            model, params, tok, cases, config, s.mesh, s.rules)
    write_samples(workdir, cases, outputs)
  runs.write_json(workdir, "summary.json", summary)
  return summary


def generation_cases(records, config) -> list[dict]:
  """Held-out records to generate for: the exact-match tasks when the data has them."""
  exact = [r for r in records if r.get("task") in instructions.EXACT_MATCH_TASKS]
  return (exact or records)[:config.generate.num_examples]


def evaluate_generation(model, params, tok, cases, config, mesh, rules):
  """Greedy answers -> (metrics, decoded answers).

  ends_with_eos: the answer was closed with EOS within max_new_tokens.
  exact_match: closed with EOS and equal to the reference answer (stripped), on
  any data; exact_match/TASK and valid/TASK when records carry a 'task' field.
  valid/TASK: the answer is one of the task's reference answers in this set
  (for sentiment: exactly 'positive' or 'negative'), i.e. the format is right.
  """
  template = config.data.template
  prompts, answers = [], []
  for record in cases:
    ids, answer = templates.generation_prompt(record, template, tok)
    prompts.append(ids)
    answers.append(answer.strip())
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  # Long prompts as everywhere (`prompt_fit`), except that none is dropped here:
  # a held-out record that trained fits the row, so it is only ever cut from the left.
  room = prompt_fit.generation_room(model.cfg.max_len, config.generate.max_new_tokens,
                                    sampler.bucket, prompt_fit.settings(config.data)[0])
  prompts = [prompt_fit.fit(ids, room, "truncate_left")[0] for ids in prompts]
  out = jax.device_get(sampler(params, prompts, jax.random.PRNGKey(0), sampling.SamplingConfig(
      config.generate.max_new_tokens, greedy=True)))
  decoded = [tok.decode(t).strip() for t in out.tokens]
  ended = np.asarray(out.ended)
  metrics = {"ends_with_eos": float(ended.mean()),
             "response_tokens": float(np.asarray(out.lengths).mean())}
  # Every SFT record carries its reference answer (the output, or the last assistant
  # turn), so exact match is reported on any data; per task when records name one.
  exact = np.asarray([e and g == a for e, g, a in zip(ended, decoded, answers)])
  metrics["exact_match"] = float(exact.mean())
  tasks = [r.get("task") for r in cases]
  if any(tasks):
    for task in sorted({t for t in tasks if t}):
      rows = [i for i, t in enumerate(tasks) if t == task]
      allowed = {answers[i] for i in rows}
      metrics[f"exact_match/{task}"] = float(exact[rows].mean())
      metrics[f"valid/{task}"] = float(np.mean([ended[i] and decoded[i] in allowed
                                                for i in rows]))
  return metrics, decoded


def write_samples(workdir: str, cases, outputs: dict[str, list[str]]) -> None:
  if jax.process_index():
    return
  with open(os.path.join(workdir, "samples.jsonl"), "w", encoding="utf-8") as f:
    for i, case in enumerate(cases):
      f.write(json.dumps({"record": case,
                          **{name: texts[i] for name, texts in outputs.items()}}) + "\n")
