"""Stage: online RL on a KL-regularised reward: PPO, A2C, GRPO, Dr. GRPO, RLOO,
REINFORCE++ (and any registered loss / advantage estimator), optionally PPO-ptx.

The policy starts from `config.init_from` (the SFT run, or any run's policy: an
earlier RL round's), which is also the frozen reference. Scores come from `config.reward` (a reward-model run or the
embedded ground truth) or from the `reward` argument (any callable, see
`rlhf/rewards.py`). The critic is a separate model initialised from the reward
model (or the policy), a value head on the policy's trunk, or none (group
baselines). Training runs through the shared loop with `rlhf/online.py` as the
batch source.

After training: the reward and KL curves' start and end values, the policy
report on held-out prompts (ground-truth score, KL to the SFT model, win rate),
and the CLM loss on held-out pretraining text (what PPO-ptx protects).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import evaluation, objectives, runs, sampling, seeds, verifiable
from research.data import pipeline, preferences, prompt_fit, sources
from research.errors import ConfigError
from research.models import config as model_config, lora
from research.models.decoder import Decoder
from research.objectives import clm
from research.reward_fn import RewardFunction
from research.rlhf import online, rewards
from research.rlhf.actor_critic import ActorCritic
from research.training import loop, partitioning, state as state_lib, step as step_lib, trainer


def _value_params(config, model: ActorCritic, sft_params, abstract_value, mesh, rules):
  o = config.objective
  if o.critic in ("shared", "none"):
    return None  # the fresh zero head, or no critic
  if o.critic_init == "reward_model":
    if not config.reward.model:
      raise ConfigError("config.objective.critic_init='reward_model' needs config.reward.model; "
                        "or set critic_init='policy' or critic='shared'")
    # The reward model's weights (merged if a LoRA run); a LoRA critic's fresh
    # adapters are added by the build.
    value = model.value_module
    return runs.load_params(config.reward.model, type(value)(
        value.cfg.without_lora(), head_init=value.head_init), mesh, rules)
  if o.critic_init == "policy":
    # The trunk only: a scalar model has no unembedding (with LoRA, the build adds the
    # critic's own fresh adapters).
    trunk = {k: jax.tree.map(jnp.copy, sft_params[k]) for k in abstract_value["decoder"]}
    head = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract_value["head"])
    return {"decoder": trunk, "head": head}
  raise ConfigError(f"config.objective.critic_init={o.critic_init!r}; expected 'reward_model' "
                    f"or 'policy'")


def _critic_cfg(config):
  """A separate critic from a reward model takes that model's size."""
  o = config.objective
  if o.critic == "separate" and o.critic_init == "reward_model" and config.reward.model:
    # Its architecture; the adapters and an int8 base (model.lora_*, quantize_base)
    # are this run's.
    cfg = model_config.from_config(runs.load_config(config.reward.model).model)
    lora_fields = {k: config.model[k] for k in ("lora_rank", "lora_alpha", "lora_targets",
                                                "quantize_base") if k in config.model}
    return dataclasses.replace(cfg, **lora_fields)
  return None


def build_trainer(config, model: ActorCritic, sft_params, loss) -> trainer.Trainer:
  """The one trainer build over {'policy', 'value'} params: the policy from a copy of
  `sft_params` (the state is donated each step; the reference must survive), the
  critic as `config.objective` says.

  With LoRA (`model.lora_rank`) the policy's base is `sft_params` itself, not a
  copy (the reference is that base with the adapters off, read from the state);
  what trains is the adapters and the critic's head (and a separate critic's
  own adapters)."""
  mesh, rules = partitioning.mesh_and_rules(config)
  adapters = bool(model.policy.cfg.lora_rank)

  def params(abstract):
    out = {"policy": sft_params if adapters else jax.tree.map(jnp.copy, sft_params)}
    if "value" in abstract:
      value = _value_params(config, model, sft_params, abstract["value"], mesh, rules)
      out["value"] = value if value is not None else jax.tree.map(
          lambda x: jnp.zeros(x.shape, x.dtype), abstract["value"])
    return out

  return trainer.build(config, model, loss, total_steps=total_updates(config), params=params,
                       init_params=lambda rng: model.init(rng, jnp.ones((1, 8), jnp.int32)),
                       evaluate=False, trainable=(lambda path: lora.is_adapter(path) or (
                           path[0] == "value" and path[1] != "decoder")) if adapters else None)


