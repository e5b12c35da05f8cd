"""Hugging Face tokenizers, without transformers: `tokenizer.json` or `tokenizer.model`.

`tokenizer.json` (Llama 3, Qwen2, GPT-2 byte-level BPE, ...) runs through the
`tokenizers` package, exactly as transformers' fast tokenizers do;
`tokenizer.model` alone (Llama 2, Gemma) through sentencepiece, with special
tokens in the text split out first as transformers does. Special ids come from
`tokenizer_config.json` / `special_tokens_map.json`, stop ids also from
`generation_config.json` and the chat template's end-of-turn token.

Chat templates (`chat_template` in tokenizer_config.json or
`chat_template.jinja`) render with jinja2 in a sandbox, with the variables and
helpers transformers gives them (`bos_token`, `raise_exception`, ...).

The interface matches `research.data.tokenizer.Tokenizer`: `encode` adds no
special tokens, `prefix_ids` are what the tokenizer puts before a text (BOS for
Llama/Gemma, nothing for GPT-2/Qwen2), `decode` stops at the first stop id.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Iterable, Sequence

from research.errors import UserError

FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
         "chat_template.jinja", "generation_config.json")
DIRNAME = "tokenizer"  # where a workdir keeps an HF tokenizer


class TokenizerError(UserError):
  pass


def _content(token) -> str | None:
  if isinstance(token, dict):
    return token.get("content")
  return token


class HFTokenizer:
  """A picklable HF tokenizer built from its files' bytes."""

  def __init__(self, files: dict[str, bytes], where: str = "tokenizer"):
    self.files = {k: v for k, v in files.items() if k in FILES}
    self.where = where
    config = self._json("tokenizer_config.json")
    special_map = self._json("special_tokens_map.json")
    token = lambda key: _content(config.get(key)) or _content(special_map.get(key))
    if "tokenizer.json" in self.files:
      import tokenizers  # pylint: disable=g-import-not-at-top
      try:
        self._tok = tokenizers.Tokenizer.from_str(self.files["tokenizer.json"].decode("utf-8"))
      except Exception as e:  # truncated or not a tokenizers file: name it, one line
        raise TokenizerError(f"{os.path.join(where, 'tokenizer.json')}: not a readable "
                             f"tokenizer ({str(e).splitlines()[0][:200]})") from e
      # A special token written in a text is text (as sentencepiece reads `<s>`).
      self._tok.encode_special_tokens = bool(config.get("split_special_tokens", False))
      self._sp = None
      self._added: dict[str, int] = {}
      self._user_defined: dict[str, int] = {}
      self._to_id = self._tok.token_to_id
    elif "tokenizer.model" in self.files:
      self._tok = None
      self._init_sentencepiece(config)
      self._to_id = self._sp_piece_id
    else:
      raise TokenizerError(f"{where}: no tokenizer.json or tokenizer.model")
    names = {key: token(f"{key}_token") for key in ("bos", "eos", "pad", "unk")}
    ids = {k: (None if v is None else self._to_id(v)) for k, v in names.items()}
    for key, value in names.items():
      if value is not None and ids[key] is None:
        raise TokenizerError(f"{where}: {key}_token {value!r} is not in the vocabulary")
    if ids["eos"] is None:
      raise TokenizerError(f"{where}: no eos_token in tokenizer_config.json or "
                           f"special_tokens_map.json")
    self.special_tokens = {k: v for k, v in names.items() if v is not None}
    self.bos_id, self.eos_id, self.unk_id = ids["bos"], ids["eos"], ids["unk"]
    # Padding is only filler (masks say what is real); EOS serves where there is none.
    self.pad_id = ids["pad"] if ids["pad"] is not None else ids["eos"]
    self.prefix_ids = self._prefix(config)
    self.chat_template = self._chat_template(config)
    self.stop_ids = self._stop_ids()

  # -- construction helpers ---------------------------------------------------------------

  def _json(self, name: str) -> dict:
    if name not in self.files:
      return {}
    try:
      return json.loads(self.files[name])
    except json.JSONDecodeError as e:
      raise TokenizerError(f"{self.where}/{name}:{e.lineno}: invalid JSON ({e.msg})") from e

  def _init_sentencepiece(self, config) -> None:
    """sentencepiece as transformers' converted tokenizer runs it: user-defined pieces
    and added tokens are atomic, and with `legacy: false` only the text's first
    piece gets the dummy-prefix space (Metaspace `prepend_scheme='first'`)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self.files["tokenizer.model"])
    user_defined = 4  # ModelProto.SentencePiece.Type.USER_DEFINED
    # sentencepiece keeps its user-defined pieces whole itself; added tokens the
    # model lacks, and control pieces written as text (<s>), are split out first.
    self._user_defined = {p.piece: i for i, p in enumerate(proto.pieces)
                          if p.type == user_defined}
    self._added = {_content(v): int(k) for k, v in
                   (config.get("added_tokens_decoder") or {}).items()
                   if _content(v) not in self._user_defined}
    self._sp = spm.SentencePieceProcessor(model_proto=self.files["tokenizer.model"])
    self._dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    # No `legacy` key reads as False, as transformers >= 5 (the fixtures were made with
    # 5.24) reads it; 4.x read it as True. Exports of native runs write it explicitly.
    self._legacy = config.get("legacy", False)
    proto.normalizer_spec.add_dummy_prefix = False
    self._sp_bare = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

  def _sp_encode(self, text: str, first: bool) -> list[int]:
    if not self._dummy_prefix or self._legacy or (first and not text.startswith(" ")):
      return self._sp.encode(text)
    return self._sp_bare.encode(text)

  def _sp_piece_id(self, piece: str) -> int | None:
    if piece in self._added:
      return self._added[piece]
    if piece in self._user_defined:
      return self._user_defined[piece]
    i = self._sp.piece_to_id(piece)
    return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

  def _prefix(self, config) -> list[int]:
    if self._tok is not None:  # the post-processor decides, as in transformers
      return list(self._tok.encode("", add_special_tokens=True).ids)
    add_bos = config.get("add_bos_token", True)
    return [self.bos_id] if add_bos and self.bos_id is not None else []

  def _chat_template(self, config) -> str | None:
    if "chat_template.jinja" in self.files:
      return self.files["chat_template.jinja"].decode("utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
      template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template

  def _stop_ids(self) -> tuple[int, ...]:
    stops = {self.eos_id}
    eos = self._json("generation_config.json").get("eos_token_id")
    stops.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if self.chat_template:
      end = self.turn_end_ids()
      if end:
        stops.add(end[0])
    return tuple(sorted(int(i) for i in stops))

  # -- the Tokenizer interface ------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    if self._tok is not None:
      return self._tok.get_vocab_size(with_added_tokens=True)
    return max(self._sp.get_piece_size(), max(self._added.values(), default=-1) + 1)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (special tokens *in* the text,
    e.g. a chat template's markers, become their ids)."""
    if self._tok is not None:
      return list(self._tok.encode(text, add_special_tokens=False).ids)
    ids: list[int] = []
    for k, piece in enumerate(self._special_split(text)):
      special = self._special_ids().get(piece)
      ids += [special] if special is not None else self._sp_encode(piece, first=k == 0)
    return ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if self._tok is not None:
      return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
    return [self.encode(t) for t in texts]

  @functools.cached_property
  def _special_pattern(self):
    specials = sorted(self._special_ids(), key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None

  def _special_ids(self) -> dict[str, int]:
    out = {v: self._to_id(v) for v in self.special_tokens.values()}
    out.update(self._added)
    return {k: v for k, v in out.items() if k and v is not None}

  def _special_split(self, text: str) -> list[str]:
    if self._special_pattern is None:
      return [text] if text else []
    return [p for p in self._special_pattern.split(text) if p]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, cut at the first stop id (not included), special tokens kept."""
    out = []
    stops = set(self.stop_ids)
    for i in ids:
      i = int(i)
      if i in stops:
        break
      out.append(i)
    if self._tok is not None:
      return self._tok.decode(out, skip_special_tokens=False)
    return self._sp.decode(out)

  def piece_id(self, piece: str) -> int:
    i = self._to_id(piece)
    if i is None:
      raise KeyError(f"{piece!r} is not a token of {self.where}")
    return i

  # -- chat templates ---------------------------------------------------------------------

  def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    if not self.chat_template:
      raise TokenizerError(f"{self.where} has no chat template (tokenizer_config.json "
                           f"'chat_template' or chat_template.jinja); "
                           f"config.data.template='hf_chat' needs one")
    return _compile(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **{f"{k}_token": v for k, v in self.special_tokens.items()})

  def turn_end_ids(self) -> list[int]:
    """The ids the template closes an assistant turn with (e.g. <|im_end|>), found by
    rendering a probe turn: the special tokens right after its content."""
    probe = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "PROBE"}]
    try:
      full = self.render_chat(probe)
    except Exception:  # pylint: disable=broad-except  # a template that needs more
      return []
    tail = full[full.rfind("PROBE") + len("PROBE"):].strip()
    atomic = {*self._special_ids().values(), *self._user_defined.values()}
    if self._tok is not None:
      atomic.update(t.content and self._tok.token_to_id(t.content)
                    for t in self._tok.get_added_tokens_decoder().values())
    # Encoded after the probe's content, so that a sentencepiece dummy prefix ("▁")
    # lands on the content, not before the end token.
    content, encoded = self.encode("PROBE"), self.encode("PROBE" + tail)
    encoded = encoded[len(content):] if encoded[:len(content)] == content else self.encode(tail)
    ids = []
    for i in encoded:
      if i not in atomic:
        break
      ids.append(i)
    return ids

  # -- files ------------------------------------------------------------------------------

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in self.files.items():
      tmp = os.path.join(directory, f".{name}.tmp{os.getpid()}")
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, os.path.join(directory, name))

  @classmethod
  def load(cls, directory: str) -> "HFTokenizer":
    files = {}
    for name in FILES:
      path = os.path.join(directory, name)
      if os.path.exists(path):
        with open(path, "rb") as f:
          files[name] = f.read()
    return cls(files, where=directory)

  def __getstate__(self):
    return {"files": self.files, "where": self.where}

  def __setstate__(self, state):
    self.__init__(state["files"], state["where"])


@functools.lru_cache(maxsize=8)
def _compile(source: str):
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise TokenizerError(f"chat template: {message}")

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False,
                                                                indent=indent)
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
  return env.from_string(source)
