"""RLOO (Ahmadian et al. 2024, "Back to basics"): G samples per prompt, each
response's baseline the mean reward of the other G - 1, the KL to the SFT model
as a sequence-level penalty in the reward, no critic. Updated with the clipped
surrogate over one pass of minibatches (as TRL's RLOOTrainer); with
`ppo.minibatch_size` = all rows it is the paper's plain REINFORCE step.

  python -m research.main --config=configs/rloo.py --workdir=runs/rloo
"""

import ml_collections

from configs import rlhf


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = rlhf.get_config(arg)
  c.objective.update(name="ppo", advantage="rloo", critic="none", whiten_advantages=False)
  c.rollout.samples_per_prompt = 4
  c.data.batch_size = 8           # prompts; 32 rows
  c.ppo.update(epochs=1, minibatch_size=8)
  if c.model.preset == "tiny":
    c.optimizer.lr = 1e-3  # one pass per rollout: a quarter of PPO's updates (4 epochs)
  return c
