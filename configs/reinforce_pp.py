"""REINFORCE++ (Hu 2025): no critic and no group; per-token KL-penalised rewards,
their returns-to-go normalised over the whole batch, the clipped surrogate.

  python -m research.main --config=configs/reinforce_pp.py --workdir=runs/reinforce_pp
"""

import ml_collections

from configs import rlhf


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = rlhf.get_config(arg)
  c.objective.update(name="ppo", advantage="reinforce_pp", critic="none",
                     whiten_advantages=False)  # the estimator normalises over the batch
  c.ppo.update(epochs=1, minibatch_size=8)
  if c.model.preset == "tiny":
    c.optimizer.lr = 1e-3  # one pass per rollout: a quarter of PPO's updates (4 epochs)
  return c
