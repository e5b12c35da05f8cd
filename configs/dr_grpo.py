"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", sec. 3.2): GRPO
without the std normalisation of the advantages and without the per-response
length normalisation of the loss (the two biases the paper removes), and with no KL.

  python -m research.main --config=configs/dr_grpo.py --workdir=runs/dr_grpo
"""

import ml_collections

from configs import grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = grpo.get_config(arg)
  c.objective.update(advantage="dr_grpo", loss_agg="seq_mean_token_sum")
  c.objective.kl.beta = 0.0
  return c
