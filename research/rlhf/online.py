"""The online batch source: rollout -> scores -> rewards -> advantages -> minibatches.

One step of the shared training loop (`training/loop.py`) in an online stage
(Ziegler et al. 2019; InstructGPT; Huang et al. 2024; Shao et al. 2024):

  1. sample `rollout.samples_per_prompt` (G) responses for each of
     `data.batch_size` prompts (KV cache); a prompt's G rows are consecutive;
  2. score them (reward model, ground truth, or any callable); optionally
     normalise the scores and replace those of responses without EOS;
  3. one jitted pass: log-probs under the policy and the frozen reference, the
     critic's values, per-token KL, rewards (with the KL penalty unless it is
     in the loss), and the registered advantage estimator
     (`objective.advantage`: GAE, GRPO, Dr. GRPO, RLOO, REINFORCE++, ...);
  4. `ppo.epochs` passes of shuffled minibatches of the rows, each carrying the
     keys the registered loss declares (PPO-ptx adds a pretraining batch).

The KL controller, the score statistics and the pretraining-data position are
the source's state, checkpointed by the loop with the train state; prompts,
sampling keys and minibatch order are functions of the step, so a resumed run
continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import continuous_batching, sampling
from research.data import pipeline
from research.errors import ConfigError
from research.models import logprobs, lora
from research.objectives import advantages as adv_lib
from research.objectives import policy_gradient as pg_lib
from research.rlhf import rollout as rollout_lib
from research.rlhf.actor_critic import ActorCritic
from research.seeds import derived_seed
from research.training import partitioning
from research.training.loop import Work

KL_PLACEMENTS = ("reward", "loss")


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
  """config.objective.score_norm ('none' | 'running' | 'batch' | 'baseline'), then the
  fixed score `missing_eos_score` for responses that never emitted EOS (None: no
  penalty). 'baseline' subtracts the mean of every earlier iteration's scores (not
  this one's, so the baseline stays unbiased): REINFORCE with a moving-average
  baseline, as Ahmadian et al. 2024 (sec. 3) compare it."""
  if cfg.score_norm == "running":
    moments.update(raw)
    scores = (raw - moments.mean) / max(moments.std, 1e-6)
  elif cfg.score_norm == "baseline":
    scores = raw - np.float32(moments.mean)
    moments.update(raw)
  elif cfg.score_norm == "batch":
    scores = (raw - raw.mean()) / max(float(raw.std()), 1e-6)
  elif cfg.score_norm == "none":
    scores = raw
  else:
    raise ConfigError(f"config.objective.score_norm={cfg.score_norm!r}; expected 'none', "
                      f"'running', 'batch' or 'baseline'")
  if cfg.missing_eos_score is not None:  # responses cut off before EOS get the fixed score
    scores = np.where(ended, scores, np.float32(cfg.missing_eos_score))
  return scores.astype(np.float32)


def rollout_arrays(params, ref_params, batch, beta, *, model: ActorCritic, config, estimator,
                   group_size: int):
  """Step 3, jitted: everything the update phase needs, and statistics."""
  cfg = config.objective
  mask, response = batch["mask"], batch["response_mask"].astype(bool)
  logp, entropy, values, _ = model.forward(params, batch["tokens"], mask, cfg.temperature)
  if ref_params is None:  # a LoRA policy: its reference is its own base, adapters off
    ref_params = lora.disabled(params["policy"])
  ref_logp, _ = logprobs.sequence_token_logprobs(model.policy, ref_params, batch["tokens"],
                                                 mask, cfg.temperature)
  ref_logp = jnp.where(response, ref_logp, 0.0)
  kl = adv_lib.kl_per_token(logp, ref_logp, response, cfg.kl.estimator)
  # GRPO-style runs put the KL in the loss instead (policy_gradient.py).
  penalty = kl if cfg.kl.placement == "reward" else jnp.zeros_like(kl)
  rewards, non_score = adv_lib.token_rewards(batch["scores"], penalty, response, beta)
  if cfg.whiten_rewards:
    rewards = adv_lib.whiten(rewards, response, shift_mean=False)
  advantages, returns = estimator(adv_lib.Inputs(rewards, values, response, group_size),
                                  config=config)
  raw_advantages = advantages
  if cfg.whiten_advantages:
    advantages = adv_lib.whiten(advantages, response)
  per_seq = lambda x: jnp.where(response, x, 0.0).sum(1).mean()
  stats = {
      "objective/kl": per_seq(logp - ref_logp),                 # k1, summed over the response
      f"objective/kl_{cfg.kl.estimator}": per_seq(kl),           # the estimator in the penalty
      "objective/entropy": per_seq(entropy),
      "objective/non_score_reward": per_seq(non_score),
      "objective/rlhf_reward": per_seq(non_score) + batch["scores"].mean(),
      "returns/mean": adv_lib.masked_mean(returns, response),
      "returns/var": adv_lib.masked_var(returns, response),
      "advantages/mean": adv_lib.masked_mean(raw_advantages, response),
      "advantages/var": adv_lib.masked_var(raw_advantages, response),
      "val/mean_at_rollout": adv_lib.masked_mean(values, response),
  }
  # The sampler's and the trainer's log-probs of the same tokens: equal in exact
  # arithmetic, apart where kernels, dtypes or the KV cache differ.
  gap = jnp.where(response, jnp.abs(logp - batch["sampler_logp"]), 0.0)
  stats.update({"objective/entropy_per_token": adv_lib.masked_mean(entropy, response),
                "sampler/logp_gap_mean": adv_lib.masked_mean(gap, response),
                "sampler/logp_gap_max": gap.max()})
  arrays = {"old_logp": logp, "old_values": values, "advantages": advantages, "returns": returns,
            "ref_logp": ref_logp}
  if cfg.get("tis_cap", 0.0) > 0:
    arrays["tis_weight"] = pg_lib.truncated_is_weights(logp, batch["sampler_logp"], response,
                                                       cfg.tis_cap)
    stats["sampler/tis_weight_mean"] = adv_lib.masked_mean(arrays["tis_weight"], response)
    stats["sampler/tis_capped"] = adv_lib.masked_mean(
        (arrays["tis_weight"] >= cfg.tis_cap).astype(jnp.float32), response)
  return arrays, stats


def prompt_indices(iteration: int, batch_size: int, num_prompts: int, seed: int) -> np.ndarray:
  """The prompts of an iteration: a stream of per-epoch permutations, cut in batches."""
  stream = np.arange(iteration * batch_size, (iteration + 1) * batch_size)
  epochs, within = stream // num_prompts, stream % num_prompts
  return np.asarray([np.random.default_rng([seed, e]).permutation(num_prompts)[i]
                     for e, i in zip(epochs, within)])


def select_groups(scores: list[np.ndarray], group_size: int, batch: int,
                  dynamic: bool) -> tuple[list[tuple[int, int]], int]:
  """(the (draw, group) pairs of the batch, how many groups disagree). Without
  `dynamic`, the first draw's groups. With it (DAPO's dynamic sampling), the
  groups whose scores do not all tie, in the order drawn, then tied ones if the
  draws so far hold too few."""
  if not dynamic:
    return [(0, g) for g in range(batch)], batch
  kept, tied = [], []
  for d, raw in enumerate(scores):
    for g, std in enumerate(raw.reshape(-1, group_size).std(1)):
      (kept if std > 1e-6 else tied).append((d, g))
  return (kept + tied)[:batch], len(kept)


def group_stats(scores_B: np.ndarray, group_size: int) -> dict[str, float]:
  """How much the G responses of a prompt differ: group baselines learn nothing
  from a group whose scores are all equal."""
  if group_size < 2:
    return {}
  std = scores_B.reshape(-1, group_size).std(1)
  return {"objective/group_std": float(std.mean()),
          "objective/zero_std_groups": float((std < 1e-6).mean())}


@dataclasses.dataclass
class Draw:
  """One round of sampling: G responses for each of a batch of prompts, scored."""
  roll: rollout_lib.Rollouts
  prompts: list            # per row
  records: list            # per row ({} without records)
  raw: np.ndarray          # per row: the reward's scores
  metrics: dict            # the reward's own (reward/<name>, errors, time)


class RolloutSource:
  """The loop's batch source of an online stage (see the module docstring).

  `ref_params=None`: the policy's own base, its LoRA adapters off (no copy).
  `records` (optional, aligned with `prompts`) are the data records the prompts
  came from; a reward reads their reference fields (`research/rewards/`)."""

  postfix = {"score": "objective/raw_scores", "kl": "objective/kl", "beta": "objective/beta"}

  def __init__(self, config, *, model: ActorCritic, ref_params, loss, estimator,
               prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]], reward: Callable,
               tok, mesh, rules, ptx_iter=None, records: Sequence[dict] | None = None):
    o, r = config.objective, config.rollout
    self.config, self.prompts, self.prompt_ids = config, prompts, prompt_ids
    self.records = list(records) if records is not None else [{} for _ in prompts]
    self.reward, self.tok, self.mesh, self.rules = reward, tok, mesh, rules
    self.ref_params, self.ptx_iter = ref_params, ptx_iter
    self.group_size = int(r.samples_per_prompt)
    self.rows = config.data.batch_size * self.group_size
    self.keys = loss.keys(config)
    self.kl_ctl = adv_lib.kl_controller(o.kl)
    self.moments = RunningMoments()
    self.drawn = None  # prompt batches drawn so far (more than steps with dynamic sampling)
    self.sampler = continuous_batching.sampler(
        model.policy, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules,
        slots=int(r.get("slots", 0) or 0))
    self.sample_cfg = sampling.SamplingConfig(r.max_new_tokens, temperature=o.temperature,
                                              top_k=r.top_k, top_p=r.top_p)
    bucket = self.sampler.bucket
    self.width = r.prompt_width or bucket * -(-max(map(len, prompt_ids)) // bucket)
    self.score_fn = jax.jit(functools.partial(rollout_arrays, model=model, config=config,
                                              estimator=estimator, group_size=self.group_size))
    self.seeds = {p: derived_seed(config.seed, p) for p in ("prompts", "sampling", "minibatches")}

  def _draw(self, params, step: int) -> Draw:
    """Samples and scores the next batch of prompts of the stream."""
    config = self.config
    chosen = prompt_indices(self.drawn, config.data.batch_size, len(self.prompts),
                            self.seeds["prompts"])
    rows = np.repeat(chosen, self.group_size)
    roll = rollout_lib.rollout(
        self.sampler, params, [self.prompt_ids[i] for i in chosen], self.tok,
        jax.random.fold_in(jax.random.PRNGKey(self.seeds["sampling"]), self.drawn),
        self.sample_cfg, prompt_width=self.width, samples_per_prompt=self.group_size)
    self.drawn += 1
    prompts, records = [self.prompts[i] for i in rows], [self.records[i] for i in rows]
    with _Timer() as t_reward:
      if hasattr(self.reward, "score"):  # reward functions: each one's scores logged too
        scored = self.reward.score(prompts, roll.texts, records)
        raw, metrics = scored.total, scored.metrics
      else:
        raw, metrics = self.reward(roll, prompts, records), {}
    metrics = {**metrics, "time/reward_s": t_reward.seconds}
    raw = np.asarray(raw, np.float32)
    if not np.all(np.isfinite(raw)):
      raise ValueError(f"the reward function returned non-finite scores at iteration {step} "
                       f"(prompt batch {self.drawn - 1}): {raw[~np.isfinite(raw)][:5]}")
    return Draw(roll, prompts, records, raw, metrics)

  def _sample(self, params, step: int):
    """(rollout, prompts, raw scores, metrics) of the step. With
    `rollout.dynamic_sampling` (DAPO, Yu et al. 2025, sec. 3.2), groups whose
    scores all tie (no learning signal for a group baseline) are dropped and more
    prompts sampled until the batch is full, at most `rollout.max_draws` batches;
    short of that, tied groups fill it (logged)."""
    r, g, batch = self.config.rollout, self.group_size, self.config.data.batch_size
    dynamic = bool(r.get("dynamic_sampling", False)) and g > 1
    if self.drawn is None:
      self.drawn = step
    draws = []
    for _ in range(max(int(r.get("max_draws", 4)), 1) if dynamic else 1):
      draws.append(self._draw(params, step))
      chosen, kept = select_groups([d.raw for d in draws], g, batch, dynamic)
      if kept >= batch:
        break
    rows = lambda d: [grp * g + k for di, grp in chosen if di == d for k in range(g)]
    take = [(d, rows(d)) for d in range(len(draws)) if rows(d)]
    roll = rollout_lib.concat([rollout_lib.take(draws[d].roll, idx) for d, idx in take])
    pick = lambda field: [getattr(draws[d], field)[i] for d, idx in take for i in idx]
    raw = np.asarray(pick("raw"), np.float32)
    metrics = {}
    for d in draws:  # the reward's own metrics, over everything sampled
      for k, v in d.metrics.items():
        metrics[k] = metrics.get(k, 0.0) + (v / len(draws) if k.startswith("reward/") and
                                            k != "reward/errors" else v)
    if dynamic:
      metrics.update({"dynamic/draws": float(len(draws)),
                      "dynamic/kept_groups": float(min(kept, batch)),
                      "dynamic/filled_with_tied": float(max(batch - kept, 0))})
    return roll, pick("prompts"), pick("records"), raw, metrics

  def next(self, state, step: int) -> Work:
    config, o = self.config, self.config.objective
    with _Timer() as t_gen:
      roll, prompts, _, raw, reward_metrics = self._sample(state.params["policy"], step)
    overlong = adv_lib.soft_overlong_punishment(
        roll.lengths, config.rollout.max_new_tokens, int(o.get("overlong_buffer", 0) or 0),
        float(o.get("overlong_penalty", 1.0)))
    scores = shape_scores(raw + overlong, roll.ended, o, self.moments)
    host = {"tokens": roll.tokens, "mask": roll.mask, "response_mask": roll.response_mask,
            "scores": scores, "sampler_logp": rollout_lib.sampler_logp(roll)}
    beta = self.kl_ctl.value
    with _Timer() as t_score:
      # Every process holds the whole rollout; each scores its block of rows, and
      # the blocks are gathered back so that every process builds the same
      # minibatches (`_minibatches` then feeds each process its block of each).
      own = partitioning.process_block(self.rows)
      with partitioning.activate(self.mesh, self.rules):
        arrays, stats = self.score_fn(
            state.params, self.ref_params,
            partitioning.shard_batch({k: v[own] for k, v in host.items()}, self.mesh,
                                     self.rules), jnp.float32(beta))
      arrays = partitioning.gather_rows(partitioning.local_rows(arrays, self.mesh, self.rules))
      stats = jax.device_get(stats)  # scalars, the same on every process
    data = {**host, **arrays, "kl_beta": np.full(self.rows, beta, np.float32)}
    if o.get("overlong_filter", False):  # DAPO: truncated responses are left out of the loss
      data["response_mask"] = roll.response_mask & roll.ended[:, None]
    missing = [k for k in self.keys if k not in data]
    if missing:
      raise ConfigError(f"config.objective.name={o.name!r} needs batch keys {missing}, which "
                        f"the rollout does not produce (it has {sorted(data)})")
    self.kl_ctl.update(float(stats["objective/kl"]), self.rows)
    metrics = {**{k: float(v) for k, v in stats.items()}, **reward_metrics,
               "objective/scores": float(scores.mean()),
               "objective/raw_scores": float(raw.mean()),
               "objective/beta": beta,
               "response/length": float(roll.lengths.mean()),
               "response/ended": float(roll.ended.mean()),
               "time/generate_s": t_gen.seconds - reward_metrics.get("time/reward_s", 0.0),
               "time/score_s": t_score.seconds,
               **group_stats(raw, self.group_size)}
    if o.get("overlong_buffer", 0):
      metrics["reward/overlong"] = float(overlong.mean())
    text = "\n\n".join(f"{p} >>> {t}  [score {s:.3f}]"
                        for p, t, s in zip(prompts[:4], roll.texts[:4], raw[:4]))
    return Work(self._minibatches(data, step), metrics, text)

  def _minibatches(self, data: dict, step: int):
    size = self.config.ppo.minibatch_size
    shuffle = np.random.default_rng([self.seeds["minibatches"], step])
    for _ in range(self.config.ppo.epochs):
      order = shuffle.permutation(self.rows)
      for lo in range(0, self.rows, size):
        rows = order[lo:lo + size][partitioning.process_block(size)]
        batch = {k: data[k][rows] for k in self.keys}
        if self.ptx_iter is not None:
          batch["ptx"] = next(self.ptx_iter)
        yield batch

  def get_state(self) -> dict:
    return {"kl_controller": self.kl_ctl.state_dict(), "score_moments": self.moments.state_dict(),
            "drawn": self.drawn,
            "ptx_data": pipeline.state_to_json(self.ptx_iter.get_state()) if self.ptx_iter
                        else None}

  def set_state(self, state: dict) -> None:
    self.kl_ctl.load_state_dict(state["kl_controller"])
    self.moments = RunningMoments(**state["score_moments"])
    self.drawn = state.get("drawn")  # older checkpoints: None, i.e. one batch per step
    if self.ptx_iter is not None:
      self.ptx_iter.set_state(pipeline.state_from_json(state["ptx_data"]))

  def compilations(self) -> dict[str, int]:
    return {"rollout pass": self.score_fn._cache_size(),  # pylint: disable=protected-access
            "sampler": self.sampler.compilations()}


class _Timer:
  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._start
