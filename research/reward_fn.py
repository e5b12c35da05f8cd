"""A trained reward model as a plain function: `reward_fn(tokens, mask) -> scores`.

Jitted once per batch shape and sharded like training (batch over data/fsdp,
weights by the logical rules). Scores are normalised as the RM stage measured
on held-out reference responses, (score - offset) / scale, so reference-like
responses score mean 0, std 1 (Ziegler et al. 2019; RLHF_DETAILS.md).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from research import runs
from research.models import config as model_config
from research.models.heads import ScalarModel
from research.models.logprobs import positions_from_mask
from research.training import partitioning

NORMALIZATION_FILE = "reward_normalization.json"


class RewardFunction:
  def __init__(self, model: ScalarModel, params, mesh, rules, offset: float = 0.0,
               scale: float = 1.0):
    self.model, self.params, self.mesh, self.rules = model, params, mesh, rules
    self.offset, self.scale = float(offset), float(scale)
    # Positions from the mask: rollout rows are left-padded prompts + responses.
    self._fn = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m,
                                                   positions_from_mask(m))[1])

  def raw(self, tokens_BxL, mask_BxL) -> np.ndarray:
    """Unnormalised scores, as a host array."""
    padded, n = partitioning.pad_rows({"tokens": tokens_BxL, "mask": mask_BxL},
                                      self.mesh, self.rules)
    padded["mask"][n:, 0] = True  # filler rows score their first token
    batch = partitioning.shard_batch(padded, self.mesh, self.rules)
    with partitioning.activate(self.mesh, self.rules):
      return np.asarray(self._fn(self.params, batch["tokens"], batch["mask"]))[:n]

  def __call__(self, tokens_BxL, mask_BxL) -> np.ndarray:
    return (self.raw(tokens_BxL, mask_BxL) - self.offset) / self.scale

  @classmethod
  def load(cls, workdir: str, mesh=None, rules=None, normalize: bool = True):
    """The reward model of a `configs/reward.py` run."""
    config = runs.load_config(workdir)
    if mesh is None:
      mesh, rules = partitioning.mesh_and_rules(config)
    # A LoRA reward model is read merged (the adapters folded into the trunk).
    model = ScalarModel(model_config.from_config(config.model).without_lora(), head_init="reward")
    params = runs.load_params(workdir, model, mesh, rules)
    offset, scale = 0.0, 1.0
    path = os.path.join(workdir, NORMALIZATION_FILE)
    if normalize and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        norm = json.load(f)
      offset, scale = norm["offset"], norm["scale"]
    return cls(model, params, mesh, rules, offset, scale)
