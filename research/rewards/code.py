"""The `code` reward: a response's program against the record's tests, in the sandbox.

The program is the response's last fenced block (```python ... ``` or ``` ... ```),
else the whole response. The record's `tests` are either

  ["assert f(2) == 4", ...]                     statements run after the program, in
                                                its namespace, one by one
  [{"input": "2\\n", "output": "4\\n"}, ...]     stdin -> expected stdout (compared line
                                                by line, trailing space ignored)

Score: the fraction of tests passed, or with `options.code_all_pass` 1.0 only when
all pass. Assert tests run in one sandboxed process per response (each test with
its own alarm, `code_test_seconds`); the harness reads a one-time token from
stdin before the program runs and prints it with the count last, so a program
that exits early, closes stdout or crashes passes nothing. Stdio tests run one
process per test. Responses are checked in parallel threads (`code_workers`, each
waiting on its own process); timeouts and kills are counted
(`reward/code_timeouts`, `reward/code_killed`), never fatal.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import re
import secrets

from research.rewards import register, sandbox

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

_HARNESS = '''import signal, sys
_token = sys.stdin.readline().strip()
def _alarm(signum, frame):
    raise TimeoutError("test took too long")
def _run():
    namespace = {{"__name__": "__main__"}}
    try:
        exec(compile({program!r}, "solution.py", "exec"), namespace)
    except BaseException:
        return 0
    passed = 0
    for test in {tests!r}:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm({seconds})
        try:
            exec(compile(test, "test.py", "exec"), namespace)
            passed += 1
        except BaseException:
            pass
        finally:
            signal.alarm(0)
    return passed
_passed = _run()
print("\\n" + _token, _passed, flush=True)
'''


def program_of(response: str) -> str:
  """The response's last fenced code block, else the response itself."""
  blocks = _FENCE.findall(response)
  return blocks[-1] if blocks else response


def _limits(options) -> sandbox.Limits:
  get = lambda key, default: (options.get(key, default) if options is not None else default)
  return sandbox.Limits(cpu_seconds=int(get("code_cpu_seconds", 2)),
                        wall_seconds=float(get("code_wall_seconds", 5.0)),
                        memory_mb=int(get("code_memory_mb", 512)))


def run_asserts(program: str, tests: list[str], limits: sandbox.Limits,
                test_seconds: int = 1) -> tuple[int, str]:
  """(tests passed, the run's status)."""
  token = secrets.token_hex(16)
  harness = _HARNESS.format(program=program, tests=list(tests), seconds=int(test_seconds))
  result = sandbox.run_python(harness, token + "\n", limits)
  for line in reversed(result.stdout.splitlines()):
    parts = line.split()
    if len(parts) == 2 and parts[0] == token and parts[1].isdigit():
      return min(int(parts[1]), len(tests)), result.status
  return 0, result.status


def _same_output(got: str, expected: str) -> bool:
  lines = lambda s: [line.rstrip() for line in s.strip().splitlines()]
  return lines(got) == lines(expected)


def run_stdio(program: str, tests: list[dict], limits: sandbox.Limits) -> tuple[int, list[str]]:
  """(tests passed, each run's status)."""
  passed, statuses = 0, []
  for test in tests:
    result = sandbox.run_python(program, str(test.get("input", "")), limits)
    statuses.append(result.status)
    passed += result.status == "ok" and _same_output(result.stdout, str(test.get("output", "")))
  return passed, statuses


def score_one(response: str, tests, options=None) -> tuple[float, list[str]]:
  """(score, statuses) of one response (see the module doc)."""
  tests = json.loads(tests) if isinstance(tests, str) else list(tests)
  if not tests:
    return 0.0, []
  program, limits = program_of(response), _limits(options)
  if isinstance(tests[0], dict):
    passed, statuses = run_stdio(program, tests, limits)
  else:
    seconds = options.get("code_test_seconds", 1) if options is not None else 1
    passed, status = run_asserts(program, [str(t) for t in tests], limits, seconds)
    statuses = [status]
  all_pass = bool(options.get("code_all_pass", False)) if options is not None else False
  if all_pass:
    return float(passed == len(tests)), statuses
  return passed / len(tests), statuses


@functools.lru_cache(maxsize=1)
def _warn_if_weak() -> None:
  """Says once which of the sandbox's protections this machine does not allow."""
  missing = [name for name, held in sandbox.probe().items() if not held]
  if missing:
    logging.warning("the code sandbox runs without %s here (research/rewards/sandbox.py): "
                    "run the trainer as root, or where user namespaces are allowed, for all "
                    "of them", ", ".join(missing))


@register("code", fields=("tests",), batched=True)
def code_reward(prompts, responses, records, options=None):
  """Scores a batch in parallel threads -> (scores, {'code_timeouts', 'code_killed'})."""
  del prompts
  _warn_if_weak()
  workers = int((options.get("code_workers", 0) if options is not None else 0) or
                os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    results = list(pool.map(lambda rr: score_one(rr[0], rr[1]["tests"], options),
                            zip(responses, records)))
  statuses = [s for _, ss in results for s in ss]
  return [score for score, _ in results], {"code_timeouts": statuses.count("timeout"),
                                           "code_killed": statuses.count("killed")}
