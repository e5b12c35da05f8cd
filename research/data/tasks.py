"""Records of tasks with checkable answers, in the layouts the datasets use:

  {"question": "...", "answer": "... #### 42"}              GSM8K: the solution ends '#### N'
  {"problem": "...", "solution": "... \\boxed{\\frac12}"}    MATH: the answer is the last \\boxed{}
  {"prompt": "...", "answer": "42"}                          a prompt and its final answer
  {"prompt": "...", "tests": [...]}                          a coding prompt and its tests
                                                             (`research/rewards/code.py`)

`task(record, where)` -> {prompt, answer?, solution?, tests?, where, ...the record's
other fields} (the reference fields a reward function reads); a GSM8K or MATH
record whose solution marks no final answer is an error naming it. `prompt` may
be a string or messages. For SFT (a warm start on worked solutions), GSM8K and
MATH records are prompt-completion pairs: the question, then the solution.
"""

from __future__ import annotations

import json

from research.errors import DataError

LAYOUTS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
REFERENCES = ("answer", "solution", "tests")


def task_layout(record: dict) -> str | None:
  """'gsm8k', 'math', 'answer' ({prompt, answer}), 'tests' ({prompt, tests}) or None."""
  for name, fields in LAYOUTS.items():
    if all(f in record for f in fields):
      return name
  if "prompt" in record and "tests" in record:
    return "tests"
  if "prompt" in record and "answer" in record:
    return "answer"
  return None


def _text(record: dict, field: str, where: str) -> str:
  value = record[field]
  if not isinstance(value, str):
    raise DataError(f"{where}: field {field!r} is {type(value).__name__}; expected a string")
  return value


def task(record: dict, where: str) -> dict:
  """A task record normalised (see the module doc)."""
  from research.data import layouts  # pylint: disable=g-import-not-at-top  # layouts reads us
  from research.rewards import answers  # pylint: disable=g-import-not-at-top
  kind = task_layout(record)
  rest = {k: v for k, v in record.items() if k not in ("question", "problem", "prompt",
                                                          *REFERENCES)}
  if kind in LAYOUTS:
    question, solution_field = LAYOUTS[kind]
    solution = _text(record, solution_field, where)
    final = answers.gsm8k(solution) if kind == "gsm8k" else answers.boxed(solution)
    if final is None:
      marker = "'#### N'" if kind == "gsm8k" else "a \\boxed{} answer"
      raise DataError(f"{where}: the {solution_field!r} field marks no final answer ({marker} "
                      f"expected): {solution[-80:]!r}")
    return {**rest, "prompt": layouts.prompt(record[question], question, where),
            "answer": final, "solution": solution, "where": where}
  if kind == "tests":
    tests = record["tests"]
    if isinstance(tests, str):
      try:
        tests = json.loads(tests)
      except json.JSONDecodeError:
        tests = [tests]  # one block of asserts
    if not isinstance(tests, list) or not tests:
      raise DataError(f"{where}: field 'tests' is {layouts.kind(tests)}; expected a non-empty "
                      f"list of assert statements or of {{input, output}}")
    out = {**rest, "prompt": layouts.prompt(record["prompt"], "prompt", where), "tests": tests}
    if record.get("answer") is not None:
      out["answer"] = str(record["answer"])
    return {**out, "where": where}
  if kind == "answer":
    value = record["answer"]
    if value is None or isinstance(value, (dict, list)):
      raise DataError(f"{where}: field 'answer' is {layouts.kind(value)}; expected the final "
                      f"answer (a string or a number)")
    return {**rest, "prompt": layouts.prompt(record["prompt"], "prompt", where),
            "answer": str(value), "where": where}
  raise DataError(f"{where}: unknown task layout with fields {sorted(record)}")


def as_prompt_completion(record: dict, where: str) -> dict | None:
  """A GSM8K or MATH record as SFT's {prompt, completion} (None: another layout)."""
  kind = task_layout(record)
  if kind not in LAYOUTS:
    return None
  question, solution = LAYOUTS[kind]
  rest = {k: v for k, v in record.items() if k not in (question, solution)}
  return {**rest, "prompt": record[question], "completion": _text(record, solution, where)}
