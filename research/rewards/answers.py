"""Final answers out of free text, the way the math-reasoning datasets mark them.

  gsm8k        the last '#### 42' (GSM8K's solutions end so)
  boxed        the last \\boxed{...} (or \\fbox{...}), nested braces balanced (MATH)
  answer_tag   the last <answer>...</answer> (R1-style formats); the answer inside
               it is extracted again, so '<answer>\\boxed{4}</answer>' gives '4'
  last_number  the last number in the text (commas between digits allowed)

`final_answer` tries them in that order of explicitness (a marked answer wins
over a stray number) and returns the normalised string, or None. Normalising
drops what does not change a value: surrounding space and '$', thousands
separators, a trailing full stop, '\\%' / '%', and '\\text{...}' / '\\mathrm'
wrappers (as verl's and open-instruct's extractors do, without their
dataset-specific unit lists).
"""

from __future__ import annotations

import fractions
import re

_GSM8K = re.compile(r"####\s*([^\n]*)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def gsm8k(text: str) -> str | None:
  found = _GSM8K.findall(text)
  return normalise(found[-1]) if found and normalise(found[-1]) else None


def boxed(text: str) -> str | None:
  """The content of the last \\boxed{...} or \\fbox{...}, braces balanced."""
  start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if start < 0:
    return None
  brace = text.find("{", start)
  if brace < 0:
    rest = text[start:].split(" ", 2)  # '\\boxed 4'
    return normalise(rest[1]) if len(rest) > 1 and rest[0] == "\\boxed" else None
  depth = 0
  for i in range(brace, len(text)):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return normalise(text[brace + 1:i]) or None
  return None  # unbalanced: not an answer


def answer_tag(text: str) -> str | None:
  found = _ANSWER_TAG.findall(text)
  if not found:
    return None
  inner = found[-1]
  return boxed(inner) or gsm8k(inner) or normalise(inner) or None


def last_number(text: str) -> str | None:
  found = _NUMBER.findall(text)
  return normalise(found[-1]) if found else None


EXTRACTORS = {"gsm8k": gsm8k, "boxed": boxed, "answer_tag": answer_tag,
              "last_number": last_number}
ORDER = ("boxed", "gsm8k", "answer_tag", "last_number")


def final_answer(text: str, order=ORDER) -> str | None:
  """The first answer the extractors of `order` find (see the module doc)."""
  for name in order:
    found = EXTRACTORS[name](text)
    if found is not None:
      return found
  return None


def normalise(answer: str) -> str:
  """A value's canonical spelling (see the module doc)."""
  s = answer.strip()
  for _ in range(3):  # nested wrappers: \\text{\\mathrm{5}}
    s = _WRAPPERS.sub(r"\1", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.replace("\\!", "").replace("\\,", "").strip()
  s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
  return s.rstrip(".").strip()


def as_number(answer: str | None) -> fractions.Fraction | None:
  """An answer that is a plain number (integer, decimal or a/b) as an exact Fraction."""
  if answer is None or len(answer) > 64:  # a number is short; 1e999999999 would hang
    return None
  s = answer.replace(" ", "")
  frac = re.fullmatch(r"([-+]?\d+)/(\d+)", s) or re.fullmatch(
      r"\\d?frac\{([-+]?\d+)\}\{(\d+)\}", s)
  try:
    if frac:
      return fractions.Fraction(int(frac.group(1)), int(frac.group(2)))
    number = re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?", s)
    if number and abs(int(number.group(1) or 0)) <= 300:
      return fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None
  return None


def numbers_equal(a: fractions.Fraction, b: fractions.Fraction, rel_tol: float = 0.0) -> bool:
  """Exact equality, or within a relative tolerance `rel_tol` (> 0) of the gold `a`."""
  if rel_tol <= 0:
    return a == b
  return abs(a - b) <= rel_tol * max(abs(a), 1)
