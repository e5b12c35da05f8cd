"""This project's sentencepiece model as a Hugging Face `tokenizer.json` that
tokenizes exactly as sentencepiece does.

transformers' own reading of a `tokenizer.model` (its Llama conversion) ignores
the model's normalizer spec and control pieces: it keeps the runs of spaces and
the leading/trailing spaces that sentencepiece's `remove_extra_whitespaces`
removes, drops the characters sentencepiece maps to `<unk>`, and reads `<s>`
written in a text as the BOS token, which sentencepiece keeps as text (5 of 21
varied strings tokenized alike). The file written here spells the model's rules
out with `tokenizers` components instead:

* normalizer: the model's precompiled character map (none for the `identity`
  rule this project trains with), then, as `remove_extra_whitespaces` does,
  leading and trailing spaces dropped and runs collapsed to one; the dummy-prefix
  space; spaces as '▁';
* pre-tokenizer: split before each '▁' (sentencepiece never merges across one);
* model: BPE with the merges sentencepiece's piece scores imply (every split of a
  normal piece into two pieces, ranked by the piece's score), or Unigram with the
  scores as they are; unknown characters `<unk>`, bytes with byte fallback;
* added tokens: the user-defined pieces (the chat role markers), matched after
  normalization as sentencepiece matches them (the dummy prefix is a regex that
  spares a string that is one such piece: `tokenizers` normalizes their text too); the control pieces special, and
  `split_special_tokens` in tokenizer_config.json so that a `<s>` in a text stays
  text;
* post-processor: BOS before every text, as this project's sequences start.

`tests/test_hf_models.py` checks the ids against sentencepiece on varied strings
(whitespace runs, tabs, newlines, accents, emoji, CJK, digits, role markers,
`<s>` as text), with `tokenizers` here and with transformers when installed.
"""

from __future__ import annotations

import json
import re

from sentencepiece import sentencepiece_model_pb2

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


def tokenizer_json(model_proto: bytes) -> str:
  """The tokenizer.json text for a serialized sentencepiece model."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
      pre_tokenizers, processors  # pylint: disable=g-import-not-at-top,g-multiple-import
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  spec, trainer = proto.normalizer_spec, proto.trainer_spec
  pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
  vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
  unk = next(p for p, _, t in pieces if t == _UNKNOWN)
  if trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
    model = models.BPE(vocab, _merges(pieces, vocab), unk_token=unk, fuse_unk=True,
                       byte_fallback=trainer.byte_fallback)
  elif trainer.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
    # Control, unknown and unused pieces are never read from text: scored out of
    # reach. (Not quite: a Unigram lattice prefers even such a piece to a run of
    # <unk>s, so `<s>` written in a text whose `<` is outside the vocabulary reads
    # as BOS here and as <unk>s in sentencepiece.)
    unreachable = (_CONTROL, _UNKNOWN, _UNUSED)
    model = models.Unigram([(p, -1e9 if t in unreachable else s) for p, s, t in pieces],
                           vocab[unk], trainer.byte_fallback)
  else:
    raise ValueError(f"sentencepiece model type {trainer.model_type} has no tokenizer.json "
                     "form here (bpe and unigram do)")
  tok = Tokenizer(model)
  steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
  user_defined = [p for p, _, t in pieces if t == _USER_DEFINED]
  if spec.add_dummy_prefix:  # not before a user-defined piece's own text (see below)
    whole = "|".join(re.escape(p) for p in user_defined)
    steps.append(normalizers.Replace(Regex(rf"\A(?!\z|(?:{whole})\z)" if whole else r"\A(?!\z)"), " "))
  steps.append(normalizers.Replace(" ", _SPACE))
  tok.normalizer = normalizers.Sequence(steps)
  tok.pre_tokenizer = pre_tokenizers.Split(_SPACE, behavior="merged_with_next")
  tok.decoder = decoders.Sequence(
      [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
      + ([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []))
  # Matched in the normalized text, where sentencepiece matches them; `tokenizers`
  # normalizes their own text first, which the dummy prefix above leaves alone.
  tok.add_tokens([AddedToken(p, normalized=True, special=False) for p in user_defined])
  tok.add_special_tokens([AddedToken(p, normalized=False, special=True)
                          for p, _, t in pieces if t in (_CONTROL, _UNKNOWN)])
  bos = proto.pieces[trainer.bos_id].piece
  tok.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, trainer.bos_id)])
  return tok.to_str(pretty=True)


def _merges(pieces, vocab) -> list[tuple[str, str]]:
  """BPE merges: sentencepiece merges the adjacent pair whose joined piece scores
  highest; each normal piece's splits into two pieces, ranked by its score."""
  mergeable = {p for p, _, t in pieces if t in (_NORMAL, _BYTE)}
  ranked = []
  for piece, score, kind in pieces:
    if kind != _NORMAL:
      continue
    for i in range(1, len(piece)):
      left, right = piece[:i], piece[i:]
      if left in mergeable and right in mergeable:
        ranked.append((-score, vocab[piece], vocab[left], vocab[right], left, right))
  return [(left, right) for *_, left, right in sorted(ranked)]


def tokenizer_config(model_proto: bytes) -> dict:
  """tokenizer_config.json beside `tokenizer_json`'s file."""
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  piece = lambda i: proto.pieces[i].piece if i >= 0 else None
  t = proto.trainer_spec
  out = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": piece(t.bos_id),
         "eos_token": piece(t.eos_id), "pad_token": piece(t.pad_id), "unk_token": piece(t.unk_id),
         # a control piece written in a text is text, as sentencepiece reads it
         "split_special_tokens": True, "clean_up_tokenization_spaces": False}
  return {k: v for k, v in out.items() if v is not None}


def dumps(config: dict) -> str:
  return json.dumps(config, indent=2, ensure_ascii=False)
