"""The one training loop of every stage, offline (CLM, SFT, reward, DPO) and online
(PPO, A2C, GRPO, RLOO, ...).

A step takes its work from a batch source: offline, one batch of a data
iterator (`IteratorSource`); online, a rollout turned into minibatches
(`rlhf/online.py`: generate -> score -> advantages -> epochs of minibatches).
Each minibatch is one call of the jitted train step. The loop owns everything
else, once: it resumes from the latest checkpoint (state + the source's
position), logs to TensorBoard and metrics.jsonl behind a progress bar,
evaluates periodically, saves every `checkpoint_every` steps and on SIGTERM,
and stops on a non-finite loss without touching the last good checkpoint.
Metrics are read back one step late, so the host never stalls the device queue.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from tqdm.auto import tqdm

from research.data import pipeline
from research.errors import DataError
from research.training import partitioning
from research.training.checkpoint import Checkpointer
from research.training.writers import MetricWriter, read_metrics


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  preempted: bool
  train_metrics: dict[str, float]
  eval_metrics: dict[str, float]
  eval_history: dict[int, dict[str, float]]  # step -> metrics, earlier sessions' included
  # every step's metrics (earlier sessions' steps as metrics.jsonl logged them)
  history: list[dict[str, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Work:
  """One step's work from a batch source: host minibatches, each one optimizer
  update in order, and host-side statistics logged with the step's metrics."""
  minibatches: Iterable[dict]
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  text: str = ""  # e.g. sampled responses, written to TensorBoard at log steps


class IteratorSource:
  """An offline data iterator (with get_state/set_state) as a batch source:
  one batch, one update per step."""

  postfix = {"loss": "loss"}  # progress-bar field -> metric

  def __init__(self, iterator):
    self.iterator = iterator

  def next(self, state, step: int) -> Work:
    del state, step
    return Work([next(self.iterator)])

  def get_state(self):
    return pipeline.state_to_json(self.iterator.get_state())

  def set_state(self, state) -> None:
    self.iterator.set_state(pipeline.state_from_json(state))

  def compilations(self) -> dict[str, int]:
    return {}


def evaluate(eval_step, params, batches: Iterable[dict], mesh, rules,
             max_batches: int) -> dict[str, float]:
  """Token-weighted means over up to `max_batches` held-out batches."""
  sums: dict[str, float] = {}
  total_weight, n = 0.0, 0
  batches = iter(batches)
  while n < max_batches:
    batch = next(batches, None)
    # Several processes stop at the first batch one of them lacks (the pipelines
    # give them the same count; a batch source that does not would otherwise
    # leave the others waiting in a collective forever).
    if not partitioning.all_processes(batch is not None):
      break
    metrics = jax.device_get(eval_step(params, partitioning.shard_batch(batch, mesh, rules)))
    weight = float(metrics.get("num_tokens", metrics.get("num_examples", 1.0)))
    for k, v in metrics.items():
      sums[k] = sums.get(k, 0.0) + float(v) * (1.0 if k.startswith("num_") else weight)
    total_weight += weight
    n += 1
  if not n:
    raise DataError("the held-out data gives no full batch of config.data.batch_size rows (SFT "
                    "packs several examples into a row); lower config.data.batch_size, or hold "
                    "out more data (config.data.holdout_every, or a larger validation split)")
  out = {k: (v if k.startswith("num_") else v / total_weight) for k, v in sums.items()}
  if "nll" in out:
    out["perplexity"] = float(np.exp(out["nll"]))
  return out


