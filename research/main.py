"""Runs one stage of the pipeline from a config file.

  python -m research.main --config=configs/clm.py[:preset] [--workdir=DIR] \
      [--config.a.b=value ...] [--dry_run [--nodry_run_compile]]

Exit codes (`research/cli.py`): 0 finished, 1 a non-finite loss (the last good
checkpoint is kept), 2 a user error: a bad flag, config file, config value, data
file or workdir (one line on stderr, no traceback), 143 pre-empted by SIGTERM after
saving (rerun the same command to continue).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from research import cli, distributed, host_memory
from research.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/STAGE.py[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<stage>)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "report parameter count and per-device memory "
                             "from abstract shapes, then exit")
_DRY_RUN_COMPILE = flags.DEFINE_bool(
    "dry_run_compile", True, "with --dry_run: also compile the train step on abstract inputs and "
    "report XLA's memory analysis per device (research/stages/dry_run.py)")
_PROCESSES = distributed.define_flags()

# Stages that only sample: on a CPU, keeping freed memory (research/host_memory.py)
# speeds train steps ~12% but slows decoding ~10% (one malloc arena for all threads).
SAMPLING_STAGES = ("evaluate", "preferences", "rate", "judge")
EXIT_USAGE, EXIT_PREEMPTED = cli.EXIT_USAGE, cli.EXIT_PREEMPTED

STAGES = {"clm": "research.stages.clm", "sft": "research.stages.sft",
          "reward": "research.stages.reward", "dpo": "research.stages.dpo",
          "rlhf": "research.stages.rlhf", "best_of_n": "research.stages.best_of_n",
          "preferences": "research.stages.preferences", "evaluate": "research.stages.evaluate",
          "rate": "research.stages.rate", "judge": "research.stages.judge"}


def stage_module(name: str):
  if name not in STAGES:
    raise ConfigError(f"config.stage={name!r}; known stages: {sorted(STAGES)}")
  return importlib.import_module(STAGES[name])


def _run(config, workdir: str) -> dict | None:
  from research import objectives, runs
  distributed.check_same_config(config, workdir)
  objectives.import_modules(config)  # config.imports: modules that register objectives
  runs.check_model_overrides(config, cli.explicit_overrides(sys.argv[1:], "model."))
  if _DRY_RUN.value:
    from research import validate
    from research.stages import dry_run
    runs.check_init_from(config)
    runs.inherit_model(config)  # the architecture of the run it starts from, as the stage does
    validate.check(config)
    module = dry_run.module_for(config)
    plan = dry_run.plan_for(config, module)
    report = dry_run.describe(config, module, plan)
    if _DRY_RUN_COMPILE.value:
      report["compiled"] = dry_run.compiled(config, module, plan)
    print(json.dumps({"preset": config.model.get("preset", ""), **report}, indent=2))
    return None
  return stage_module(config.stage).run(config, workdir)


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
  # Library chatter (orbax, tfds) stays out of the way; absl resets this level
  # while parsing flags, so it is set here rather than before app.run.
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = _CONFIG.value
  if config is None:
    cli.fail("--config=configs/STAGE.py[:arg] is required")
  if _WORKDIR.value is not None and not _WORKDIR.value.strip():
    cli.fail("--workdir is empty; give a directory, or leave the flag out for runs/<stage>")
  if config.stage not in SAMPLING_STAGES:  # before JAX starts its threads
    host_memory.keep_freed_memory()
  with cli.user_errors():  # half-given flags, an unreachable coordinator: one line
    _PROCESSES.initialize()
  workdir = _WORKDIR.value or os.path.join("runs", config.stage)
  from research.training.loop import NonFiniteLossError
  try:
    with cli.user_errors():  # the user's config, data or workdir: one line, exit 2
      summary = _run(config, workdir)
  except NonFiniteLossError as e:
    sys.exit(f"error: {e}")
  if summary is None:  # --dry_run
    return
  print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2, default=float))
  for sample in summary.get("samples", []):
    print("---\n" + format_sample(sample))
  if summary.get("preempted"):
    sys.exit(EXIT_PREEMPTED)  # saved, not finished: schedulers should requeue


def format_sample(sample) -> str:
  """A CLM sample is its text; an evaluation sample {prompt, response, ...} is shown
  as the prompt, '>>>', the response, and any scores."""
  if isinstance(sample, str):
    return sample
  prompt = sample.get("prompt", "")
  if isinstance(prompt, dict):  # an Alpaca instruction and input
    prompt = "\n".join(v for v in (prompt.get("instruction"), prompt.get("input")) if v)
  elif not isinstance(prompt, str):  # messages
    prompt = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
  if len(prompt) > 300:  # a long conversation: its end, where the question is
    prompt = "..." + prompt[-300:]
  scores = ", ".join(f"{k}={v:.3g}" for k, v in sample.items()
                     if k not in ("prompt", "response") and isinstance(v, (int, float)))
  return f"{prompt} >>> {sample.get('response', '')}" + (f"  ({scores})" if scores else "")


def run() -> None:
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found"
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
