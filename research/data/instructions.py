"""Instruction data for SFT: the embedded set built from the review corpus, or a
researcher's data from any source of `readers` in any SFT layout of `layouts`.

Embedded tasks, one per review (`task_of`):

  sentiment  "Is this movie review positive or negative?" + review -> positive|negative
  title      "What film is this review about?" + review          -> the title
  summary    "Summarize this review in one sentence." + review   -> a templated summary
  write      "Write a [positive|negative] review of <title>."     -> the review itself

`sentiment` and `title` have one right answer, so exact match measures whether
the model follows the format. Reviews held out from the corpus (every 20th)
give the held-out split. `embedded_chat` asks the first two as a two-turn chat;
`embedded_judge` is pairs of reviews in the generative judge's prompt, answered A or
B by the ground truth (`judge_prompts.py`).
"""

from __future__ import annotations

from research.data import corpus, layouts, readers

TASKS = ("sentiment", "title", "summary", "write")
EXACT_MATCH_TASKS = ("sentiment", "title", "judge")  # judge: `embedded_judge` (research/rlhf/judge.py)
SENTIMENT_QUESTION = "Is this movie review positive or negative?"
TITLE_QUESTION = "What film is this review about?"


def boilerplate(copies: int = 200) -> list[str]:
  """The pipeline's fixed prompt text (template preambles, task instructions), for
  tokenizer training: without it the Alpaca preamble alone costs ~90 tokens."""
  from research.data import templates  # pylint: disable=g-import-not-at-top
  texts = [templates.ALPACA_PROMPT, templates.ALPACA_PROMPT_WITH_INPUT, SENTIMENT_QUESTION,
           TITLE_QUESTION, "Summarize this review in one sentence.",
           "Write a positive review of", "Write a negative review of", "Write a review of",
           "The reviewer liked", "The reviewer disliked", "praising the", "criticising the"]
  return texts * copies


def _join(items) -> str:
  items = list(items)
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary(review: corpus.Review) -> str:
  """One sentence that follows from the text: verdict and the aspects judged."""
  verdict = "liked" if review.label else "disliked"
  text = f"The reviewer {verdict} {review.title}"
  parts = []
  if review.praised:
    parts.append(f"praising the {_join(review.praised)}")
  if review.criticised:
    parts.append(f"criticising the {_join(review.criticised)}")
  return text + (", " + " but ".join(parts) if parts else "") + "."


def sentiment_word(review: corpus.Review) -> str:
  return "positive" if review.label else "negative"


def review_task(review: corpus.Review, task: str) -> dict:
  if task == "sentiment":
    record = {"instruction": SENTIMENT_QUESTION, "input": review.text,
              "output": sentiment_word(review)}
  elif task == "title":
    record = {"instruction": TITLE_QUESTION, "input": review.text, "output": review.title}
  elif task == "summary":
    record = {"instruction": "Summarize this review in one sentence.", "input": review.text,
              "output": summary(review)}
  elif task == "write":  # a third of them leave the sentiment open, as RLHF prompts do
    sentiment = "" if (review.index // len(TASKS)) % 3 == 0 else sentiment_word(review) + " "
    record = {"instruction": f"Write a {sentiment}review of {review.title}.",
              "input": "", "output": review.text}
  else:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  return {**record, "task": task}


def review_chat(review: corpus.Review) -> dict:
  return {"task": "chat", "messages": [
      {"role": "user", "content": f"{review.text}\n\n{SENTIMENT_QUESTION}"},
      {"role": "assistant", "content": sentiment_word(review)},
      {"role": "user", "content": TITLE_QUESTION},
      {"role": "assistant", "content": review.title}]}


def embedded(data_cfg, split: str, chat: bool = False) -> list[dict]:
  reviews = corpus.reviews(data_cfg.corpus_seed, data_cfg.corpus_size, split)
  if chat:
    return [review_chat(r) for r in reviews]
  return [review_task(r, task_of(r.index)) for r in reviews]


def task_of(index: int) -> str:
  """Round-robin over tasks, offset per block of VALIDATION_EVERY so that the
  held-out reviews (multiples of VALIDATION_EVERY) cover every task too."""
  return TASKS[(index + index // corpus.VALIDATION_EVERY) % len(TASKS)]


def instruction_records(data_cfg, split: str) -> readers.Rows:
  """Records of `split` for SFT, normalised by `layouts.sft` (any layout, any source);
  `.holdout` says how validation was cut from a source without that split."""
  spec = data_cfg.source
  if spec == "embedded_judge":  # comparisons in the generative judge's prompt
    from research.data import judge_prompts  # pylint: disable=g-import-not-at-top
    return readers.Rows(judge_prompts.embedded_records(data_cfg, split))
  if spec in ("embedded", "embedded_chat"):
    return readers.Rows(embedded(data_cfg, split, chat=spec == "embedded_chat"))
  rows = readers.rows(data_cfg, split, layouts.sft, layout_of=layouts.sft_layout)
  return readers.Rows([record for _, record in rows], rows.holdout)
