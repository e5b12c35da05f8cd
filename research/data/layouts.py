"""The record layouts a researcher's data comes in (TRL's, Hugging Face's, Alpaca's),
each checked field by field and normalised to what the stages read. Every error
names the record (`where`: 'file:line' or 'source record i') and the field.

Preference records (reward model, DPO, and the prompts of RL / best-of-n):

  {"prompt": "...", "chosen": "...", "rejected": "..."}        pair (+ optional "margin")
  {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}     TRL, explicit prompt
  {"chosen": [msgs], "rejected": [msgs]}                       TRL implicit: the shared turns
  {"chosen": "...", "rejected": "..."}                         TRL implicit: the common prefix
  {"prompt": ..., "responses": [...], "ranking": [0, 2, 1]}    K ranked responses, 0 = best

  -> {"prompt": str | [msgs], "responses": [str], "ranks": [int], "where": str (, "margin")}

Unpaired records (KTO; refused by the pair stages, which name the objective that reads them):

  {"prompt": ..., "completion": ..., "label": true}            TRL's unpaired layout
  -> {"prompt": str | [msgs], "completion": str, "label": bool, "where": str}

SFT records:

  {"instruction": "...", "input": "..." (optional), "output": "..."}   Alpaca
  {"prompt": "...", "completion": "..."}                               TRL prompt-completion
  {"prompt": [msgs], "completion": [msgs]}                             -> {"messages": both}
                                  (only the completion trained: `untrained_replies`)
  {"messages": [{"role": "user", "content": "..."}, ...]}              chat, assistant turns trained

A response given as messages is one assistant message; a prompt given as
messages is a conversation that does not end with the assistant.
"""

from __future__ import annotations

import json
from typing import Any

from research.errors import DataError

ROLES = ("system", "user", "assistant")
# A chat record's count of leading assistant turns that are context, not trained.
UNTRAINED = "untrained_replies"
PAIR_FIELDS = ("chosen", "rejected")


def kind(value: Any) -> str:
  """How a bad value is named in an error."""
  if value is None:
    return "null"
  return f"{type(value).__name__} {json.dumps(value, default=str)[:60]}"


def text(record: dict, field: str, where: str, *, optional: bool = False) -> str:
  value = record.get(field)
  if value is None and optional:
    return ""
  if field not in record:
    raise DataError(f"{where}: missing field {field!r}; fields: {sorted(record)}")
  if not isinstance(value, str):
    raise DataError(f"{where}: field {field!r} is {kind(value)}; expected a string")
  return value


def messages(value: Any, field: str, where: str) -> list[dict]:
  """A non-empty list of {role, content} with string content; extra keys dropped."""
  if not isinstance(value, list) or not value:
    raise DataError(f"{where}: field {field!r} is {kind(value)}; expected a non-empty list of "
                    f"messages {{role, content}}")
  out = []
  for i, m in enumerate(value):
    if not isinstance(m, dict) or m.get("role") not in ROLES:
      raise DataError(f"{where}: {field}[{i}] is {kind(m)}; a message needs 'role' in "
                      f"{list(ROLES)} and 'content'")
    if not isinstance(m.get("content"), str):
      raise DataError(f"{where}: {field}[{i}].content is {kind(m.get('content'))}; expected a "
                      f"string")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def prompt(value: Any, field: str, where: str) -> str | list[dict]:
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    msgs = messages(value, field, where)
    if msgs[-1]["role"] == "assistant":
      raise DataError(f"{where}: field {field!r} ends with an assistant message; a prompt is "
                      f"the conversation before the reply")
    return msgs
  raise DataError(f"{where}: field {field!r} is {kind(value)}; expected a string or a list of "
                  f"messages")


def response(value: Any, field: str, where: str) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    msgs = messages(value, field, where)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
      raise DataError(f"{where}: field {field!r} has {len(msgs)} message(s) with roles "
                      f"{[m['role'] for m in msgs]}; a response is one assistant message")
    return msgs[0]["content"]
  raise DataError(f"{where}: field {field!r} is {kind(value)}; expected a string or one "
                  f"assistant message")


def is_unpaired(record: dict) -> bool:
  return "completion" in record and "label" in record


def _unpaired(record: dict, where: str) -> None:
  if is_unpaired(record):
    raise DataError(f"{where}: an unpaired preference record {{prompt, completion, label}} "
                    f"(KTO style); only --config.objective.name=kto (configs/kto.py) trains on "
                    f"unpaired labels: use it, pair a desirable and an undesirable completion "
                    f"of the same prompt as {{prompt, chosen, rejected}}, or drop 'label' and "
                    f"keep the desirable ones for SFT")


def unpaired(record: dict, where: str) -> dict:
  """TRL's unpaired layout -> {prompt, completion, label (True: desirable), where}.
  A label is a boolean (or 0/1, as a parquet column of ints reads)."""
  for field in ("prompt", "completion", "label"):
    if field not in record:
      raise DataError(f"{where}: missing field {field!r}; fields: {sorted(record)}")
  label = record["label"]
  if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
    label = bool(label)
  if not isinstance(label, bool):
    raise DataError(f"{where}: field 'label' is {kind(label)}; expected true (desirable) or "
                    f"false (undesirable)")
  return {"prompt": prompt(record["prompt"], "prompt", where),
          "completion": response(record["completion"], "completion", where),
          "label": label, "where": where}


