"""The pipeline's stage configs at one run size, each pointed at the run it starts from.

Sizes are `configs/presets.py`'s (smoke | tiny | small): the stage configs read
their steps there, so a chain at `tiny` trains exactly what
`configs/dpo.py:tiny` trains. Every function returns a full stage config, so any
field can still be overridden.
"""

from __future__ import annotations

from configs import best_of_n as bon_config
from configs import clm as clm_config
from configs import dpo as dpo_config
from configs import evaluate as evaluate_config
from configs import preferences as preferences_config
from configs import presets
from configs import reward as reward_config
from configs import rlhf as rlhf_config
from configs import sft as sft_config


def size(name: str) -> dict:
  """A run size of `configs/presets.py`."""
  if name not in presets.RUNS:
    raise ValueError(f"--size={name!r}; known sizes: {sorted(presets.RUNS)}")
  return presets.run(name)


def clm(s):
  return clm_config.get_config(s["name"])


def sft(s, init_from: str, source: str = "embedded"):
  c = sft_config.get_config(s["name"])
  c.init_from, c.data.source = init_from, source
  return c


def preferences(s, init_from: str):
  c = preferences_config.get_config(s["name"])
  c.init_from = init_from
  return c


def reward(s, init_from: str, source: str = "embedded"):
  c = reward_config.get_config(s["name"])
  c.init_from, c.data.source = init_from, source
  if source != "embedded":
    c.data.num_responses = 4
  return c


def dpo(s, init_from: str, source: str = "embedded", **objective):
  c = dpo_config.get_config(s["name"])
  c.init_from, c.data.source = init_from, source
  c.objective.update(objective)
  c.evaluate.num_prompts = 0  # evaluated by an `evaluate` point, like every method
  return c


def rlhf(s, init_from: str, reward_model: str = "", method=rlhf_config, **objective):
  """An online method (`method`: configs.rlhf for PPO/A2C, configs.grpo, configs.rloo,
  ...); `reward_model=''` trains on the ground truth (the frontier's PPO-GT)."""
  c = method.get_config(s["name"])
  c.init_from = init_from
  kl = objective.pop("kl", {})
  c.objective.update(objective)
  c.objective.kl.update(kl)
  if reward_model:
    c.reward.update(source="model", model=reward_model)
  else:
    rlhf_config.on_ground_truth(c)
  c.evaluate.update(num_prompts=0, pretrain_batches=0)
  return c


def best_of_n(s, init_from: str, reward_model: str = "", n: int = 8):
  c = bon_config.get_config(s["name"])
  c.init_from = init_from
  if reward_model:
    c.reward.update(source="model", model=reward_model)
  else:
    c.reward.source = "ground_truth"
  c.best_of_n.n = n
  return c


def evaluate(s, policy: str, reference: str, reward_model: str = "", best_of_n: int = 0):
  """Every method on the same held-out prompts: the embedded set's, in the SFT template
  (not each policy run's own data, the evaluate stage's default)."""
  c = evaluate_config.get_config(s["name"])
  c.policy, c.init_from = policy, reference
  c.data.update(source="embedded", template="alpaca")
  c.evaluate.update(reward_model=reward_model, best_of_n=best_of_n)
  return c
