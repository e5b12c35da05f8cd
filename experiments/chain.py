"""The pipeline's stage configs at one size, each pointed at the run it starts from.

Sizes (model preset, steps): `smoke` checks the wiring in a couple of minutes
(tests use it); `default` is the tiny model trained properly, sized for two
CPU cores (the DPO frontier runs in well under an hour); `small` is the
12.6M-parameter model (hours on a CPU, minutes on an accelerator). Every
function returns a full stage config, so any field can still be overridden.
"""

from __future__ import annotations

import ml_collections

from configs import best_of_n as bon_config
from configs import clm as clm_config
from configs import dpo as dpo_config
from configs import evaluate as evaluate_config
from configs import preferences as preferences_config
from configs import reward as reward_config
from configs import rlhf as rlhf_config
from configs import sft as sft_config

SIZES = {
    "smoke": dict(preset="tiny", devices=1, clm=20, sft=20, reward=20, dpo=10, rlhf=3,
                  bon_rounds=1, bon_steps=10, bon_prompts=16, prefs=32, eval_prompts=8,
                  eval_samples=1, new_tokens=48),
    "default": dict(preset="tiny", devices=-1, clm=300, sft=600, reward=300, dpo=450, rlhf=30,
                    bon_rounds=2, bon_steps=40, bon_prompts=64, prefs=600, eval_prompts=64,
                    eval_samples=2, new_tokens=200),
    "small": dict(preset="small", devices=-1, clm=2000, sft=600, reward=300, dpo=300, rlhf=100,
                  bon_rounds=2, bon_steps=100, bon_prompts=256, prefs=1000, eval_prompts=128,
                  eval_samples=2, new_tokens=192),
}


def size(name: str) -> dict:
  if name not in SIZES:
    raise ValueError(f"--size={name!r}; known sizes: {sorted(SIZES)}")
  return {"name": name, **SIZES[name]}


def _common(config, s: dict, steps: int | None = None) -> ml_collections.ConfigDict:
  config.mesh.num_devices = s["devices"]
  if steps is not None:
    config.train.update(steps=steps, checkpoint_every=steps)
    if config.train.get("eval_every"):
      config.train.eval_every = min(config.train.eval_every, steps)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 5, 1))
  return config


def clm(s):
  c = _common(clm_config.get_config(s["preset"]), s, s["clm"])
  if s["name"] == "smoke":
    c.data.corpus_size = 500
    c.sample.num_samples = 0
  return c


def sft(s, init_from: str, source: str = "embedded"):
  c = _common(sft_config.get_config(s["preset"]), s, s["sft"])
  c.init_from, c.data.source = init_from, source
  if s["name"] == "smoke":
    c.generate.num_examples = 8
  return c


def preferences(s, init_from: str):
  c = _common(preferences_config.get_config(s["preset"]), s)
  c.init_from = init_from
  c.preferences.update(num_prompts=s["prefs"], max_new_tokens=s["new_tokens"],
                       require_eos=s["name"] != "smoke")  # smoke models never stop
  return c


def reward(s, init_from: str, source: str = "embedded"):
  c = _common(reward_config.get_config(s["preset"]), s, s["reward"])
  c.init_from, c.data.source = init_from, source
  if source != "embedded":
    c.data.num_responses = 4
  return c


def dpo(s, init_from: str, source: str = "embedded", **objective):
  c = _common(dpo_config.get_config(s["preset"]), s, s["dpo"])
  c.init_from, c.data.source = init_from, source
  c.objective.update(objective)
  c.evaluate.num_prompts = 0  # evaluated by an `evaluate` point, like every method
  return c


def rlhf(s, init_from: str, reward_model: str = "", method=rlhf_config, **objective):
  """An online method (`method`: configs.rlhf for PPO/A2C, configs.grpo, configs.rloo,
  ...); `reward_model=''` trains on the ground truth (the frontier's PPO-GT)."""
  c = _common(method.get_config(s["preset"]), s)
  c.train.update(steps=s["rlhf"], checkpoint_every=max(s["rlhf"] // 3, 1))
  c.init_from = init_from
  kl = objective.pop("kl", {})
  c.objective.update(objective)
  c.objective.kl.update(kl)
  if reward_model:
    c.reward.update(source="model", model=reward_model)
  else:
    c.reward.source = "ground_truth"
    c.objective.critic_init = "policy"
    c.objective.score_norm = "batch"  # raw ground-truth scores have a std of ~0.1
  if s["preset"] == "tiny":
    # Group methods make 1 update per 8 rows where PPO makes 4 (its epochs).
    c.optimizer.lr = 2e-4 if c.objective.critic != "none" else 1e-3
  c.evaluate.update(num_prompts=0, pretrain_batches=0)
  return c


def best_of_n(s, init_from: str, reward_model: str = "", n: int = 8):
  c = _common(bon_config.get_config(s["preset"]), s, s["bon_steps"])
  c.init_from = init_from
  if reward_model:
    c.reward.update(source="model", model=reward_model)
  else:
    c.reward.source = "ground_truth"
  c.best_of_n.update(n=n, rounds=s["bon_rounds"], prompts_per_round=s["bon_prompts"],
                     max_new_tokens=s["new_tokens"], require_eos=s["name"] != "smoke")
  c.evaluate.report = False
  return c


def evaluate(s, policy: str, reference: str, reward_model: str = "", best_of_n: int = 0):
  c = _common(evaluate_config.get_config(s["preset"]), s)
  c.policy, c.init_from = policy, reference
  c.evaluate.update(num_prompts=s["eval_prompts"], samples_per_prompt=s["eval_samples"],
                    max_new_tokens=s["new_tokens"], reward_model=reward_model,
                    best_of_n=best_of_n)
  return c
