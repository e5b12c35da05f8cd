"""Reasoning RL with verifiable rewards: GRPO on a task whose answers a checker judges.

On the embedded arithmetic task (research/data/arithmetic.py), the tiny model:

  # 1. SFT from scratch on worked solutions, 30% of which slip (the final answer
  #    copied off by one), with the task's own 40-piece tokenizer
  python -m research.main --config=configs/sft.py:tiny --workdir=runs/arith_sft \
      --config.init_from= --config.data.source=arithmetic:3:10:0.3 \
      --config.data.template=chat --config.model.vocab_size=40
  # 2. GRPO on the math checker, on the same problems without slips
  python -m research.main --config=configs/rlvr.py:tiny --workdir=runs/arith_grpo \
      --config.init_from=runs/arith_sft
  # 3. pass@k of both, and the plot
  python -m research.main --config=configs/evaluate.py:tiny --workdir=runs/arith_eval \
      --config.policy=runs/arith_grpo --config.evaluate.checker=math

On a GSM8K-style file ({question, answer: '... #### 42'}; MATH's {problem,
solution} and {prompt, answer} work too): --config.data.source=gsm8k.jsonl.
The papers' variants are overrides (README, "Reasoning RL with verifiable rewards"):

  DAPO    --config.objective.clip_high=0.28 --config.objective.loss_agg=token_mean
          --config.objective.kl.beta=0 --config.rollout.dynamic_sampling=True
          --config.objective.overlong_buffer=16
  Dr. GRPO  --config.objective.advantage=dr_grpo --config.objective.loss_agg=seq_mean_token_sum
          --config.objective.kl.beta=0
  GSPO    --config.objective.name=gspo --config.objective.clip=3e-4
          --config.objective.clip_high=4e-4
  RLOO    --config.objective.advantage=rloo --config.objective.name=reinforce
"""

import ml_collections

from configs import common, grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset."""
  c = grpo.get_config(arg)
  c.init_from = "runs/arith_sft"
  c.reward = common.reward("functions", "", functions="math")
  c.data = common.preference_data(source="arithmetic", template="chat", corpus_size=3000,
                                  batch_size=8)
  c.objective.score_norm = "none"   # 0/1 correctness: the group baseline does the rest
  c.rollout.update(samples_per_prompt=8, max_new_tokens=64)
  c.evaluate.update(checker="math", pass_k_samples=8, num_prompts=64,
                    max_new_tokens=64, pretrain_batches=0)
  if c.model.preset == "tiny":
    # Measured on 2 CPU cores (README): 1e-4 and up overshoot within 40 iterations.
    c.optimizer.update(lr=5e-5, warmup_steps=10)
    c.train.update(steps=40, checkpoint_every=20)
  c.train.eval_every = max(c.train.steps // 4, 1)
  return c
