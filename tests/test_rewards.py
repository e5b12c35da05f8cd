"""Reward functions by name: answer extraction against hand-checked cases, the math,
exact, regex and format checkers, the weighted sum with its error policy, the
code sandbox against hostile programs, and the remote protocol against a real
server process on 127.0.0.1."""

import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from research import rewards
from research.errors import ConfigError, DataError
from research.rewards import answers, checks, code, remote, sandbox, scoring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- answers ---------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),          # GSM8K
    ("so the total is $1,234.\n#### 1,234", "1234"),
    ("#### -5.", "-5"),
    ("It is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),                   # MATH, nested
    ("first \\boxed{3} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),  # the last one
    ("\\boxed{unbalanced", None),
    ("<think>2+2</think><answer>4</answer>", "4"),
    ("<answer>The value is \\boxed{7}</answer>", "7"),
    ("I think 3 apples and then 12 more, so 15", "15"),                 # last number
    ("about 3,000,000 people", "3000000"),
    ("the ratio 3/4", "3/4"),
    ("no numbers at all", None),
    ("50%", "50"),
])
def test_final_answers(text, expected):
  assert answers.final_answer(text) == expected


def test_numbers_compare_exactly_or_within_a_tolerance():
  f = answers.as_number
  assert f("0.5") == f("1/2") == f("\\frac{1}{2}") and f("x") is None
  assert answers.numbers_equal(f("72"), f("72.0"))
  assert not answers.numbers_equal(f("3.14159"), f("3.1416"))
  assert answers.numbers_equal(f("3.14159"), f("3.1416"), rel_tol=1e-4)


# --- the checkers ----------------------------------------------------------------

@pytest.mark.parametrize("gold,response,ok", [
    ("72", "... #### 72", True), ("72", "... #### 73", False),
    ("72", "The answer is 72.", True), ("72", "no answer", False),
    ("\\frac{1}{2}", "\\boxed{0.5}", True), ("\\frac{1}{2}", "so x = 1/2", True),
    ("\\sqrt{2}", "\\boxed{\\sqrt 2}", True), ("x^2+1", "\\boxed{1+x^2}", True),
    ("(1,2)", "\\boxed{(1, 2)}", True), ("\\frac{1}{2}", "\\boxed{2}", False),
    ("Natalia sold ... #### 72", "\\boxed{72}", True),  # a GSM8K solution as the gold
])
def test_math(gold, response, ok):
  assert checks.math_reward("q", response, {"answer": gold}) == float(ok)


def test_math_tolerance_comes_from_the_options():
  record = {"answer": "3.14159"}
  assert checks.math_reward("q", "\\boxed{3.1416}", record) == 0.0
  assert checks.math_reward("q", "\\boxed{3.1416}", record, {"math_tolerance": 1e-4}) == 1.0


def test_exact_regex_and_format():
  assert checks.exact_reward("q", "  Positive. ", {"answer": "positive"}) == 1.0
  assert checks.exact_reward("q", "The answer: \\boxed{Paris}", {"answer": "paris"}) == 1.0
  assert checks.exact_reward("q", "negative", {"answer": "positive"}) == 0.0
  assert checks.regex_reward("q", "A\nB", {}, {"regex": r"A\s+B"}) == 1.0
  assert checks.regex_reward("q", "A B!", {}, {"regex": r"A\s+B"}) == 0.0  # whole response
  with pytest.raises(ConfigError, match="config.reward.regex"):
    checks.regex_reward("q", "x", {}, {"regex": ""})
  good = "<think>\n2 + 2 = 4\n</think>\n<answer>4</answer>"
  assert checks.format_reward("q", good, {}) == 1.0
  for bad in (good + " trailing", "<answer>4</answer>", "<think>a</think><think>b</think>"
              "<answer>4</answer>", "text <think>a</think><answer>4</answer>"):
    assert checks.format_reward("q", bad, {}) == 0.0, bad


# --- the weighted sum and its error policy ---------------------------------------

