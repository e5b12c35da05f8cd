"""Run sizes, defined once: how long each stage trains and how much it samples.

  smoke   the tiny model for a few steps: checks the wiring, learns nothing
  tiny    the tiny model trained properly on 2 CPU cores (seconds to minutes per
          stage): the tests' end-to-end runs, the colabs, the experiments' default
  small   the 12.6M-parameter model (the README's first command); hours of the
          whole pipeline on a CPU, minutes on an accelerator

Every stage config takes a size as its argument (`configs/dpo.py:tiny`) and reads
its steps here; `experiments/chain.py` chains the same configs. Larger model
presets (125m, 350m, 1b, 7b) take the `small` run with that model.
"""

from __future__ import annotations

from research.models import config as model_config

RUNS = {
    "smoke": dict(model="tiny", devices=1, clm=20, sft=20, reward=20, dpo=10, rlhf=3,
                  best_of_n=10, best_of_n_rounds=1, best_of_n_prompts=16, preferences=32,
                  eval_prompts=8, eval_samples=1, new_tokens=48),
    "tiny": dict(model="tiny", devices=-1, clm=300, sft=600, reward=300, dpo=450, rlhf=30,
                 best_of_n=40, best_of_n_rounds=2, best_of_n_prompts=64, preferences=600,
                 eval_prompts=64, eval_samples=2, new_tokens=200),
    "small": dict(model="small", devices=-1, clm=240, sft=300, reward=300, dpo=300, rlhf=100,
                  best_of_n=100, best_of_n_rounds=2, best_of_n_prompts=256, preferences=1000,
                  eval_prompts=64, eval_samples=2, new_tokens=192),
}
DEFAULT = "small"


def workdir(stage: str, run: dict) -> str:
  """Where a run of `stage` at this size is found by default (a later stage's
  `init_from`): runs/STAGE for the default size, runs/STAGE_SIZE for the others
  (`runs/sft_smoke` for the smoke size, though its model preset is `tiny`)."""
  return f"runs/{stage}" if run["name"] == DEFAULT else f"runs/{stage}_{run['name']}"


def run(arg: str | None) -> dict:
  """The run size named by a config argument: a size above, or a model preset
  (the `small` run with that model)."""
  name = arg or DEFAULT
  if name in RUNS:
    return {"name": name, **RUNS[name]}
  if name in model_config.PRESETS:
    return {**RUNS["small"], "name": name, "model": name}
  raise ValueError(f"config argument {name!r}: expected a run size {sorted(RUNS)} or a model "
                   f"preset {sorted(model_config.PRESETS)}")


def train_for(config, steps: int) -> None:
  """`steps` of training, with evaluation, checkpoints and warmup fitted inside them."""
  t = config.train
  t.steps = steps
  t.checkpoint_every = min(t.checkpoint_every, steps)
  if t.get("eval_every"):
    t.eval_every = min(t.eval_every, steps)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 5, 1))
