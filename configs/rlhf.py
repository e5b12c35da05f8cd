"""RLHF: PPO (or A2C) on reward-model scores minus beta * KL to the SFT model.

The base of every online method: configs/grpo.py, dr_grpo.py, rloo.py and
reinforce_pp.py change the loss, the advantage estimator, the critic, the
KL's placement and the group size, nothing else.

  python -m research.main --config=configs/rlhf.py --workdir=runs/ppo   # runs/sft + runs/reward
  python -m research.main --config=configs/rlhf.py --config.objective.name=a2c \
      --config.ppo.epochs=1 --workdir=runs/a2c
  python -m research.main --config=configs/rlhf.py --config.objective.kl.target=6   # adaptive
  python -m research.main --config=configs/rlhf.py --config.objective.ptx_coef=1.0   # PPO-ptx
  python -m research.main --config=configs/rlhf.py --config.reward.source=ground_truth
  python -m research.main --config=configs/rlhf.py:tiny --config.init_from=runs/sft_tiny \
      --config.reward.model=runs/reward_tiny

`train.steps` counts iterations (rollout + update phase); each samples
data.batch_size * rollout.samples_per_prompt rows and makes
ppo.epochs * rows / ppo.minibatch_size optimizer steps.
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset; the model must match
  the SFT run in `init_from`."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("rlhf", run)
  c.init_from = presets.workdir("sft", run)
  c.model = common.model(model_preset)
  c.reward = common.reward("model", presets.workdir("reward", run))
  c.objective = ml_collections.ConfigDict({
      "name": "ppo",            # a registered online loss: ppo | a2c | reinforce
      "advantage": "gae",       # a registered estimator: gae | grpo | dr_grpo | rloo | reinforce_pp
      "critic": "separate",     # separate (own trunk) | shared (value head on the policy) | none
      "critic_init": "reward_model",  # separate critic: reward_model | policy
      "kl": ml_collections.ConfigDict({
          "beta": 0.05,         # initial / fixed KL coefficient
          "target": 0.0,        # > 0: adaptive controller (Ziegler et al.), e.g. 6
          "horizon": 10000,
          "estimator": "k1",    # k1 | k2 | k3, per token
          "placement": "reward",  # reward: -beta * KL_t in the reward | loss: + beta * KL (GRPO)
      }),
      "loss_agg": "token_mean",  # token_mean | seq_mean_token_mean | seq_mean_token_sum
      "clip": 0.2,              # policy ratio clip
      "clip_high": 0.0,         # > 0: the upper clip, 1 + clip_high (DAPO's clip-higher: 0.28)
      "value_clip": 0.2,
      "vf_coef": 0.1,
      "entropy_coef": 0.0,
      "gamma": 1.0,
      "lam": 0.95,
      "whiten_advantages": True,
      "whiten_rewards": False,
      "score_norm": "none",     # none | running | batch | baseline (reward models come
                                # normalised; baseline: minus the mean of earlier scores)
      "missing_eos_score": None,  # e.g. -1.0: the score of a response with no EOS
      "temperature": 1.0,       # sampling, and the log-probs of the ratio and the KL
      "ptx_coef": 0.0,          # PPO-ptx: + ptx_coef * per-token CLM loss (InstructGPT eq. 2)
      # > 0: truncated importance sampling, each token's loss times
      # min(pi_trainer / pi_sampler, tis_cap) (Yao et al. 2025; e.g. 2.0). pi_sampler
      # is the distribution sampled from: with rollout.top_k / top_p it is truncated,
      # so the ratio (and the logged gap) is not 1 even where the numbers agree.
      "tis_cap": 0.0,
      # DAPO's overlong handling (Yu et al. 2025): responses within overlong_buffer
      # tokens of max_new_tokens lose up to overlong_penalty (eq. 13; 0: off), and
      # overlong_filter leaves truncated responses out of the loss.
      "overlong_buffer": 0,
      "overlong_penalty": 1.0,
      "overlong_filter": False,
  })
  c.rollout = ml_collections.ConfigDict({
      "max_new_tokens": 96, "top_k": 0, "top_p": 1.0,
      "samples_per_prompt": 1,  # G responses per prompt (group baselines need G >= 2)
      "prompt_width": 0,        # 0: the longest prompt, rounded up to the sampler's bucket
      # Continuous batching: decode the iteration's rows through this many KV-cache
      # rows, a row's slot refilled with the next prompt when it ends
      # (research/continuous_batching.py); 0: all rows in one batch.
      "slots": 0,
      # DAPO's dynamic sampling: drop groups whose scores all tie and sample more
      # prompts until the batch is full, at most max_draws batches per iteration.
      "dynamic_sampling": False,
      "max_draws": 4,
  })
  c.ppo = ml_collections.ConfigDict({"epochs": 4, "minibatch_size": 8})  # minibatch: rows
  # Prompts: the preference data's (embedded: "Write a review of <film>.").
  c.data = common.preference_data(batch_size=32)  # batch_size: prompts per iteration
  # Pretraining text for PPO-ptx and for the held-out pretraining loss; source "":
  # the stage's own data (the embedded corpus, or a preference file's prompts with
  # their preferred responses; research/stages/rlhf.py:ptx_source).
  c.ptx = common.data(source="", corpus_size=2000, seq_len=128, batch_size=8)
  # A step is an iteration; each one's statistics are logged (a rollout is costly).
  c.train.update(steps=run["rlhf"], log_every=1,
                 checkpoint_every=min(20, max(run["rlhf"] // 3, 1)))
  c.optimizer.update(lr=1e-5, warmup_steps=10, weight_decay=0.0, min_lr_ratio=1.0)
  # After training: the policy against the SFT model; reward_model "" reports the
  # training reward model's scores.
  c.evaluate = common.evaluate(run, pretrain_batches=8)
  if model_preset == "tiny":
    c.rollout.max_new_tokens = 64
    c.optimizer.update(lr=2e-4)
  return c


def on_ground_truth(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Train on the embedded ground-truth scorer instead of a reward model. Its raw
  scores have a std of ~0.1, so they are standardised per batch (else the KL term
  dominates), and a separate critic starts from the policy (there is no reward
  model to start it from)."""
  c.reward.source = "ground_truth"
  c.objective.score_norm = "batch"
  c.objective.critic_init = "policy"
  return c