def test_weights_parts_and_per_function_metrics():
  reward = scoring.FunctionReward("math:1.0,format:0.5")
  got = reward.score(["q"] * 3, ["<think>t</think><answer>4</answer>", "#### 4", "5"],
                     [{"answer": "4"}] * 3)
  np.testing.assert_allclose(got.total, [1.5, 1.0, 0.0])
  np.testing.assert_allclose(got.parts["format"], [1, 0, 0])
  assert got.metrics["reward/math"] == pytest.approx(2 / 3) and got.metrics["reward/errors"] == 0
  assert reward.fields == ("answer",)
  with pytest.raises(ConfigError, match="'nope' is not a registered reward function"):
    scoring.FunctionReward("math,nope")
  with pytest.raises(ConfigError, match="weight 'x' of 'math' is not a number"):
    scoring.FunctionReward("math:x")


@pytest.fixture
def registered():
  added = []

  def add(name, fn, **kw):
    rewards.register(name, fn, **kw)
    added.append(name)
  yield add
  for name in added:
    rewards.REGISTRY.pop(name)


def test_a_function_that_raises_scores_zero_counts_and_warns_once(registered, caplog):
  def flaky(prompt, response, record, options):
    if "boom" in response:
      raise RuntimeError("bad response")
    return 1.0
  registered("flaky", flaky)
  got = scoring.FunctionReward("flaky").score(["q"] * 3, ["ok", "boom", "boom!"], [{}] * 3)
  np.testing.assert_allclose(got.total, [1, 0, 0])
  assert got.metrics["reward/errors"] == 2
  assert sum("'flaky' raised RuntimeError" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("returned,message", [
    ([1.0], "returned 1 scores for 2 responses"),
    ([1.0, float("nan")], "returned nan: scores must be finite"),
    ([1.0, "high"], "returned str 'high', not a number"),
    (3.0, "returned float, not a list of 2 scores"),
])
def test_wrong_shapes_and_values_stop_naming_the_function(registered, returned, message):
  registered("broken", lambda p, r, rec, o: returned, batched=True)
  with pytest.raises(ConfigError, match=f"reward function 'broken' {re.escape(message)}"):
    scoring.FunctionReward("broken").score(["q", "q"], ["a", "b"], [{}, {}])


def test_records_without_the_fields_a_checker_needs_are_refused():
  records = [{"prompt": "q", "answer": "1", "where": "f.jsonl:1"},
             {"prompt": "q", "where": "f.jsonl:2"}]
  with pytest.raises(DataError, match=r"f\.jsonl:2: the 'math' reward needs the field\(s\) "
                                      r"\['answer'\]"):
    scoring.FunctionReward("math,format").check_records(records)


# --- the code sandbox ---------------------------------------------------------------

# One worker runs every sandboxed program, so a test sees only its own processes.
sandboxed = pytest.mark.xdist_group("sandbox")
FAST = sandbox.Limits(cpu_seconds=1, wall_seconds=3.0, memory_mb=256)
OPTIONS = {"code_cpu_seconds": 1, "code_wall_seconds": 3.0, "code_memory_mb": 256}
SQUARE = {"tests": ["assert square(3) == 9", "assert square(-2) == 4", "assert square(0) == 0"]}


@sandboxed
def test_code_scores_the_fraction_of_tests_passed():
  right = "Here:\n```python\ndef square(x):\n    return x * x\n```"
  half = "```python\ndef square(x):\n    return abs(x) * 3 if x else 0\n```"
  got = code.code_reward(["q"] * 2, [right, half], [SQUARE] * 2, OPTIONS)
  assert got[0] == [1.0, pytest.approx(2 / 3)]  # square(-2) fails
  stdio = {"tests": [{"input": "3\n", "output": "9\n"}, {"input": "5\n", "output": "25"}]}
  program = "n = int(input())\nprint(n * n)"
  assert code.score_one(program, stdio["tests"], OPTIONS)[0] == 1.0
  assert code.score_one("print(9)", stdio["tests"], OPTIONS)[0] == 0.5
  assert code.score_one(program, SQUARE["tests"], {**OPTIONS, "code_all_pass": True})[0] == 0.0


def _sandbox_processes():
  out = subprocess.run(["ps", "-eo", "uid=,stat="], capture_output=True, text=True).stdout
  return [line for line in out.splitlines() if line.split() and
          sandbox.UIDS[0] <= int(line.split()[0]) < sandbox.UIDS[1] and "Z" not in line.split()[1]]


HOSTILE = {
    "infinite loop": "def square(x):\n    while True:\n        pass",
    "loop at import": "while True:\n    pass",
    "sleeps": "import time\ntime.sleep(60)",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "10 GB": "big = bytearray(10 * 2**30)\ndef square(x):\n    return x * x",
    "writes outside": "open('/tmp/sandbox_escape.txt', 'w').write('x')\n"
                      f"open({os.path.join(ROOT, 'ESCAPED')!r}, 'w').write('x')\n"
                      "def square(x):\n    return x * x",
    "reads the environment": "import os\nassert 'HOME' not in os.environ, sorted(os.environ)\n"
                             "assert not any('KEY' in k or 'TOKEN' in k for k in os.environ)\n"
                             "raise SystemExit(1)",
    "closes stdout": "import os\nos.close(1)\ndef square(x):\n    return x * x",
    "exits early": "import os\ndef square(x):\n    return x * x\nos._exit(0)",
    "prints a fake count": "print('0' * 32, 3)\ndef square(x):\n    return -1",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n"
               "def square(x):\n    return x * x",
}


@sandboxed
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_program_scores_zero_and_harms_nothing(name, monkeypatch):
  monkeypatch.setenv("SECRET_API_KEY", "do-not-leak")
  start = time.time()
  score, statuses = code.score_one(HOSTILE[name], SQUARE["tests"], OPTIONS)
  assert score == 0.0, (name, statuses)
  assert time.time() - start < 3.0 + 10  # the wall-clock limit holds (kill and cleanup)
  assert not os.path.exists("/tmp/sandbox_escape.txt") and not os.path.exists(
      os.path.join(ROOT, "ESCAPED"))
  assert not _sandbox_processes()  # forked children included: nothing left running


@sandboxed
def test_sandbox_results_are_statuses_never_exceptions():
  assert sandbox.run_python("print(input()[::-1])", "abc\n", FAST).stdout == "cba\n"
  assert sandbox.run_python("while True: pass", "", FAST).status in ("killed", "timeout")
  assert sandbox.run_python("raise ValueError", "", FAST).status == "error"
  spam = sandbox.run_python("import os\nwhile True:\n    os.write(1, b'x' * 65536)", "", FAST)
  assert spam.status == "output_limit" and len(spam.stdout) == FAST.output_bytes
  partial = sandbox.run_python("import time\nprint('early', flush=True)\ntime.sleep(60)", "",
                               FAST)
  assert partial.status == "timeout" and partial.stdout == "early\n"  # kept, not dropped
  held = sandbox.probe()
  assert held["no_network"] and held["no_shared_folders"]  # what this machine allows (root)
  assert held["own_user"] == (os.getuid() == 0) and held["process_cap"]


# --- the remote protocol, against a real server process ---------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.Popen([sys.executable, "-m", "research.serve_reward",
                           "--functions=math:1.0,format:0.5", f"--port={port}"], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  url = f"http://127.0.0.1:{port}/"
  deadline = time.time() + 60
  while time.time() < deadline:
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1):
        break
    except OSError:
      time.sleep(0.2)
  yield url
  proc.terminate()
  proc.wait(timeout=30)


