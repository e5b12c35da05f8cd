"""The online RLHF loop: rollout -> scores -> KL-penalised rewards -> GAE -> K epochs.

One iteration (Ziegler et al. 2019; InstructGPT; Huang et al. 2024):

  1. sample one response per prompt for `data.batch_size` prompts (KV cache);
  2. score them (reward model, ground truth, or any callable); optionally
     normalise the scores and replace those of responses without EOS;
  3. one jitted pass: log-probs under the policy and the frozen reference, the
     critic's values, per-token KL, rewards, GAE advantages and returns;
  4. `ppo.epochs` passes of shuffled minibatches through the shared step factory
     (PPO: ratio clipping; A2C: one pass, no ratio). PPO-ptx adds a pretraining
     batch to every minibatch.

The state ({'policy', 'value'} params, Adam moments, step), the KL controller,
the score statistics and the pretraining-data position are checkpointed;
prompts and sampling keys are functions of the iteration number, so a resumed
run continues exactly. SIGTERM saves and stops; a non-finite loss stops
without saving, leaving the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.data import pipeline
from research.objectives import advantages as adv_lib
from research.models import logprobs
from research.rlhf import rollout as rollout_lib
from research.rlhf.actor_critic import ActorCritic
from research.stages.common import derived_seed
from research.training import partitioning
from research.training.checkpoint import Checkpointer
from research.training.loop import NonFiniteLossError, SigtermFlag, progress_bar
from research.training.writers import MetricWriter

# What a minibatch carries into the loss (see objectives/policy_gradient.py).
TRAIN_KEYS = ("tokens", "mask", "response_mask", "old_logp", "old_values", "advantages",
              "returns")


class RunningMoments:
  """Mean and std of every score seen so far (Chan et al. parallel update)."""

  def __init__(self, count: float = 0.0, mean: float = 0.0, m2: float = 0.0):
    self.count, self.mean, self.m2 = count, mean, m2

  def update(self, x: np.ndarray) -> None:
    n, mean, var = len(x), float(np.mean(x)), float(np.var(x))
    delta, total = mean - self.mean, self.count + n
    self.mean += delta * n / total
    self.m2 += var * n + delta ** 2 * self.count * n / total
    self.count = total

  @property
  def std(self) -> float:
    return float(np.sqrt(self.m2 / max(self.count - 1, 1)))

  def state_dict(self) -> dict:
    return {"count": self.count, "mean": self.mean, "m2": self.m2}


def shape_scores(raw: np.ndarray, ended: np.ndarray, cfg, moments: RunningMoments) -> np.ndarray:
  """config.objective.score_norm ('none' | 'running' | 'batch'), then the fixed score
  `missing_eos_score` for responses that never emitted EOS (None: no penalty)."""
  if cfg.score_norm == "running":
    moments.update(raw)
    scores = (raw - moments.mean) / max(moments.std, 1e-6)
  elif cfg.score_norm == "batch":
    scores = (raw - raw.mean()) / max(float(raw.std()), 1e-6)
  elif cfg.score_norm == "none":
    scores = raw
  else:
    raise ValueError(f"config.objective.score_norm={cfg.score_norm!r}; expected 'none', "
                     f"'running' or 'batch'")
  if cfg.missing_eos_score is not None:
    scores = np.where(ended, np.float32(cfg.missing_eos_score), scores)
  return scores.astype(np.float32)


def rollout_arrays(params, ref_params, batch, beta, *, model: ActorCritic, cfg):
  """Step 3 of the loop, jitted: everything the update phase needs, and statistics."""
  mask, response = batch["mask"], batch["response_mask"].astype(bool)
  logp, entropy, values, _ = model.forward(params, batch["tokens"], mask, cfg.temperature)
  ref_logp, _ = logprobs.sequence_token_logprobs(model.policy, ref_params, batch["tokens"], mask,
                                                 cfg.temperature)
  ref_logp = jnp.where(response, ref_logp, 0.0)
  kl = adv_lib.kl_per_token(logp, ref_logp, response, cfg.kl.estimator)
  rewards, non_score = adv_lib.token_rewards(batch["scores"], kl, response, beta)
  if cfg.whiten_rewards:
    rewards = adv_lib.whiten(rewards, response, shift_mean=False)
  advantages, returns = adv_lib.gae(rewards, values, response, cfg.gamma, cfg.lam)
  raw_advantages = advantages
  if cfg.whiten_advantages:
    advantages = adv_lib.whiten(advantages, response)
  per_seq = lambda x: jnp.where(response, x, 0.0).sum(1).mean()
  stats = {
      "objective/kl": per_seq(logp - ref_logp),                 # k1, summed over the response
      f"objective/kl_{cfg.kl.estimator}": per_seq(kl),           # the estimator in the reward
      "objective/entropy": per_seq(entropy),
      "objective/non_score_reward": per_seq(non_score),
      "objective/rlhf_reward": per_seq(non_score) + batch["scores"].mean(),
      "returns/mean": adv_lib.masked_mean(returns, response),
      "returns/var": adv_lib.masked_var(returns, response),
      "advantages/mean": adv_lib.masked_mean(raw_advantages, response),
      "advantages/var": adv_lib.masked_var(raw_advantages, response),
      "val/mean_at_rollout": adv_lib.masked_mean(values, response),
  }
  arrays = {"old_logp": logp, "old_values": values, "advantages": advantages, "returns": returns}
  return arrays, stats


def prompt_indices(iteration: int, batch_size: int, num_prompts: int, seed: int) -> np.ndarray:
  """The prompts of an iteration: a stream of per-epoch permutations, cut in batches."""
  stream = np.arange(iteration * batch_size, (iteration + 1) * batch_size)
  epochs, within = stream // num_prompts, stream % num_prompts
  return np.asarray([np.random.default_rng([seed, e]).permutation(num_prompts)[i]
                     for e, i in zip(epochs, within)])


@dataclasses.dataclass
class Result:
  state: Any
  iteration: int
  preempted: bool
  history: list[dict]   # per-iteration metrics of this session


def _check_finite(iteration: int, metrics: dict, ckpt: Checkpointer) -> None:
  bad = {k: v for k, v in metrics.items() if k in ("loss", "grad_norm", "param_norm")
         and not np.isfinite(v)}
  if bad:
    good = ckpt.latest_step()
    where = (f"the last good checkpoint is iteration {good} in {ckpt.directory}" if good
             else "no checkpoint was saved before it")
    raise NonFiniteLossError(f"non-finite training state at iteration {iteration} ({bad}); "
                             f"stopped, {where}")


def run(config, workdir: str, *, model: ActorCritic, state, abstract_state, shardings,
        train_step, ref_params, prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]],
        reward: Callable, tok, mesh, rules, ptx_iter=None,
        hooks: Sequence[Callable[[int, dict], None]] = ()) -> Result:
  """Runs iterations until `config.train.steps`; see the module docstring."""
  o, r = config.objective, config.rollout
  total = int(config.train.steps)
  ways = partitioning.batch_axis_size(mesh, rules)
  batch_size = config.data.batch_size
  for key, size in (("config.data.batch_size", batch_size),
                    ("config.ppo.minibatch_size", config.ppo.minibatch_size)):
    if size % ways:
      raise ValueError(f"{key}={size} must be divisible by the {ways} ways the batch is sharded")
  if batch_size % config.ppo.minibatch_size:
    raise ValueError(f"config.data.batch_size={batch_size} must be a multiple of "
                     f"config.ppo.minibatch_size={config.ppo.minibatch_size}")

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.max_to_keep)
  writer = MetricWriter(workdir)
  kl_ctl = adv_lib.kl_controller(o.kl)
  moments = RunningMoments()
  start = ckpt.latest_step() or 0
  if start:
    state, meta = ckpt.restore(abstract_state, shardings)
    kl_ctl.load_state_dict(meta["kl_controller"])
    moments = RunningMoments(**meta["score_moments"])
    if ptx_iter is not None:
      ptx_iter.set_state(pipeline.state_from_json(meta["ptx_data"]))
    logging.info("resumed from %s at iteration %d", ckpt.directory, start)

  sampler = sampling.Sampler(model.policy, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh,
                             rules=rules)
  sample_cfg = sampling.SamplingConfig(r.max_new_tokens, temperature=o.temperature,
                                       top_k=r.top_k, top_p=r.top_p)
  width = r.prompt_width or sampler.bucket * -(-max(map(len, prompt_ids)) // sampler.bucket)
  score_fn = jax.jit(functools.partial(rollout_arrays, model=model, cfg=o))
  seeds = {p: derived_seed(config.seed, p) for p in ("prompts", "sampling", "minibatches")}

  def save(iteration: int) -> None:
    ckpt.save(iteration, state, {
        "iteration": iteration, "kl_controller": kl_ctl.state_dict(),
        "score_moments": moments.state_dict(),
        "ptx_data": pipeline.state_to_json(ptx_iter.get_state()) if ptx_iter else None})

  history: list[dict] = []
  bar = progress_bar(total, start, workdir)
  preempted = False
  iteration = start
  with SigtermFlag() as sigterm:
    while iteration < total:
      idx = prompt_indices(iteration, batch_size, len(prompts), seeds["prompts"])
      with _Timer() as t_gen:
        roll = rollout_lib.rollout(
            sampler, state.params["policy"], [prompt_ids[i] for i in idx], tok,
            jax.random.fold_in(jax.random.PRNGKey(seeds["sampling"]), iteration), sample_cfg,
            prompt_width=width)
        raw = reward(roll, [prompts[i] for i in idx])
      if not np.all(np.isfinite(raw)):
        raise ValueError(f"the reward function returned non-finite scores at iteration "
                         f"{iteration}: {raw[~np.isfinite(raw)][:5]}")
      scores = shape_scores(raw, roll.ended, o, moments)
      host = {"tokens": roll.tokens, "mask": roll.mask, "response_mask": roll.response_mask,
              "scores": scores}
      with _Timer() as t_score:
        with partitioning.activate(mesh, rules):
          arrays, stats = score_fn(state.params, ref_params,
                                   partitioning.shard_batch(host, mesh, rules),
                                   jnp.float32(kl_ctl.value))
        arrays, stats = jax.device_get((arrays, stats))
      data = {**{k: host[k] for k in ("tokens", "mask", "response_mask")}, **arrays}

      with _Timer() as t_train:
        step_metrics = []
        shuffle = np.random.default_rng([seeds["minibatches"], iteration])
        for _ in range(config.ppo.epochs):
          order = shuffle.permutation(batch_size)
          for lo in range(0, batch_size, config.ppo.minibatch_size):
            rows = order[lo:lo + config.ppo.minibatch_size]
            batch = {k: data[k][rows] for k in TRAIN_KEYS}
            if ptx_iter is not None:
              batch["ptx"] = next(ptx_iter)
            state, m = train_step(state, partitioning.shard_batch(batch, mesh, rules))
            step_metrics.append(m)
        step_metrics = jax.device_get(step_metrics)
      update = {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]
                if not k.startswith("num_")}
      _check_finite(iteration + 1, update, ckpt)

      kl_ctl_before = kl_ctl.value
      kl_ctl.update(float(stats["objective/kl"]), batch_size)
      iteration += 1
      metrics = {**{k: float(v) for k, v in stats.items()}, **update,
                 "objective/scores": float(scores.mean()),
                 "objective/raw_scores": float(raw.mean()),
                 "objective/beta": kl_ctl_before,
                 "response/length": float(roll.lengths.mean()),
                 "response/ended": float(roll.ended.mean()),
                 "time/generate_s": t_gen.seconds, "time/score_s": t_score.seconds,
                 "time/update_s": t_train.seconds}
      history.append({"iteration": iteration, **metrics})
      writer.write(iteration, metrics, "rlhf")
      if iteration % config.train.log_every == 0 or iteration == 1:
        writer.write_text(iteration, "samples", "\n\n".join(
            f"{prompts[i]} >>> {text}  [score {s:.3f}]"
            for i, text, s in zip(idx[:4], roll.texts[:4], raw[:4])))
      bar.update(1)
      bar.set_postfix(score=f"{metrics['objective/raw_scores']:.3f}",
                      kl=f"{metrics['objective/kl']:.2f}", beta=f"{kl_ctl_before:.3f}")
      for hook in hooks:
        hook(iteration, metrics)
      if sigterm.raised or iteration % config.train.checkpoint_every == 0 or iteration == total:
        save(iteration)
      if sigterm.raised:
        logging.warning("SIGTERM: saved iteration %d to %s and stopped", iteration,
                        ckpt.directory)
        preempted = True
        break
  bar.close()
  for name, n in (("train step", train_step.compilations()), ("rollout pass", score_fn._cache_size()),
                  ("sampler", sampler.compilations())):
    if n > 1:
      logging.warning("the %s compiled %d times (expected once)", name, n)
  ckpt.close()
  writer.close()
  return Result(state=state, iteration=iteration, preempted=preempted, history=history)


class _Timer:
  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._start