def implicit_prompt(chosen, rejected):
  """TRL's `extract_prompt`: the longest common prefix of chosen and rejected (whole
  messages, or characters backed off to before a space) is the prompt."""
  idx = 0
  for idx in range(min(len(chosen), len(rejected))):
    if chosen[idx] != rejected[idx]:
      if isinstance(chosen, str) and idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
      break
  else:
    idx = min(len(chosen), len(rejected))
  return chosen[:idx], chosen[idx:], rejected[idx:]


def preference(record: dict, where: str) -> dict:
  """Any preference layout above -> {prompt, responses, ranks, where (, margin)}."""
  _unpaired(record, where)
  if all(f in record for f in PAIR_FIELDS):
    if "prompt" in record:
      out = {"prompt": prompt(record["prompt"], "prompt", where),
             "responses": [response(record[f], f, where) for f in PAIR_FIELDS]}
    else:
      out = _implicit(record, where)
    out.update(ranks=[0, 1], where=where)
    if record.get("margin") is not None:
      if isinstance(record["margin"], bool) or not isinstance(record["margin"], (int, float)):
        raise DataError(f"{where}: field 'margin' is {kind(record['margin'])}; expected a number")
      out["margin"] = float(record["margin"])
    return out
  if "responses" in record and "prompt" in record:
    responses, ranking = record["responses"], record.get("ranking")
    if not isinstance(responses, list) or len(responses) < 2:
      raise DataError(f"{where}: field 'responses' is {kind(responses)}; expected a list of at "
                      f"least 2 responses")
    if (not isinstance(ranking, list) or len(ranking) != len(responses)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranking)):
      raise DataError(f"{where}: 'ranking' must give a rank >= 0 (0 = best) for each of the "
                      f"{len(responses)} responses, got {kind(ranking)}")
    return {"prompt": prompt(record["prompt"], "prompt", where),
            "responses": [response(r, f"responses[{i}]", where) for i, r in enumerate(responses)],
            "ranks": ranking, "where": where}
  raise DataError(f"{where}: unknown preference layout with fields {sorted(record)}; expected "
                  f"{{prompt, chosen, rejected}}, {{chosen, rejected}} (TRL, implicit prompt) "
                  f"or {{prompt, responses, ranking}} (config.data.field_map renames fields)")


def _implicit(record: dict, where: str) -> dict:
  chosen, rejected = record["chosen"], record["rejected"]
  if isinstance(chosen, str) and isinstance(rejected, str):
    shared, a, b = implicit_prompt(chosen, rejected)
    if not shared.strip():
      raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt text; give the prompt "
                      f"in a 'prompt' field")
    return {"prompt": shared, "responses": [a, b]}
  chosen = messages(chosen, "chosen", where)
  rejected = messages(rejected, "rejected", where)
  shared, a, b = implicit_prompt(chosen, rejected)
  if not shared:
    raise DataError(f"{where}: 'chosen' and 'rejected' share no first turns, so there is no "
                    f"implicit prompt; give it in a 'prompt' field")
  return {"prompt": prompt(shared, "chosen (shared turns)", where),
          "responses": [response(a, "chosen (after the shared turns)", where),
                        response(b, "rejected (after the shared turns)", where)]}


def sft(record: dict, where: str) -> dict:
  """Any SFT layout above -> Alpaca, chat or prompt-completion (strings), with `where`
  added and the record's other fields (e.g. 'task') kept."""
  _unpaired(record, where)
  from research.data import tasks  # pylint: disable=g-import-not-at-top  # it reads this module
  record = tasks.as_prompt_completion(record, where) or record  # GSM8K, MATH: worked solutions
  out = {"where": where}
  if "messages" in record:
    msgs = messages(record["messages"], "messages", where)
    if not any(m["role"] == "assistant" for m in msgs):
      raise DataError(f"{where}: a chat record needs at least one assistant message")
    out["messages"] = msgs
  elif "instruction" in record and "output" in record:
    out.update(instruction=text(record, "instruction", where),
               input=text(record, "input", where, optional=True),
               output=text(record, "output", where))
  elif "prompt" in record and "completion" in record:
    p = prompt(record["prompt"], "prompt", where)
    c = record["completion"]
    if isinstance(p, list) or isinstance(c, list):
      conversation = p if isinstance(p, list) else [{"role": "user", "content": p}]
      out["messages"] = conversation + [{"role": "assistant",
                                         "content": response(c, "completion", where)}]
      # Only the completion is trained (as TRL does): the prompt's own replies are context.
      untrained = sum(m["role"] == "assistant" for m in conversation)
      if untrained:
        out[UNTRAINED] = untrained
    else:
      out.update(prompt=p, completion=text(record, "completion", where))
  else:
    raise DataError(f"{where}: unknown SFT layout with fields {sorted(record)}; expected "
                    f"{{instruction, input (optional), output}}, {{prompt, completion}}, "
                    f"{{messages: [{{role, content}}]}}, {{question, answer}} (GSM8K) or "
                    f"{{problem, solution}} (MATH) (config.data.field_map renames fields)")
  rest = {k: v for k, v in record.items()
          if k not in ("messages", "instruction", "input", "output", "prompt", "completion")}
  return {**rest, **out}


