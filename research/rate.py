"""Elo ratings between policy runs: samples on the same held-out prompts, judged pairwise.

  python -m research.rate --runs=runs/sft,runs/dpo,runs/rlhf            # the ground truth
  python -m research.rate --runs=runs/sft,runs/dpo --judge=reward:runs/reward
  python -m research.rate --runs=runs/sft,runs/dpo --judge=judge:runs/judge_sft \
      --question="Which review is more positive?" --workdir=runs/elo

Writes summary.json, ratings.md (the table) and ratings.png to --workdir; prints the
table. The stage (`research/stages/rate.py`, `configs/rate.py`) does the work; this
is its command line. A user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

from absl import app, flags

from research import cli, ratings
from research.errors import ConfigError

_RUNS = flags.DEFINE_string("runs", None, "policy runs, comma-separated", required=True)
_NAMES = flags.DEFINE_string("names", "", "their labels, comma-separated (default: folder names)")
_JUDGE = flags.DEFINE_string("judge", "ground_truth",
                             "ground_truth | reward:REWARD_RUN | judge:LANGUAGE_MODEL_RUN")
_QUESTION = flags.DEFINE_string("question", "", "the generative judge's question")
_SIZE = flags.DEFINE_string("size", "tiny", "run size for prompts and tokens (configs/presets.py)")
_PROMPTS = flags.DEFINE_integer("prompts", None, "held-out prompts (default: the size's)")
_SAMPLES = flags.DEFINE_integer("samples", None, "games per pair of runs and prompt")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "tokens per response")
_SEED = flags.DEFINE_integer("seed", 0, "sampling and bootstrap seed")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ratings", "where the ratings are written")


def config_from_flags():
  from configs import rate as rate_config  # pylint: disable=g-import-not-at-top
  c = rate_config.get_config(_SIZE.value)
  c.runs, c.names, c.seed = _RUNS.value, _NAMES.value, _SEED.value
  kind, _, target = _JUDGE.value.partition(":")
  if kind == "ground_truth" and not target:
    c.rate.judge = "ground_truth"
  elif kind == "reward" and target:
    c.rate.update(judge="reward_model", reward_model=target)
  elif kind == "judge" and target:
    c.rate.update(judge="generative", judge_run=target)
  else:
    raise ConfigError(f"--judge={_JUDGE.value!r}; expected ground_truth, reward:REWARD_RUN or "
                      f"judge:LANGUAGE_MODEL_RUN")
  if _QUESTION.value:
    c.rate.judge_question = _QUESTION.value
  for flag, key in ((_PROMPTS, "num_prompts"), (_SAMPLES, "samples_per_prompt"),
                    (_MAX_NEW, "max_new_tokens")):
    if flag.value is not None:
      c.rate[key] = flag.value
  return c


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
  from research.stages import rate  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    summary = rate.run(config_from_flags(), _WORKDIR.value)
  print(ratings.table(summary["ratings"]))
  print(f"-> {os.path.join(_WORKDIR.value, 'ratings.md')}")


if __name__ == "__main__":
  app.run(main)
