"""Where RL scores come from: a reward model, the embedded ground truth, or any callable.

Every source is called as `source(rollouts, prompts, records=None) -> float32
array (B,)`, `records` being the data records the prompts came from (their
reference answers, tests, ...):

  TextReward(fn)      fn(prompts: list[str], responses: list[str]) -> B scores
                      (a plain Python function; the embedded ground truth is one);
  TokenReward(fn)     fn(tokens_BxT, mask_BxT) -> B scores, on the rollout rows
                      (a JAX function, or a `RewardFunction` from a reward-model run);
  FunctionReward      registered reward functions by name and weight
                      (`research/rewards/`: math, code, format, remote, ...), with
                      the records; its `score` also gives each function's scores.

  JudgeReward         a generative judge's pairwise preferences (`research/rlhf/judge.py`).

`from_config` builds the source `config.reward` names; `as_source` wraps a
plain callable (text by default) so the RLHF stage accepts one directly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from research.data import scorer
from research.errors import ConfigError
from research.rlhf.rollout import Rollouts


def ground_truth(prompt: str, response: str, prompt_format: str) -> float:
  """The embedded task's reward: positivity of the review the policy wrote."""
  text = prompt + response if prompt_format == "prefix" else response
  return scorer.score(text)


class TextReward:
  def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]):
    self.fn = fn

  def __call__(self, rollouts: Rollouts, prompts: Sequence[str], records=None) -> np.ndarray:
    del records
    scores = np.asarray(self.fn(list(prompts), rollouts.texts), np.float32)
    if scores.shape != (len(rollouts.texts),):
      raise ValueError(f"the reward function returned shape {scores.shape}; expected "
                       f"({len(rollouts.texts)},), one score per response")
    return scores


class TokenReward:
  def __init__(self, fn: Callable):
    self.fn = fn

  def __call__(self, rollouts: Rollouts, prompts: Sequence[str], records=None) -> np.ndarray:
    del prompts, records
    scores = np.asarray(self.fn(rollouts.tokens, rollouts.mask), np.float32)
    if scores.shape != (len(rollouts.tokens),):
      raise ValueError(f"the reward function returned shape {scores.shape}; expected "
                       f"({len(rollouts.tokens)},)")
    return scores


def ground_truth_source(prompt_format: str) -> TextReward:
  return TextReward(lambda prompts, responses: [
      ground_truth(p, r, prompt_format) for p, r in zip(prompts, responses)])


def as_source(fn):
  """A source as is; a `RewardFunction` on tokens; any other callable on texts."""
  from research.reward_fn import RewardFunction  # pylint: disable=g-import-not-at-top
  from research.rewards.scoring import FunctionReward  # pylint: disable=g-import-not-at-top
  from research.rlhf.judge import JudgeReward  # pylint: disable=g-import-not-at-top
  if isinstance(fn, (TextReward, TokenReward, FunctionReward, JudgeReward)):
    return fn
  if isinstance(fn, RewardFunction):
    return TokenReward(fn)
  if callable(fn):
    return TextReward(fn)
  raise TypeError(f"a reward must be callable, got {type(fn).__name__}")


SOURCES = ("ground_truth", "model", "functions", "judge")


def from_config(config, mesh, rules):
  """`config.reward.source`: 'ground_truth', 'model' (the run in `config.reward.model`),
  'functions' (`config.reward.functions`, e.g. 'math:1.0,format:0.1') or 'judge'
  (the run in `config.reward.judge`, asked `config.reward.judge_question`)."""
  source = config.reward.source
  if source == "functions":
    from research.rewards.scoring import FunctionReward  # pylint: disable=g-import-not-at-top
    return FunctionReward(config.reward.get("functions", ""), config.reward)
  if source == "ground_truth":
    return ground_truth_source(config.data.prompt_format)
  if source == "model":
    from research.reward_fn import RewardFunction  # pylint: disable=g-import-not-at-top
    if not config.reward.model:
      raise ConfigError("config.reward.source='model' needs config.reward.model (a reward-model "
                        "workdir)")
    return TokenReward(RewardFunction.load(config.reward.model, mesh, rules))
  if source == "judge":
    from research.rlhf import judge  # pylint: disable=g-import-not-at-top
    if not config.reward.get("judge"):
      raise ConfigError("config.reward.source='judge' needs config.reward.judge (a language-model "
                        "run to ask which response is better)")
    return judge.JudgeReward(judge.GenerativeJudge.load(
        config.reward.judge, question=config.reward.get("judge_question") or judge.QUESTION,
        mesh=mesh, rules=rules))
  raise ConfigError(f"config.reward.source={source!r}; expected one of {SOURCES}")