def test_the_remote_reward_matches_the_local_one(server):
  prompts = ["q"] * 3
  responses = ["<think>t</think><answer>4</answer>", "#### 4", "5"]
  records = [{"answer": "4"}] * 3
  local = scoring.FunctionReward("math:1.0,format:0.5").score(prompts, responses, records)
  got = scoring.FunctionReward("remote", {"remote_url": server}).score(prompts, responses,
                                                                       records)
  np.testing.assert_allclose(got.total, local.total)
  assert got.metrics["reward/errors"] == 0  # it really answered
  assert got.metrics["reward/math"] == pytest.approx(2 / 3)  # the server's own metrics


def test_a_bad_request_and_a_dead_server_are_named(server):
  with pytest.raises(remote.RemoteError, match=r"HTTP 400: .*a batch is \{prompts, responses"):
    remote.post(server, {"prompts": ["q"]}, retries=2)
  dead = f"http://127.0.0.1:{_free_port()}/"
  start = time.time()
  with pytest.raises(remote.RemoteError, match=rf"reward server {re.escape(dead)}: "
                                               r"URLError: .*after 3 attempt\(s\)"):
    remote.post(dead, {"responses": []}, retries=2, pause=0.1)
  assert time.time() - start < 5
  with pytest.raises(ConfigError, match="config.reward.remote_url"):
    remote.remote_reward(["q"], ["a"], [{}], {})
