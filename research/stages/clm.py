"""Stage 1: causal language-model pretraining on `config.data.source`."""

from __future__ import annotations

import functools
import logging
import os

import jax

from research import objectives, sampling
from research.data import pipeline, sources, stats
from research.models.decoder import Decoder
from research.stages import common
from research.training import loop, partitioning, step as step_lib
from research.training.writers import MetricWriter


def _first_texts(source, n: int):
  return (source[i]["text"] for i in range(min(n, len(source))))


def run(config, workdir: str, hooks=()) -> dict:
  os.makedirs(workdir, exist_ok=True)
  train_src = sources.text_source(config.data, "train")
  eval_src = sources.text_source(config.data, "validation")
  tok = common.tokenizer_for(config, workdir,
                             lambda: _first_texts(train_src, config.data.tokenizer_train_docs))
  model = Decoder(common.decoder_config(config))
  s = common.setup(config, model, config.train.steps)

  loss = functools.partial(objectives.get(config.objective.name), model=model, config=config)
  train_step = step_lib.make_train_step(
      loss, tx=s.tx, state_shardings=s.shardings, mesh=s.mesh, rules=s.rules,
      schedule=s.schedule, microbatches=config.optimizer.grad_accum_steps)
  eval_step = step_lib.make_eval_step(loss, params_sharding=s.shardings.params, mesh=s.mesh,
                                      rules=s.rules)
  batches = functools.partial(pipeline.clm_batches, tokenizer=tok, seq_len=config.data.seq_len,
                              global_batch_size=config.data.batch_size,
                              seed=common.derived_seed(config.seed, "data"))
  result = loop.run(
      train_cfg=config.train, workdir=workdir, state=s.state, abstract_state=s.abstract_state,
      state_shardings=s.shardings, train_step=train_step,
      train_iter=iter(batches(train_src, train=True)), mesh=s.mesh, rules=s.rules,
      eval_step=eval_step, eval_batches=lambda: iter(batches(eval_src, train=False)),
      tokens_per_batch=config.data.batch_size * config.data.seq_len, hooks=hooks)

  entropy = stats.unigram_entropy(
      (tok.encode(t) + [tok.eos_id] for t in _first_texts(train_src, 2000)), tok.vocab_size)
  summary = {"step": result.step, "preempted": result.preempted,
             "unigram_entropy": entropy, "train": result.train_metrics,
             "eval": result.eval_metrics, "compilations": train_step.compilations()}
  if not result.preempted and config.sample.num_samples:
    summary["samples"] = write_samples(config, workdir, model, result.state.params, tok,
                                       eval_src, s.mesh, s.rules, result.step)
  common.write_json(workdir, "summary.json", summary)
  logging.info("eval loss %.4f vs unigram entropy %.4f nats/token",
               result.eval_metrics.get("nll", float("nan")), entropy)
  return summary


def write_samples(config, workdir, model, params, tok, eval_src, mesh, rules, step) -> list[str]:
  """Greedy continuations of the first words of held-out documents."""
  n = min(config.sample.num_samples, len(eval_src))
  prompts = [[tok.bos_id] + tok.encode(eval_src[i]["text"])[:config.sample.prompt_tokens]
             for i in range(n)]
  prompts_BxP, lengths = sampling.right_pad(prompts, tok.pad_id)
  logits_fn = lambda p, t: model.apply({"params": p}, t)
  with partitioning.activate(mesh, rules):
    new, _ = sampling.greedy_uncached(logits_fn, params, prompts_BxP, lengths,
                                      config.sample.max_new_tokens, tok.eos_id, tok.pad_id)
  texts = [f"{tok.decode(p[1:])} >>> {tok.decode(c)}" for p, c in zip(prompts, new)]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
      f.write("\n\n".join(texts) + "\n")
    writer = MetricWriter(workdir)
    writer.write_text(step, "samples", "\n\n".join(texts))
    writer.close()
  return texts
