"""Prompt templates: a record -> (text, is_response) segments -> tokens and loss mask.

The loss mask covers response tokens and the EOS that closes each response,
never the prompt or padding. In chat, every assistant turn is a response.

`hf_chat` renders with the tokenizer's own chat template (a Hugging Face
tokenizer's jinja `chat_template`): the conversation is rendered up to each
assistant turn with the generation prompt, then with the turn, and the text
in between (the reply and the template's end-of-turn token) is the response.
The template supplies BOS and the end-of-turn token itself.

`none` renders a prompt-completion record as its text, unchanged (TRL's
standard prompt-completion), and a bare prompt as itself (a prefix to continue).
Records arrive normalised by `layouts.sft` (Alpaca, chat or prompt-completion).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from research.data import layouts
from research.data.tokenizer import ROLE_TOKENS, Tokenizer
from research.errors import ConfigError, DataError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

SFT_FIELDS = ("instruction", "input", "output", "prompt", "completion", "messages")
TEMPLATES = ("alpaca", "chat", "hf_chat", "none")
CHAT_ROLES = {"system": ROLE_TOKENS[0], "user": ROLE_TOKENS[1], "assistant": ROLE_TOKENS[2]}


def alpaca_prompt(record: dict) -> str:
  """The Alpaca template (Taori et al. 2023) up to and including '### Response:'."""
  if record.get("input"):
    return ALPACA_PROMPT_WITH_INPUT.format(instruction=record["instruction"],
                                           input=record["input"])
  return ALPACA_PROMPT.format(instruction=record["instruction"])


def alpaca_segments(record: dict) -> list[tuple[str, bool]]:
  return [(alpaca_prompt(record), False), (record["output"], True)]


def chat_prompt(messages: Sequence[dict]) -> str:
  """Messages rendered with role tokens, ending with the assistant marker."""
  return "".join(f"{CHAT_ROLES[m['role']]} {m['content']} " for m in messages) \
      + CHAT_ROLES["assistant"]


def chat_segments(record: dict) -> list[tuple[str, bool]]:
  segments: list[tuple[str, bool]] = []
  for m in record["messages"]:
    if m["role"] == "assistant":
      segments += [(CHAT_ROLES["assistant"], False), (m["content"], True)]
    else:
      segments.append((f"{CHAT_ROLES[m['role']]} {m['content']} ", False))
  return segments


def hf_chat_segments(record: dict, tok) -> list[tuple[str, bool]]:
  """Segments of a chat record under the tokenizer's chat template (see module doc).

  Whitespace the template puts after the end-of-turn token (ChatML's newline)
  belongs to the next turn's prompt, so the mask covers what generation emits.
  """
  messages = record["messages"]
  segments: list[tuple[str, bool]] = []
  done = ""
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    prompt = tok.render_chat(messages[:i], add_generation_prompt=True)
    full = tok.render_chat(messages[:i + 1])
    if not (prompt.startswith(done) and full.startswith(prompt)):
      raise DataError(f"{record.get('where', 'record')}: the tokenizer's chat template does "
                      "not render a conversation as a prefix of its continuation (it rewrites "
                      "earlier turns), so the "
                      "assistant-only loss mask cannot be cut from it")
    reply = full[len(prompt):]
    kept = reply.rstrip()
    segments += [(prompt[len(done):], False), (kept, True)]
    if len(kept) < len(reply):
      segments.append((reply[len(kept):], False))
    done = full
  return segments


def render_prompt(prompt, template: str, tok=None) -> str:
  """A bare prompt (preference / RL data: a string, the messages before the reply,
  or an SFT record's {instruction, input}) rendered as the policy saw prompts in SFT.

  'none' leaves a string raw: a text prefix to continue (the DPO paper's IMDb task).
  """
  if template not in TEMPLATES:
    raise ConfigError(f"config.data.template={template!r}; expected one of {TEMPLATES}")
  if isinstance(prompt, dict):  # an Alpaca record's instruction and input
    if template == "alpaca":
      return alpaca_prompt(prompt)
    prompt = prompt["instruction"] + (f"\n\n{prompt['input']}" if prompt.get("input") else "")
  if isinstance(prompt, list):
    if template == "hf_chat":
      return tok.render_chat(prompt, add_generation_prompt=True)
    if template == "chat":
      return chat_prompt(prompt)
    if len(prompt) != 1 or prompt[0]["role"] != "user":
      raise DataError(f"a prompt of {len(prompt)} messages (roles {[m['role'] for m in prompt]}) "
                      f"needs config.data.template='chat' or 'hf_chat'; {template!r} renders "
                      f"one user message")
    prompt = prompt[0]["content"]
  if template == "hf_chat":
    return tok.render_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
  if template == "alpaca":
    return alpaca_prompt({"instruction": prompt})
  if template == "chat":
    return chat_prompt([{"role": "user", "content": prompt}])
  return prompt


def as_template(record: dict, template: str) -> dict:
  """A normalised SFT record (`layouts.sft`) in the layout `template` renders:
  Alpaca and prompt-completion records become a one-turn chat for the chat
  templates, prompt-completion an Alpaca instruction for 'alpaca'."""
  layout = layouts.sft_kind(record)
  where = record.get("where", "record")
  if (layout == template or (template == "hf_chat" and layout == "chat")
      or (template == "none" and layout == "prompt_completion")):
    return record
  rest = {k: v for k, v in record.items() if k not in SFT_FIELDS}
  if template in ("chat", "hf_chat") and layout != "chat":
    if layout == "alpaca":
      user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
      reply = record["output"]
    else:
      user, reply = record["prompt"], record["completion"]
    return {**rest, "messages": [{"role": "user", "content": user},
                                 {"role": "assistant", "content": reply}]}
  if template == "alpaca" and layout == "prompt_completion":
    return {**rest, "instruction": record["prompt"], "input": "", "output": record["completion"]}
  if template not in TEMPLATES:
    raise ConfigError(f"config.data.template={template!r}; expected one of {TEMPLATES}")
  raise DataError(f"{where}: a {layout} record cannot be rendered with "
                  f"config.data.template={template!r} ({_RENDERS[layout]})")


_RENDERS = {"chat": "'chat' or 'hf_chat' render it",
            "alpaca": "'alpaca', 'chat' or 'hf_chat' render it",
            "prompt_completion": "any template renders it"}


def segments(record: dict, template: str, tok=None) -> list[tuple[str, bool]]:
  record = as_template(record, template)
  if template == "alpaca":
    return alpaca_segments(record)
  if template == "chat":
    return chat_segments(record)
  if template == "hf_chat":
    return hf_chat_segments(record, tok)
  return [(record["prompt"], False), (record["completion"], True)]  # 'none': the text as is


def _start_ids(template: str, tok) -> list[int]:
  return [] if template == "hf_chat" else list(tok.prefix_ids)


def _response_end(template: str, tok) -> list[int]:
  """hf_chat response segments carry the template's end-of-turn token; others get EOS."""
  return [] if template == "hf_chat" else [tok.eos_id]


def prompt_ids(prompt: str, template: str, tok) -> list[int]:
  """A bare prompt (preference / RL data), rendered and tokenised as in SFT."""
  return _start_ids(template, tok) + tok.encode(render_prompt(prompt, template, tok))


def reply_ids(response: str, template: str, tok) -> list[int]:
  """A bare response closed as in SFT: EOS, or the chat template's end-of-turn token."""
  end = (tok.turn_end_ids() or [tok.eos_id]) if template == "hf_chat" else [tok.eos_id]
  return tok.encode(response) + end


def generation_prompt(record: dict, template: str, tok: Tokenizer):
  """(prompt ids, reference answer): everything before the last response, tokenised
  segment by segment exactly as in training, so the model sees the same ids."""
  segs = segments(record, template, tok)
  last = max(i for i, (_, is_response) in enumerate(segs) if is_response)
  ids = _start_ids(template, tok)
  for text, is_response in segs[:last]:
    ids += tok.encode(text) + (_response_end(template, tok) if is_response else [])
  answer = segs[last][0]
  if template == "hf_chat":  # the reference answer without the end-of-turn token
    answer = tok.decode(tok.encode(answer))
  return ids, answer


def tokenize(record: dict, template: str, tok: Tokenizer):
  """-> (ids, response_mask): [BOS] prompt response EOS ...; mask on responses + EOS,
  but for a prompt-completion conversation's `untrained_replies` (context).

  Segments are encoded one by one (never merged across a prompt/response
  boundary), so `generation_prompt` reproduces the prompt ids exactly.
  """
  ids = _start_ids(template, tok)
  mask = [False] * len(ids)
  skip = record.get(layouts.UNTRAINED, 0)  # replies of a prompt: rendered, not trained
  for text, is_response in segments(record, template, tok):
    piece = tok.encode(text) + (_response_end(template, tok) if is_response else [])
    ids += piece
    mask += [is_response and skip <= 0] * len(piece)
    skip -= is_response
  return np.asarray(ids, np.int32), np.asarray(mask, bool)


def fit(ids, mask, max_tokens: int, max_prompt: int = 0, overflow: str = "truncate_left"):
  """Truncation policy (`prompt_fit`): the prompt (the tokens before the first
  response) is cut from the left, keeping BOS, to fit `max_tokens` in all and
  `max_prompt` (> 0) itself; every response is kept.

  Returns (ids, mask, status, reason): status 'ok', 'truncated' or 'dropped',
  reason 'response_too_long' (the responses alone do not fit) or 'prompt_too_long'
  (the prompt needs cutting and `overflow` is 'drop').
  """
  first_response = int(np.argmax(mask))
  excess = max(len(ids) - max_tokens, first_response - max_prompt if max_prompt else 0, 0)
  if not excess:
    return ids, mask, "ok", ""
  if first_response - 1 < excess:  # less prompt (after BOS) than must go
    return ids, mask, "dropped", "response_too_long"
  if overflow == "drop":
    return ids, mask, "dropped", "prompt_too_long"
  keep = np.r_[0, np.arange(1 + excess, len(ids))]
  return ids[keep], mask[keep], "truncated", ""