class SigtermFlag:
  """Turns SIGTERM into a flag the loop polls (pre-emption on TPU VMs and clusters)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: nothing to install
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def progress_bar(total: int, start: int, workdir: str):
  """tqdm named after the workdir; sparse updates when stderr is a log file."""
  return tqdm(total=total, initial=start, desc=os.path.basename(os.path.normpath(workdir)),
              dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0,
              disable=jax.process_index() != 0)


def _mean(records: list[dict]) -> dict[str, float]:
  """Counts (num_*) add up; everything else is averaged."""
  keys = records[0].keys()
  return {k: float(np.sum([r[k] for r in records]) if k.startswith("num_")
                   else np.mean([r[k] for r in records])) for k in keys}


def run(trainer, source, *, train_cfg, workdir: str,
        eval_batches: Callable[[], Iterable] | None = None, tokens_per_batch: int = 0,
        hooks: Iterable[Callable[[int], None]] = (),
        evaluator: Callable[[Any], dict] | None = None) -> LoopResult:
  """Trains `trainer` (`training/trainer.py`) until `train_cfg.steps`; see the
  module docstring for the contract.

  `source` has `next(state, step) -> Work`, `get_state()` / `set_state(s)` (JSON,
  checkpointed with the state), `compilations() -> {name: count}` and
  `postfix` ({progress-bar field: metric}). `hooks` are called as hook(step)
  after every step. Held-out evaluation is the trainer's eval step over
  `eval_batches`, or `evaluator(state) -> metrics` (an online stage's pass@k,
  say), at step 0, every `eval_every` steps and at the end.

  A resumed run reports the whole run: the evaluations and logged steps of earlier
  sessions come back from metrics.jsonl, so rerunning a finished run trains nothing,
  evaluates nothing again and returns what the run ended with."""
  state, train_step, mesh, rules = trainer.state, trainer.train_step, trainer.mesh, trainer.rules
  eval_step = trainer.eval_step if eval_batches is not None else None
  total = int(train_cfg.steps)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), train_cfg.max_to_keep)
  start = 0
  restored = ckpt.restore_newest_good(trainer.abstract_state, trainer.shardings)
  if restored is not None:
    start, state, meta = restored
    source.set_state(meta["data"])
    logging.info("resumed from %s at step %d", ckpt.directory, start)
  # Steps logged after the checkpoint resumed from are trained again: drop them.
  writer = MetricWriter(workdir, resume_step=start)
  earlier = read_metrics(workdir, "train") if start else {}
  eval_history: dict[int, dict[str, float]] = (
      {k: v for k, v in read_metrics(workdir, "eval").items() if k <= start} if start else {})

  def save(step: int, data_state) -> None:
    ckpt.save(step, state, {**trainer.checkpoint_meta, "data": data_state, "step": step})

  def do_eval(step: int) -> dict[str, float]:
    if eval_step is not None:
      metrics = evaluate(eval_step, state.params, eval_batches(), mesh, rules,
                         train_cfg.eval_batches)
    elif evaluator is not None:
      metrics = evaluator(state)
    else:
      return {}
    writer.write(step, metrics, "eval")
    eval_history[step] = metrics
    return metrics

  # (step, device metrics of its minibatches, host metrics, text) not yet read back
  pending: list[tuple[int, list, dict, str]] = []
  window: list[dict] = []
  history: list[dict] = [{"step": k, **v} for k, v in sorted(earlier.items())]
  last_train: dict[str, float] = earlier[max(earlier)] if earlier else {}
  last_eval: dict[str, float] = eval_history[max(eval_history)] if eval_history else {}
  data_state = source.get_state()
  last_log_time, last_log_step = time.time(), start

  def drain(keep: int) -> None:
    """Reads back all but `keep` pending metrics; stops on a non-finite loss."""
    nonlocal last_train, last_log_time, last_log_step
    while len(pending) > keep:
      step, device_metrics, host_metrics, text = pending.pop(0)
      metrics = {**_mean([{k: float(v) for k, v in m.items()}
                          for m in jax.device_get(device_metrics)]), **host_metrics}
      # The loss of step k is computed before update k, the parameters after it:
      # a state is good only if both (and the gradient) are finite.
      watched = {k: metrics[k] for k in ("loss", "grad_norm", "param_norm") if k in metrics}
      if not all(np.isfinite(v) for v in watched.values()):
        bar.close()
        ckpt.close()
        writer.close()
        good = ckpt.latest_step()
        where = (f"the last good checkpoint is step {good} in {ckpt.directory}" if good
                 else "no checkpoint was saved before it")
        values = ", ".join(f"{k}={v}" for k, v in watched.items())
        raise NonFiniteLossError(f"non-finite training state at step {step} ({values}); "
                                 f"stopped, {where}")
      window.append(metrics)
      history.append({"step": step, **metrics})
      if text and (step % train_cfg.log_every == 0 or step == start + 1):
        writer.write_text(step, "samples", text)
      if step % train_cfg.log_every == 0 or step == total:
        now = time.time()
        last_train = _mean(window)
        window.clear()
        if tokens_per_batch:
          last_train["tokens_per_sec"] = tokens_per_batch * (step - last_log_step) / (now - last_log_time)
        last_log_time, last_log_step = now, step
        writer.write(step, last_train, "train")
        postfix = {name: f"{last_train[k]:.4g}" for name, k in source.postfix.items()
                   if k in last_train}
        if tokens_per_batch:
          postfix["tok/s"] = f"{last_train['tokens_per_sec']:.0f}"
        bar.set_postfix(**postfix)

  evaluates = eval_step is not None or evaluator is not None
  if start == 0 and evaluates and train_cfg.eval_every:
    last_eval = do_eval(0)  # the starting point of every eval curve

  bar = progress_bar(total, start, workdir)
  preempted = False
  step = start
  with SigtermFlag() as sigterm:
    while step < total:
      work = source.next(state, step)
      device_metrics = []
      for minibatch in work.minibatches:
        batch = partitioning.shard_batch(minibatch, mesh, rules)
        with jax.transfer_guard("disallow"):  # no hidden host<->device copies per update
          state, metrics = train_step(state, batch)
        device_metrics.append(metrics)
      if not device_metrics:
        raise ValueError(f"the batch source gave no minibatch at step {step}")
      data_state = source.get_state()
      step += 1
      pending.append((step, device_metrics, work.metrics, work.text))
      drain(keep=1)
      bar.update(1)
      for hook in hooks:
        hook(step)
      if evaluates and train_cfg.eval_every and step % train_cfg.eval_every == 0 \
          and step < total:
        last_eval = do_eval(step)
      # A SIGTERM to any process stops them all at the same step (one tiny
      # collective per step when there are several), or one would save and leave
      # while the others wait for it in the next step's collectives.
      stop = not partitioning.all_processes(not sigterm.raised)
      if stop or step % train_cfg.checkpoint_every == 0 or step == total:
        drain(keep=0)  # never save a state whose loss was not checked
        save(step, data_state)
      if stop:
        logging.warning("SIGTERM: saved step %d to %s and stopped", step, ckpt.directory)
        preempted = True
        break
  drain(keep=0)
  bar.close()
  if not preempted and step not in eval_history:  # a finished run rerun: evaluated already
    last_eval = do_eval(step) or last_eval
  for name, n in {"train step": train_step.compilations(), **source.compilations()}.items():
    if n > 1:
      logging.warning("the %s compiled %d times (expected once): shapes or dtypes changed "
                      "inside the loop", name, n)
  ckpt.close()
  writer.close()
  return LoopResult(state=state, step=step, preempted=preempted, train_metrics=last_train,
                    eval_metrics=last_eval, eval_history=eval_history, history=history)
