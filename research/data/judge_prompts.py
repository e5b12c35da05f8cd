"""The generative judge's prompt, and the embedded comparisons that teach it.

One text for training a judge (`config.data.source='embedded_judge'`, SFT) and for
asking it (`research/rlhf/judge.py`): the request and two responses as an Alpaca
{instruction, input} record; the answer is the letter of the better response.
"""

from __future__ import annotations

from research.data import corpus

QUESTION = "Which response is better?"
SENTIMENT_QUESTION = "Which review is more positive?"  # the embedded task's criterion
ANSWERS = ("A", "B")


def judge_prompt(prompt, a: str, b: str, question: str = QUESTION) -> dict:
  """The comparison as an instruction record ({instruction, input}), rendered by the
  run's template like any SFT prompt; the same text for training and judging."""
  if isinstance(prompt, dict):
    prompt = prompt["instruction"] + (f"\n{prompt['input']}" if prompt.get("input") else "")
  elif isinstance(prompt, list):
    prompt = "\n".join(m["content"] for m in prompt)
  return {"instruction": f"{question} Answer A or B.",
          "input": f"Request: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}"}


def embedded_records(data_cfg, split: str) -> list[dict]:
  """SFT records that teach the judge's format on the embedded task: two reviews of a
  film (`preferences.embedded_record`), the answer the more positive one by the
  ground-truth scorer; the right answer alternates A, B so that position says nothing."""
  from research.data import preferences  # pylint: disable=g-import-not-at-top
  out = []
  for i in range(data_cfg.corpus_size):
    if (i % corpus.VALIDATION_EVERY == 0) != (split == "validation"):
      continue
    r = preferences.embedded_record(data_cfg.corpus_seed, i, 2, "instruction")
    if r["ranks"][0] == r["ranks"][1]:
      continue
    better, worse = (0, 1) if r["ranks"][0] < r["ranks"][1] else (1, 0)
    first_wins = len(out) % 2 == 0
    a, b = (better, worse) if first_wins else (worse, better)
    out.append({**judge_prompt(r["prompt"], r["responses"][a], r["responses"][b],
                               SENTIMENT_QUESTION),
                "output": ANSWERS[0] if first_wins else ANSWERS[1], "task": "judge"})
  return out
