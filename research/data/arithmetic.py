"""An embedded task with checkable answers: multi-step arithmetic, seeded, with
worked solutions, so reasoning RL runs on a CPU and is judged against the truth.

`config.data.source = "arithmetic"` (or "arithmetic:L", problems of 1..L steps;
default 3) gives `config.data.corpus_size` problems of `config.data.corpus_seed`,
every 20th held out, in GSM8K's layout, the one researchers' math data comes in:

  {"question": "What is 23 + 45 - 17?",
   "answer":   "23 + 45 = 68. 68 - 17 = 51.\\n#### 51"}

Problem i has 1 + i % L steps of + and - on numbers below 100, none of them
negative. The worked solution is one equation per step, so a model fine-tuned on
it (SFT) can learn the procedure, and a checker (`math`) can judge any response
by its final answer. Every layout reader of the project reads it: SFT takes
the question as the prompt and the solution as the completion; RL, best-of-n
and evaluation take the question and the final answer (`layouts.task`).
"""

from __future__ import annotations

import random
import zlib

VALIDATION_EVERY = 20
DEFAULT_LEVELS, DEFAULT_BELOW = 3, 10
PREFIX = "arithmetic"


def parse(spec: str) -> tuple[int, int, float]:
  """'arithmetic' -> (3, 10, 0.0); 'arithmetic:STEPS[:BELOW[:SLIPS]]', e.g.
  'arithmetic:2:100' -> (2, 100, 0.0), 'arithmetic:3:10:0.3' -> (3, 10, 0.3)."""
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  parts = spec.split(":")[1:]
  try:
    if len(parts) > 3 or not all(p.isdigit() for p in parts[:2]):
      raise ValueError
    levels = int(parts[0]) if parts else DEFAULT_LEVELS
    below = int(parts[1]) if len(parts) > 1 else DEFAULT_BELOW
    slips = float(parts[2]) if len(parts) > 2 else 0.0
  except ValueError:
    raise ConfigError(f"config.data.source={spec!r}: expected 'arithmetic', 'arithmetic:STEPS', "
                      f"'arithmetic:STEPS:BELOW' or 'arithmetic:STEPS:BELOW:SLIPS'") from None
  if not 1 <= levels <= 8 or not 2 <= below <= 10_000 or not 0 <= slips < 1:
    raise ConfigError(f"config.data.source={spec!r}: STEPS in 1..8, BELOW in 2..10000, SLIPS "
                      f"in [0, 1)")
  return levels, below, slips


def problem(seed: int, index: int, levels: int = DEFAULT_LEVELS, below: int = DEFAULT_BELOW,
            slips: float = 0.0) -> dict:
  """Problem `index` of the task with this seed (GSM8K layout); with probability
  `slips` its worked solution slips (see `slip`)."""
  rng = random.Random(seed * 1_000_003 + index * 7 + levels * 131 + below)
  steps = 1 + index % levels
  value = rng.randrange(1, below)
  question, lines = str(value), []
  for _ in range(steps):
    if value >= 2 and rng.random() < 0.5:
      operand, op = rng.randrange(1, min(value, below - 1) + 1), "-"
      result = value - operand
    else:
      operand, op = rng.randrange(1, below), "+"
      result = value + operand
    question += f" {op} {operand}"
    lines.append(f"{value} {op} {operand} = {result}.")
    value = result
  out = {"question": f"What is {question}?", "answer": " ".join(lines) + f"\n#### {value}"}
  return slip(out, random.Random(seed * 7_919 + index)) if slips and \
      random.Random(seed * 104_729 + index).random() < slips else out


def slip(record: dict, rng: random.Random) -> dict:
  """The worked solution with its final answer off by one from the result it just
  computed: a demonstrator's careless slip in copying it out."""
  steps, _, final = record["answer"].rpartition("\n#### ")
  wrong = int(final) + rng.choice((-1, 1)) if int(final) else 1
  return {**record, "answer": f"{steps}\n#### {wrong}"}


def held_out(question: str) -> bool:
  """Whether a question is held out: one in VALIDATION_EVERY by a hash of its text,
  so a question generated twice (small numbers repeat) is never on both sides."""
  return zlib.crc32(question.encode("utf-8")) % VALIDATION_EVERY == 0


def records(spec: str, seed: int, size: int, split: str) -> list[tuple[str, dict]]:
  """(where, record) of `split` (see `held_out`)."""
  levels, below, slips = parse(spec)
  out = []
  for i in range(size):
    record = problem(seed, i, levels, below, slips)
    if held_out(record["question"]) == (split == "validation"):
      out.append((f"{spec} problem {i}", record))
  return out