def total_updates(config) -> int:
  """Optimizer updates of the run: iterations x epochs x minibatches per rollout."""
  rows = config.data.batch_size * config.rollout.samples_per_prompt
  return config.train.steps * config.ppo.epochs * (rows // config.ppo.minibatch_size)


def _validate(config):
  """(loss, estimator) named by the config, after checking they fit together."""
  o, r = config.objective, config.rollout
  if not config.init_from:
    raise ConfigError("config.init_from must name the SFT run (the policy's start and the "
                      "reference)")
  loss = objectives.get(o.name)
  if not loss.batch_keys:
    online_losses = sorted(k for k, v in objectives.LOSSES.items() if v.batch_keys)
    raise ConfigError(f"config.objective.name={o.name!r} is not an online loss (it declares no "
                      f"rollout batch keys); online losses: {online_losses}")
  estimator = objectives.get(o.advantage, kind="advantage")
  if estimator.needs_critic and o.critic == "none":
    raise ConfigError(f"config.objective.advantage={o.advantage!r} reads the critic's values; "
                      f"set config.objective.critic to 'separate' or 'shared'")
  if not estimator.needs_critic and o.critic != "none":
    raise ConfigError(f"config.objective.critic={o.critic!r} would train a critic that "
                      f"advantage={o.advantage!r} never reads; set config.objective.critic='none'")
  if estimator.min_group_size > r.samples_per_prompt:
    raise ConfigError(f"config.objective.advantage={o.advantage!r} compares the responses of a "
                      f"prompt: config.rollout.samples_per_prompt must be >= "
                      f"{estimator.min_group_size} (got {r.samples_per_prompt})")
  if loss.single_pass and config.ppo.epochs != 1:
    raise ConfigError(f"{o.name} makes one pass over each rollout: set config.ppo.epochs=1 "
                      f"(got {config.ppo.epochs})")
  if o.kl.placement not in online.KL_PLACEMENTS:
    raise ConfigError(f"config.objective.kl.placement={o.kl.placement!r}; expected one of "
                      f"{online.KL_PLACEMENTS}")
  rows, size = config.data.batch_size * r.samples_per_prompt, config.ppo.minibatch_size
  if rows % size:
    raise ConfigError(f"config.data.batch_size * config.rollout.samples_per_prompt = {rows} "
                      f"rows must be a multiple of config.ppo.minibatch_size={size}")
  updates = total_updates(config)
  if config.optimizer.warmup_steps >= updates:
    raise ConfigError(f"config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be "
                      f"below the {updates} optimizer updates (train.steps * ppo.epochs * "
                      f"rows / ppo.minibatch_size)")
  return loss, estimator


def ptx_source(config, split: str):
  """PPO-ptx's text: `config.ptx.source`, else the stage's own data: the embedded
  corpus for the embedded prompts, or a preference file's prompts with their
  preferred responses (never the embedded corpus under a researcher's data)."""
  if config.ptx.source or config.data.source == "embedded":
    ptx = config.ptx
    if not ptx.source:
      ptx = ml_collections.ConfigDict(config.ptx.to_dict())
      ptx.source = "embedded"
    return sources.text_source(ptx, split)
  texts = []
  for r in preferences.preference_records(config.data, split):
    prompt = r["prompt"] if isinstance(r["prompt"], str) else "\n".join(
        m["content"] for m in r["prompt"])
    best = min(range(len(r["ranks"])), key=lambda i: r["ranks"][i])
    texts.append({"text": f"{prompt}\n{r['responses'][best]}"})
  return sources.ListSource(texts)


def pretrain_loss(config, model: Decoder, params, tok, mesh, rules) -> float:
  """Per-token CLM loss of `params` on held-out pretraining text (`config.ptx`)."""
  batches = pipeline.clm_batches(ptx_source(config, "validation"), tok,
                                 seq_len=config.ptx.seq_len,
                                 global_batch_size=config.ptx.batch_size, seed=0, train=False)
  plain_clm = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  loss = functools.partial(clm.loss_fn, model=model, config=plain_clm)
  eval_step = step_lib.make_eval_step(
      loss, params_sharding=partitioning.logical_shardings(
          jax.eval_shape(state_lib.init_fn(model), jax.random.PRNGKey(0)), mesh, rules),
      mesh=mesh, rules=rules)
  return loop.evaluate(eval_step, params, iter(batches), mesh, rules,
                       config.evaluate.pretrain_batches)["nll"]


def curve_ends(history: list[dict], key: str) -> dict:
  """Mean of the first and last tenth of a per-iteration curve."""
  values = np.asarray([h[key] for h in history])
  k = max(1, len(values) // 10)
  return {"start": float(values[:k].mean()), "end": float(values[-k:].mean())}


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  loss_obj, estimator = _validate(config)
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  runs.record_policy(workdir, subtree="policy")  # params: {'policy', 'value'}
  o = config.objective
  mesh, rules = partitioning.mesh_and_rules(config)
  ways = partitioning.batch_axis_size(mesh, rules)
  if config.ppo.minibatch_size % ways:
    raise ConfigError(f"config.ppo.minibatch_size={config.ppo.minibatch_size} must be divisible "
                      f"by the {ways} ways the batch is sharded")
  tok = runs.tokenizer_for(config, workdir, lambda: ())
  policy = Decoder(model_config.from_config(config.model))
  model = ActorCritic(policy, o.critic, _critic_cfg(config))
  _, sft_params = runs.load_policy(config.init_from, mesh, rules)  # any run's language model
  built = build_trainer(config, model, sft_params,
                        functools.partial(loss_obj, model=model, config=config))
  # The reference: the SFT weights, or with LoRA the state's base with its adapters
  # off (None here; sft_params became the state's, donated each step).
  adapters = bool(policy.cfg.lora_rank)
  ref_params = None if adapters else sft_params
  del sft_params
  reference_of = lambda policy_params: (  # noqa: E731
      lora.disabled(policy_params) if adapters else ref_params)
  reward_source = rewards.as_source(reward) if reward is not None else \
      rewards.from_config(config, mesh, rules)
  # A fixed rollout.prompt_width caps the prompts as max_prompt_len does.
  data_cfg = config.data
  if config.rollout.prompt_width and (not data_cfg.get("max_prompt_len") or
                                      config.rollout.prompt_width < data_cfg.max_prompt_len):
    data_cfg = ml_collections.ConfigDict({**data_cfg.to_dict(),
                                          "max_prompt_len": config.rollout.prompt_width})
  prompts, records = prompt_fit.fit_records(
      preferences.prompt_records(config.data, "train"), data_cfg, tok,
      max_len=policy.cfg.max_len, max_new_tokens=config.rollout.max_new_tokens,
      bucket=sampling.BUCKET, what="training prompts", reward=reward_source)
  prompt_stats = prompt_fit.announce(prompts, "training prompts")
  ptx_iter = None
  if o.ptx_coef > 0:
    ptx_iter = iter(pipeline.clm_batches(
        ptx_source(config, "train"), tok, seq_len=config.ptx.seq_len,
        global_batch_size=config.ptx.batch_size, seed=seeds.derived_seed(config.seed, "ptx"),
        train=True))
  source = online.RolloutSource(
      config, model=model, ref_params=ref_params, loss=loss_obj, estimator=estimator,
      prompts=prompts.texts, prompt_ids=prompts.ids, reward=reward_source, tok=tok, mesh=mesh,
      rules=rules, ptx_iter=ptx_iter, records=records)
  evaluator, check = None, verifiable.checker(config)
  if check is not None and config.evaluate.num_prompts:  # pass@k curves while it trains
    held = verifiable.held_out(config, tok, policy.cfg)
    eval_sampler = sampling.Sampler(policy, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh,
                                    rules=rules)
    evaluator = lambda s: verifiable.report(  # noqa: E731
        policy, s.params["policy"], tok, *held, check, n=config.evaluate.pass_k_samples,
        max_new_tokens=config.evaluate.max_new_tokens, seed=config.seed, sampler=eval_sampler)
  result = loop.run(built, source, train_cfg=config.train, workdir=workdir, hooks=hooks,
                    evaluator=evaluator)

  summary = {"iteration": result.step, "preempted": result.preempted,
             "objective": o.name, "advantage": o.advantage, "critic": o.critic,
             "samples_per_prompt": config.rollout.samples_per_prompt, "ptx_coef": o.ptx_coef,
             "num_prompts": len(prompts.texts), "prompts": prompt_stats,
             "optimizer_steps": int(result.state.step),
             "compilations": built.train_step.compilations()}
  if result.history:
    summary["curves"] = {k: curve_ends(result.history, k) for k in (
        "objective/raw_scores", "objective/scores", "objective/kl", "objective/beta",
        "response/length")}
    summary["last"] = result.history[-1]
  if not result.preempted and config.evaluate.num_prompts:
    policy_params = result.state.params["policy"]
    eval_prompts = preferences.prompts(config.data, "validation")[:config.evaluate.num_prompts]
    rm = config.evaluate.reward_model or (config.reward.model
                                          if config.reward.source == "model" else "")
    summary["policy"] = evaluation.policy_report(
        policy, policy_params, reference_of(policy_params), tok, eval_prompts, data_cfg=config.data,
        prompt_format=evaluation.ground_truth_format(config), mesh=mesh, rules=rules,
        max_new_tokens=config.evaluate.max_new_tokens, seed=config.seed,
        reward_fn=RewardFunction.load(rm, mesh, rules) if rm else None,
        samples_per_prompt=config.evaluate.samples_per_prompt)
  if evaluator is not None:
    summary["eval"] = result.eval_metrics
    summary["eval_at_start"] = result.eval_history.get(0, {})
  if not result.preempted and config.evaluate.pretrain_batches:
    summary["pretrain_loss"] = {
        "policy": pretrain_loss(config, policy, result.state.params["policy"], tok, mesh, rules),
        "reference": pretrain_loss(config, policy, reference_of(result.state.params["policy"]),
                                   tok, mesh, rules)}
  runs.write_json(workdir, "summary.json", summary)
  return summary

