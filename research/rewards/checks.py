"""The built-in text checkers: `math`, `exact`, `regex`, `format`. Each scores 1.0
or 0.0 (`options` is `config.reward`; its keys below).

  math    the response's final answer (`answers.final_answer`: \\boxed{}, '####',
          <answer>, else the last number) against the record's `answer`: equal as
          numbers (exactly, or within `math_tolerance` relative to the gold), else
          equivalent by `math-verify` (Hugging Face's checker: LaTeX and
          expressions, e.g. \\frac{1}{2} = 0.5 = 1/2). verl's and TRL's
          accuracy rewards, with the extraction of open-instruct's GSM8K one.
  exact   normalised exact match of the final answer (else the whole response)
          with the record's `answer`: case, surrounding space and punctuation,
          and runs of space do not count.
  regex   the whole response matches `options.regex` (Python `re.fullmatch`, DOTALL).
  format  R1's format: one <think>...</think> then one <answer>...</answer> and
          nothing else (`re.fullmatch`, not open-r1's MULTILINE `re.match`, which
          lets text trail the answer).
"""

from __future__ import annotations

import functools
import re
import threading

from research.rewards import answers, register

MARKED = ("boxed", "gsm8k", "answer_tag")
FORMAT = re.compile(r"\s*<think>(?:(?!<think>|</think>).)*</think>\s*"
                    r"<answer>(?:(?!<answer>|</answer>).)*</answer>\s*", re.DOTALL)


def _option(options, key: str, default):
  value = options.get(key, default) if options is not None else default
  return default if value is None else value


@register("math", fields=("answer",))
def math_reward(prompt, response: str, record: dict, options=None) -> float:
  del prompt
  return float(math_equal(str(record["answer"]), response,
                          float(_option(options, "math_tolerance", 0.0))))


def math_equal(gold: str, response: str, rel_tol: float = 0.0) -> bool:
  """Whether the response's final answer equals `gold` (see the module doc)."""
  # The gold is an answer already: only a marked one (a GSM8K solution's '#### 42', a
  # MATH solution's \boxed{}) is extracted, never its last number ('\frac{1}{2}').
  gold_answer = answers.final_answer(gold, order=MARKED) or answers.normalise(gold)
  predicted = answers.final_answer(response)
  if predicted is None:
    return False
  a, b = answers.as_number(gold_answer), answers.as_number(predicted)
  if a is not None and b is not None:
    return answers.numbers_equal(a, b, rel_tol)
  if gold_answer == predicted:
    return True
  return _math_verify(gold_answer, predicted)


@functools.lru_cache(maxsize=1)
def _math_verify_module():
  import logging  # pylint: disable=g-import-not-at-top
  import math_verify  # pylint: disable=g-import-not-at-top  # slow import; only when needed
  for name in ("math_verify.parser", "math_verify.grader"):  # it logs whole inputs on timeouts
    logging.getLogger(name).setLevel(logging.ERROR)
  return math_verify


def _math_verify(gold: str, predicted: str) -> bool:
  """math-verify on two extracted answers, each read as LaTeX (boxed) and as an
  expression. Its SIGALRM timeouts work in the main thread only: elsewhere they
  are off (a short extracted answer parses quickly)."""
  mv = _math_verify_module()
  main = threading.current_thread() is threading.main_thread()
  timeout = 5 if main else None
  configs = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
  try:
    gold_parsed = mv.parse(f"\\boxed{{{gold}}}", extraction_config=configs,
                           parsing_timeout=timeout)
    predicted_parsed = mv.parse(f"\\boxed{{{predicted}}}", extraction_config=configs,
                                parsing_timeout=timeout)
    return bool(gold_parsed and predicted_parsed and mv.verify(
        gold_parsed, predicted_parsed, timeout_seconds=timeout))
  except Exception:  # pylint: disable=broad-except  # an unparseable answer is not equal
    return False
  except BaseException as e:  # math_verify's TimeoutException is a BaseException
    if type(e).__name__ == "TimeoutException":
      return False
    raise


def _plain(text: str) -> str:
  return " ".join(text.lower().split()).strip(" .,;:!?\"'")


@register("exact", fields=("answer",))
def exact_reward(prompt, response: str, record: dict, options=None) -> float:
  del prompt, options
  found = answers.final_answer(response, order=MARKED)
  candidate = found if found is not None else response
  return float(_plain(candidate) == _plain(str(record["answer"])))


@register("regex")
def regex_reward(prompt, response: str, record: dict, options=None) -> float:
  del prompt, record
  return float(_compiled(str(_option(options, "regex", ""))).fullmatch(response) is not None)


@functools.lru_cache(maxsize=32)
def _compiled(pattern: str):
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if not pattern:
    raise ConfigError("the 'regex' reward needs config.reward.regex (a Python regular "
                      "expression the whole response must match)")
  try:
    return re.compile(pattern, re.DOTALL)
  except re.error as e:
    raise ConfigError(f"config.reward.regex={pattern!r} is not a regular expression "
                      f"({e})") from None


@register("format")
def format_reward(prompt, response: str, record: dict, options=None) -> float:
  del prompt, record, options
  return float(FORMAT.fullmatch(response) is not None)
