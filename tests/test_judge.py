"""The generative judge (research/rlhf/judge.py): its probabilities against a plain forward
pass, symmetry under swapping, the position-bias report, and the reward source."""

import types

import numpy as np
import pytest

from research import runs
from research.rlhf import judge as judge_lib
from research.data import templates

PROMPTS = ["Write a review of The Last Harbor.", "Write a review of Cold Summer."]
A = ["A moving, beautifully acted film. I loved it.", "Dull and far too long."]
B = ["A tedious mess with a weak script.", "A gripping story with a superb cast, a delight."]


@pytest.fixture(scope="module")
def tiny_judge(tiny_sft):
  return judge_lib.GenerativeJudge.load(tiny_sft, question=judge_lib.SENTIMENT_QUESTION, batch=4)


def _plain_p_a(judge, prompt, a, b) -> float:
  """P("A") from unpadded forward passes and a numpy softmax over the vocabulary."""
  ids = templates.prompt_ids(judge_lib.judge_prompt(prompt, a, b, judge.question), "alpaca",
                             judge.tok)
  logp = []
  for answer in judge_lib.ANSWERS:
    reply = templates.reply_ids(answer, "alpaca", judge.tok)
    tokens = np.asarray([ids + reply], np.int32)
    logits = np.asarray(judge.model.apply({"params": judge.scorer.params}, tokens,
                                          np.arange(tokens.shape[1])[None],
                                          np.ones_like(tokens)), np.float64)[0]
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                  keepdims=True)) - logits.max(-1, keepdims=True)
    logp.append(sum(log_softmax[len(ids) - 1 + i, t] for i, t in enumerate(reply)))
  return float(np.exp(logp[0]) / (np.exp(logp[0]) + np.exp(logp[1])))


def test_judge_probability_equals_a_plain_forward_pass(tiny_judge):
  got = tiny_judge.first(PROMPTS, A, B)
  want = [_plain_p_a(tiny_judge, p, a, b) for p, a, b in zip(PROMPTS, A, B)]
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.all((got > 0) & (got < 1))


def test_both_orders_make_the_judge_symmetric_under_swapping(tiny_judge):
  """P(a > b) + P(b > a) = 1 after averaging the two orders, while one order alone
  is not (an untrained judge leans to a position)."""
  ab, ba = tiny_judge.prefer(PROMPTS, A, B), tiny_judge.prefer(PROMPTS, B, A)
  np.testing.assert_allclose(ab + ba, 1.0, atol=1e-6)
  one_order = tiny_judge.first(PROMPTS, A, B) + tiny_judge.first(PROMPTS, B, A)
  assert np.max(np.abs(one_order - 1.0)) > 1e-4


def _fake_judge(p_first):
  """A judge whose P_A is `p_first(prompt, a, b)`."""
  first = lambda prompts, a, b: np.asarray([p_first(*x) for x in zip(prompts, a, b)])
  fake = types.SimpleNamespace(first=first)
  fake.prefer = lambda prompts, a, b: judge_lib.GenerativeJudge.prefer(fake, prompts, a, b)
  return fake