def _style(value) -> str:
  return "conversational" if isinstance(value, list) else "standard"


def preference_layout(record: dict) -> str | None:
  """The layout of a raw preference record, for `readers.check_one_layout` (None:
  none of them; `preference` names the problem). Pairs and rankings with an explicit
  prompt are one layout (a pair is a ranking of two)."""
  if all(f in record for f in PAIR_FIELDS) and "prompt" not in record:
    return f"{{chosen, rejected}} with an implicit prompt ({_style(record['chosen'])})"
  if "prompt" in record and (all(f in record for f in PAIR_FIELDS) or "responses" in record):
    return f"an explicit prompt with ranked responses ({_style(record['prompt'])})"
  return None


def unpaired_layout(record: dict) -> str | None:
  """`preference_layout`, or TRL's unpaired layout (KTO reads both)."""
  if is_unpaired(record):
    return f"{{prompt, completion, label}} ({_style(record.get('prompt'))})"
  return preference_layout(record)


def sft_layout(record: dict) -> str | None:
  """The layout of a raw SFT record (as `preference_layout`); GSM8K and MATH
  records are prompt-completion pairs (`tasks.as_prompt_completion`)."""
  from research.data import tasks  # pylint: disable=g-import-not-at-top
  if tasks.task_layout(record) in tasks.LAYOUTS:
    return f"{{{', '.join(tasks.LAYOUTS[tasks.task_layout(record)])}}} (a worked solution)"
  if "messages" in record:
    return "{messages}"
  if "instruction" in record and "output" in record:
    return "{instruction, input, output}"
  if "prompt" in record and "completion" in record:
    return f"{{prompt, completion}} ({_style(record['prompt'])})"
  return None


def prompt_record(record: dict, where: str) -> dict:
  """The prompt of any preference, SFT or task record -> {prompt, where, and the
  reference fields a reward function reads}: what RL, best-of-n and evaluation
  sample from. A task record (`tasks`) keeps its answer, solution or tests; an SFT
  record's prompt is the conversation before its last reply (messages), its
  instruction (with the input: a dict {instruction, input}, which the Alpaca
  template renders as in SFT), or its prompt, and its answer is that reply (unless
  the record has its own answer, solution or tests: those are kept)."""
  from research.data import tasks  # pylint: disable=g-import-not-at-top  # it reads this module
  if preference_layout(record) is not None:
    return {"prompt": preference(record, where)["prompt"], "where": where}
  if is_unpaired(record):
    return {"prompt": unpaired(record, where)["prompt"], "where": where}
  task = tasks.task_layout(record)
  if task in tasks.LAYOUTS or (task is not None and sft_layout(record) is None):
    return tasks.task(record, where)
  if sft_layout(record) is None:
    raise DataError(f"{where}: unknown layout with fields {sorted(record)}; prompts come from "
                    f"preference records {{prompt, chosen, rejected}}, {{chosen, rejected}}, "
                    f"{{prompt, responses, ranking}}, SFT records {{instruction, input, "
                    f"output}}, {{prompt, completion}}, {{messages}}, or tasks {{question, "
                    f"answer}} (GSM8K), {{problem, solution}} (MATH), {{prompt, answer}}, "
                    f"{{prompt, tests}} (config.data.field_map renames fields)")
  r = sft(record, where)
  kind = sft_kind(r)
  if kind == "chat":
    last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
    if not last:
      raise DataError(f"{where}: the conversation starts with the assistant's reply, so it has "
                      f"no prompt")
    prompt, reply = r["messages"][:last], r["messages"][last]["content"]
  elif kind == "alpaca":
    prompt = ({"instruction": r["instruction"], "input": r["input"]} if r.get("input")
              else r["instruction"])
    reply = r["output"]
  else:
    prompt, reply = r["prompt"], r["completion"]
  references = {k: record[k] for k in ("answer", "solution", "tests") if k in record}
  return {"prompt": prompt, "answer": reply, **references, "where": where}


def prompt_layout(record: dict) -> str | None:
  """`unpaired_layout` (pairs, rankings, unpaired), else `sft_layout`, else the task
  layout (a prompt with an answer and one with tests may mix: a math-and-code set)."""
  from research.data import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.task_layout(record)
  return (unpaired_layout(record) or sft_layout(record) or
          ("{prompt, answer or tests}" if task in ("answer", "tests") else task))


def sft_kind(record: dict) -> str:
  """The layout of a normalised SFT record: 'chat', 'alpaca' or 'prompt_completion'."""
  if "messages" in record:
    return "chat"
  if "instruction" in record:
    return "alpaca"
  return "prompt_completion"
