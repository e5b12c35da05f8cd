"""Stage 1: causal language-model pretraining on `config.data.source`."""

from __future__ import annotations

import functools
import logging
import os

import jax

from research import runs, sampling, seeds
from research.data import instructions, pipeline, sources, stats, summary as summary_lib
from research.models import config as model_config
from research.models.decoder import Decoder
from research.stages import common
from research.training.writers import MetricWriter


def _first_texts(source, n: int):
  return (source[i]["text"] for i in range(min(n, len(source))))


def _tokenizer_texts(source, n: int, embedded: bool):
  """Corpus text; on the embedded corpus also the later stages' fixed prompt text (one
  tokenizer serves the whole embedded pipeline). A researcher's tokenizer comes from
  their data alone."""
  yield from _first_texts(source, n)
  if embedded:
    yield from instructions.boilerplate()


def run(config, workdir: str, hooks=()) -> dict:
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  train_src = sources.text_source(config.data, "train")
  eval_src = sources.text_source(config.data, "validation")
  tok = runs.tokenizer_for(config, workdir, lambda: _tokenizer_texts(
      train_src, config.data.tokenizer_train_docs, config.data.source == "embedded"))
  # The first documents' tokens, once: the data summary now, the unigram entropy later.
  sample = [tok.encode(t) for t in _first_texts(train_src, 2000)]
  data_summary = stats.text_summary(train_src, eval_src, sample, getattr(tok, "unk_id", None))
  summary_lib.announce([stats.describe(data_summary),
                        getattr(train_src, "holdout", None) and f"data: {train_src.holdout}",
                        summary_lib.unk_warning(data_summary["unk_rate"],
                                                runs.tokenizer_origin(config))])
  data_summary["holdout"] = getattr(train_src, "holdout", None)
  model = Decoder(model_config.from_config(config.model))
  batches = functools.partial(pipeline.clm_batches, tokenizer=tok, seq_len=config.data.seq_len,
                              global_batch_size=config.data.batch_size,
                              seed=seeds.derived_seed(config.seed, "data"))
  result, s = common.train(
      config, workdir, model, train_iter=iter(batches(train_src, train=True)),
      eval_batches=lambda: iter(batches(eval_src, train=False)),
      tokens_per_batch=config.data.batch_size * config.data.seq_len, hooks=hooks)

  entropy = stats.unigram_entropy((list(t) + [tok.eos_id] for t in sample), tok.vocab_size)
  summary = {"step": result.step, "preempted": result.preempted, "data": data_summary,
             "unigram_entropy": entropy, "train": result.train_metrics,
             "eval": result.eval_metrics, "compilations": s.train_step.compilations()}
  if not result.preempted and config.sample.num_samples:
    summary["samples"] = write_samples(config, workdir, model, result.state.params, tok,
                                       eval_src, s.mesh, s.rules, result.step)
  runs.write_json(workdir, "summary.json", summary)
  logging.info("eval loss %.4f vs unigram entropy %.4f nats/token",
               result.eval_metrics.get("nll", float("nan")), entropy)
  return summary


def write_samples(config, workdir, model, params, tok, eval_src, mesh, rules, step) -> list[str]:
  """Greedy continuations of the first words of held-out documents."""
  n = min(config.sample.num_samples, len(eval_src))
  prompts = [tok.prefix_ids + tok.encode(eval_src[i]["text"])[:config.sample.prompt_tokens]
             for i in range(n)]
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  out = jax.device_get(sampler(params, prompts, jax.random.PRNGKey(config.seed),
                               sampling.SamplingConfig(config.sample.max_new_tokens,
                                                       greedy=True)))
  texts = [f"{tok.decode(p[1:])} >>> {tok.decode(c)}" for p, c in zip(prompts, out.tokens)]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
      f.write("\n\n".join(texts) + "\n")
    writer = MetricWriter(workdir)
    writer.write_text(step, "samples", "\n\n".join(texts))
    writer.close()
  return texts