def test_agreement_measures_accuracy_and_position_bias():
  records = [{"prompt": "p", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
  always_a = judge_lib.agreement(_fake_judge(lambda p, a, b: 0.9), records)
  assert always_a["share_answering_A"] == 1.0 and always_a["orders_agree"] == 0.0
  assert always_a["accuracy_one_order"] == 0.5  # right exactly when the chosen is shown first
  assert always_a["mean_p_chosen"] == pytest.approx(0.5)  # the swap cancels the bias
  # Knows the answer, with a pull towards A: one order is fooled, both orders are not.
  leaning = lambda p, a, b: 0.9 if a.startswith("good") else 0.55
  out = judge_lib.agreement(_fake_judge(leaning), records)
  assert out["accuracy_both_orders"] == 1.0
  assert out["accuracy_one_order"] == 0.5 and out["share_answering_A"] == 1.0
  assert out["mean_p_chosen"] == pytest.approx(0.675)


def test_judge_reward_round_robin_within_a_prompt_and_against_a_reference():
  longer = _fake_judge(lambda p, a, b: 0.5 + 0.1 * np.sign(len(a) - len(b)))
  reward = judge_lib.JudgeReward(longer)
  roll = types.SimpleNamespace(texts=["aa", "a", "aaa", "x", "yy"])
  prompts = ["p", "p", "p", "q", "q"]
  # p: 'aaa' beats both (0.6, 0.6), 'aa' 0.6 and 0.4, 'a' 0.4 and 0.4; q: 'yy' beats 'x'.
  np.testing.assert_allclose(reward(roll, prompts), [0.5, 0.4, 0.6, 0.4, 0.6], atol=1e-6)
  one = types.SimpleNamespace(texts=["abc"])
  np.testing.assert_allclose(reward(one, ["r"], [{"reference": "a"}]), [0.6], atol=1e-6)
  with pytest.raises(ValueError, match="no 'reference'"):
    reward(one, ["r"], [{"where": "line 3"}])


def test_embedded_judge_records_balance_the_answer_position():
  from configs import common  # pylint: disable=g-import-not-at-top
  data = common.preference_data(corpus_size=200)
  records = judge_lib.embedded_records(data, "train")
  answers = [r["output"] for r in records]
  assert abs(answers.count("A") - answers.count("B")) <= 1 and len(records) > 150
  from research.data import scorer  # pylint: disable=g-import-not-at-top
  r = records[1]  # the answer is the more positive review by the ground truth
  text_a = r["input"].split("Response A: ")[1].split("\n\nResponse B: ")[0]
  text_b = r["input"].split("\n\nResponse B: ")[1]
  assert (scorer.score(text_a) > scorer.score(text_b)) == (r["output"] == "A")
  assert {r["task"] for r in records} == {"judge"}


def test_judge_reward_from_config_names_a_missing_judge(tmp_path):
  from configs import preferences as preferences_config  # pylint: disable=g-import-not-at-top
  from research.validate import ConfigError  # pylint: disable=g-import-not-at-top
  c = preferences_config.get_config("smoke")
  c.reward.update(source="judge", judge=str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match="config.reward.judge="):
    runs.resolve(c)
    runs.save_config(c, str(tmp_path / "w"))


def test_judge_stage_reports_agreement_and_position_bias(tiny_sft, tmp_path):
  from configs import judge as judge_config  # pylint: disable=g-import-not-at-top
  from research.stages import judge as judge_stage  # pylint: disable=g-import-not-at-top
  c = judge_config.get_config("smoke")
  c.judge, c.num_pairs = tiny_sft, 8
  c.mesh.num_devices = 1
  summary = judge_stage.run(c, str(tmp_path / "agree"))
  assert summary["pairs"] == 8
  for key in ("accuracy_one_order", "accuracy_both_orders", "share_answering_A",
              "orders_agree", "mean_p_chosen"):
    assert 0.0 <= summary[key] <= 1.0, key
  assert (tmp_path / "agree" / "summary.json").exists()


def test_served_judge_scores_as_the_local_reward_source(tiny_sft, tiny_judge):
  """`serve_reward --judge` answers the remote protocol with JudgeReward's scores."""
  from research.errors import UserError  # pylint: disable=g-import-not-at-top
  from research.serve_reward import JudgeScorer  # pylint: disable=g-import-not-at-top
  served = JudgeScorer(tiny_sft, judge_lib.SENTIMENT_QUESTION)
  prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]]
  responses = [A[0], B[0], A[1], B[1]]
  records = [{}, {}, {}, {"reference": A[1]}]
  scores, _ = served(prompts, responses, records)
  local = judge_lib.JudgeReward(tiny_judge)(types.SimpleNamespace(texts=responses), prompts,
                                            records)
  np.testing.assert_allclose(scores, local, atol=1e-5)
  assert np.sum(scores[:3]) == pytest.approx(1.5, abs=1e-5)  # round-robin: wins sum to 3 x 0.5
  with pytest.raises(UserError, match="no 'reference'"):
    served([PROMPTS[1]], [B[1]], [{}])


def test_grpo_trains_on_a_generative_judges_reward(tiny_sft, tmp_path):
  """RLAIF online: GRPO's group of samples per prompt is judged round-robin; the
  scores are win probabilities (in [0, 1], a group's mean 0.5)."""
  from configs import grpo as grpo_config  # pylint: disable=g-import-not-at-top
  from research.stages import rlhf as rlhf_stage  # pylint: disable=g-import-not-at-top
  c = grpo_config.get_config("smoke")
  c.init_from = tiny_sft
  c.mesh.num_devices = 1
  c.reward.update(source="judge", judge=tiny_sft, judge_question=judge_lib.SENTIMENT_QUESTION)
  c.evaluate.update(num_prompts=0, pretrain_batches=0)
  summary = rlhf_stage.run(c, str(tmp_path / "grpo"))
  raw = summary["curves"]["objective/raw_scores"]
  assert summary["iteration"] == c.train.steps
  assert raw["start"] == pytest.approx(0.5, abs=1e-5) and raw["end"] == pytest.approx(0.5, abs=1e-5)
