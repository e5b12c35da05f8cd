"""Tasks with checkable answers: the embedded arithmetic generator against Python's
own arithmetic, GSM8K / MATH / {prompt, answer} / {prompt, tests} records read
through the usual readers, pass@k against brute enumeration, maj@k by hand."""

import itertools
import json
import re

import numpy as np
import pytest

from configs import common
from research import verifiable
from research.data import arithmetic, instructions, preferences
from research.errors import ConfigError, DataError
from research.rewards import checks


def test_arithmetic_problems_are_right_and_held_out_disjointly():
  for i in range(300):
    p = arithmetic.problem(7, i, levels=4, below=20)
    expression = re.fullmatch(r"What is (.*)\?", p["question"]).group(1)
    truth = eval(expression)  # pylint: disable=eval-used  # digits, + and - only
    steps, final = p["answer"].split("\n#### ")
    assert int(final) == truth and len(steps.split(". ")) == 1 + i % 4
    assert all(int(n) >= 0 for n in re.findall(r"-?\d+", steps))
    assert checks.math_reward("q", p["answer"], {"answer": str(truth)}) == 1.0
  d = common.preference_data(source="arithmetic", corpus_size=2000)
  train = {r["prompt"] for r in preferences.prompt_records(d, "train")}
  held = preferences.prompt_records(d, "validation")
  assert 20 < len(held) < 200 and all(arithmetic.held_out(r["prompt"]) for r in held)
  assert not train & {r["prompt"] for r in held}  # small numbers repeat: never on both sides
  assert {r["answer"] for r in held} <= {str(n) for n in range(37)}


def test_slips_change_only_the_final_answer_and_only_sometimes():
  clean = [arithmetic.problem(0, i) for i in range(400)]
  slipped = [arithmetic.problem(0, i, slips=0.3) for i in range(400)]
  changed = [(c, s) for c, s in zip(clean, slipped) if c != s]
  assert 0.2 < len(changed) / 400 < 0.4
  for c, s in changed:
    assert c["question"] == s["question"]
    c_steps, c_final = c["answer"].split("\n#### ")
    s_steps, s_final = s["answer"].split("\n#### ")
    assert c_steps == s_steps and abs(int(c_final) - int(s_final)) == 1
  with pytest.raises(ConfigError, match="SLIPS in \\[0, 1\\)"):
    arithmetic.parse("arithmetic:3:10:1.5")


def jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_task_layouts_give_prompts_with_their_answers(tmp_path):
  gsm8k = jsonl(tmp_path / "gsm8k.jsonl", [
      {"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n"
       f"#### {i + 2:,}"} for i in range(998, 1008)])
  d = common.preference_data(source=gsm8k, holdout_every=5)
  record = next(r for r in preferences.prompt_records(d, "train") if "999" in r["prompt"])
  assert record["answer"] == "1001" and record["solution"].endswith("#### 1,001")  # normalised
  s = common.data(source=gsm8k, holdout_every=5, field_map=common.field_map(
      "instruction", "input", "output", "prompt", "completion", "messages"))
  sft = instructions.instruction_records(s, "train")[0]  # SFT: the worked solution
  assert sft["prompt"].startswith("Tom has 999") and sft["completion"].endswith("#### 1,001")
  math = jsonl(tmp_path / "math.jsonl", [{"problem": "Halve 1.", "solution":
                                          "It is $\\boxed{\\frac{1}{2}}$."}] * 5)
  assert preferences.prompt_records(common.preference_data(source=math, holdout_every=5),
                                    "validation")[0]["answer"] == "\\frac{1}{2}"
  generic = jsonl(tmp_path / "generic.jsonl", [{"prompt": "2+2?", "answer": 4},
                                               {"prompt": "f?", "tests": ["assert f() == 1"]}])
  both = preferences.prompt_records(common.preference_data(source=generic, holdout_every=2),
                                    "train")
  assert both == [{"prompt": "f?", "tests": ["assert f() == 1"], "where": f"{generic}:2"}]
  unmarked = jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}] * 3)
  with pytest.raises(DataError, match=r"bad\.jsonl:1: the 'answer' field marks no final answer "
                                      r"\('#### N' expected\)"):
    preferences.prompt_records(common.preference_data(source=unmarked, holdout_every=2), "train")


def test_pass_at_k_is_the_unbiased_estimator():
  for n in range(1, 8):
    for c in range(n + 1):
      for k in range(1, n + 1):
        draws = list(itertools.combinations(range(n), k))
        brute = sum(any(i < c for i in draw) for draw in draws) / len(draws)
        assert verifiable.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
  assert verifiable.ks(8) == [1, 2, 4, 8] and verifiable.ks(6) == [1, 2, 4, 6]
  with pytest.raises(ValueError, match="pass@4 needs at least 4 samples"):
    verifiable.pass_at_k(2, 1, 4)


def test_majority_voting():
  answers = ["7", "5", "5", None, "7"]
  correct = [True, False, False, False, True]
  assert not verifiable.majority_correct(answers, correct, 3)  # 5 wins 2:1
  assert verifiable.majority_correct(answers, correct, 5)      # 7 and 5 tie 2:2: first seen
  assert verifiable.majority_correct(answers, correct, 1)
  assert not verifiable.majority_correct([None, None], [False, False], 2)  # no vote cast
  rng = np.random.default_rng(0)
  for _ in range(50):  # maj@1 is pass@1 on the first sample
    votes = list(rng.choice(["1", "2", "3"], 4))
    right = [v == "2" for v in votes]
    assert verifiable.majority_correct(votes, right, 1) == right[0]
