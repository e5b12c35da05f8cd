"""GRPO (Shao et al. 2024, DeepSeekMath): G samples per prompt, group-normalised
advantages, no critic, the clipped surrogate, and a k3 KL penalty in the loss.

  python -m research.main --config=configs/grpo.py --workdir=runs/grpo    # runs/sft + runs/reward
  python -m research.main --config=configs/grpo.py:tiny --config.reward.source=ground_truth \
      --config.init_from=runs/sft_tiny
  # DAPO's clip-higher and token-level aggregation (Yu et al. 2025):
  python -m research.main --config=configs/grpo.py --config.objective.clip_high=0.28 \
      --config.objective.loss_agg=token_mean --config.objective.kl.beta=0

Prompts per iteration are `data.batch_size`; rows are `samples_per_prompt` times that.
"""

import ml_collections

from configs import rlhf


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = rlhf.get_config(arg)
  c.objective.update(name="ppo", advantage="grpo", critic="none", whiten_advantages=False,
                     loss_agg="seq_mean_token_mean")  # GRPO eq. 3: 1/G sum_i 1/|o_i| sum_t
  c.objective.kl.update(placement="loss", estimator="k3", beta=0.04)
  c.rollout.samples_per_prompt = 4
  c.data.batch_size = 8           # prompts; 32 rows
  c.ppo.update(epochs=1, minibatch_size=8)
  if c.model.preset == "tiny":
    c.optimizer.lr = 1e-3  # one pass per rollout: a quarter of PPO's updates (4 epochs)
  return c
