"""SentencePiece tokenizer: trained from a corpus, cached, with fixed special ids.

pad = 0, eos = 1, bos = 2, unk = 3. Padding is never EOS, so a loss mask that
drops padding still teaches the model to stop. The chat role markers are
user-defined symbols: always one token, never split or merged.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm

from research.errors import ConfigError, DataError

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")


class Tokenizer:
  """A thin, picklable wrapper over a serialized SentencePiece model."""

  def __init__(self, model_proto: bytes, path: str = ""):
    self.model_proto = model_proto
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError:  # ParseFromArray: truncated, or not a sentencepiece model at all
      raise DataError(f"{path or 'a tokenizer'}: not a readable SentencePiece model (truncated, "
                      f"or another kind of file); give a tokenizer.model or a Hugging Face "
                      f"tokenizer folder, or delete it to train one anew") from None
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id()) != (PAD_ID, EOS_ID, BOS_ID):
      raise DataError(f"{path or 'a tokenizer'}: a SentencePiece model with pad/eos/bos ids "
                      f"{(self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id())}, not this "
                      f"project's (0, 1, 2): give a pretrained model's tokenizer as its folder "
                      f"with tokenizer_config.json (Hugging Face), or train one here")

  def __getstate__(self):
    return {"model_proto": self.model_proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  pad_id, eos_id, bos_id, unk_id = PAD_ID, EOS_ID, BOS_ID, UNK_ID
  prefix_ids = [BOS_ID]   # what starts every sequence (HF tokenizers: maybe nothing)
  stop_ids = (EOS_ID,)    # generation ends at any of these
  chat_template = None

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, cut at the first EOS, padding dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i != PAD_ID:
        out.append(i)
    return self._sp.decode(out)

  def piece_id(self, piece: str) -> int:
    i = self._sp.piece_to_id(piece)
    if i == UNK_ID and piece != self._sp.id_to_piece(UNK_ID):
      raise KeyError(f"{piece!r} is not a piece of this tokenizer")
    return i

  def save(self, path: str) -> None:
    _atomic_write(path, self.model_proto)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), path)


def train(texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
          byte_fallback: bool = False) -> Tokenizer:
  """Trains in memory; a few MB of text take a second or two. Too little text for
  `vocab_size` pieces is a DataError saying how many the texts allow."""
  texts = [t for t in texts if t]
  if not texts:
    raise DataError("no text to train a tokenizer on")
  buffer = io.BytesIO()
  try:
    _train(texts, buffer, vocab_size, model_type, byte_fallback)
  except RuntimeError as e:
    least = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", str(e))
    if least:
      raise DataError(f"config.model.vocab_size={vocab_size} is too small for this text: its "
                      f"characters and the special tokens need at least {least.group(1)} "
                      f"pieces; raise config.model.vocab_size") from None
    most = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)",
                     str(e))
    if not most:
      raise
    raise DataError(f"{len(texts)} texts allow at most {most.group(1)} tokenizer pieces, fewer "
                    f"than config.model.vocab_size={vocab_size}: lower model.vocab_size or give "
                    f"more data") from None
  return Tokenizer(buffer.getvalue())


def _train(texts: list[str], buffer, vocab_size: int, model_type: str, byte_fallback: bool):
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      user_defined_symbols=list(ROLE_TOKENS), byte_fallback=byte_fallback,
      split_digits=True, normalization_rule_name="identity", character_coverage=1.0,
      max_sentence_length=1 << 16, input_sentence_size=500_000, shuffle_input_sentence=True,
      num_threads=2, minloglevel=2)


def load_or_train(path: str, texts_fn, vocab_size: int, **kwargs) -> Tokenizer:
  """The tokenizer at `path`, training it from `texts_fn()` first if absent."""
  if os.path.exists(path):
    tok = Tokenizer.load(path)
    if tok.vocab_size != vocab_size:
      raise ConfigError(f"{path} has vocab size {tok.vocab_size}, but config.model.vocab_size "
                        f"is {vocab_size}")
    return tok
  tok = train(texts_fn(), vocab_size, **kwargs)
  tok.save(path)
  return tok


def _atomic_write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
