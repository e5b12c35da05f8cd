"""Random-access sources of records, fed to grain.

`config.data.source` names one:

  embedded               the generated movie-review corpus (research.data.corpus)
  tfds:NAME              a TFDS dataset read through `tfds.data_source` (ArrayRecord,
                         no TensorFlow needed), e.g. tfds:imdb_reviews, tfds:lm1b,
                         tfds:tiny_shakespeare
  /path/file.jsonl       one JSON object per line
  /path/file.txt         one document per line

A source is any object with `__len__` and `__getitem__`; here every item is a
dict of fields (`text` for pretraining).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from research.data import corpus
from research.errors import ConfigError, DataError


class ListSource:
  """Records held in memory (embedded corpus, local files)."""

  def __init__(self, records: Sequence[dict]):
    self._records = list(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict:
    return self._records[i]


class TFDSSource:
  """Decodes bytes features to str (real TFDS returns bytes, mocks return str)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # slow import; only when used
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    record = self._source[i]
    return {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in record.items()}


def read_jsonl(path: str, required: Sequence[str] = (),
               validate: Callable[[dict, str], Any] | None = None) -> list[dict]:
  """Parses a JSONL file; a malformed line raises DataError naming path:line.

  `validate(record, "path:line")` may raise a DataError of its own."""
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
      missing = [k for k in required if k not in record]
      if missing:
        raise DataError(f"{path}:{lineno}: missing field(s) {missing}; expected fields "
                        f"{list(required)}, got {sorted(record)}")
      if validate is not None:
        validate(record, f"{path}:{lineno}")
      records.append(record)
  return records


def read_text(path: str) -> list[dict]:
  """One document per non-empty line."""
  with open(path, encoding="utf-8") as f:
    try:
      return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: not UTF-8 text ({e})") from None


def holdout(records: Sequence[Any], split: str, every: int) -> list[Any]:
  """Every `every`-th record is validation, the rest train (for single-file sources)."""
  if split == "validation":
    return list(records[::every])
  return [r for i, r in enumerate(records) if i % every]


def text_source(data_cfg, split: str):
  """A source of {'text': str} records for CLM on `split` ('train'/'validation')."""
  spec = data_cfg.source
  if spec == "embedded":
    return ListSource([{"text": r.text} for r in
                       corpus.reviews(data_cfg.corpus_seed, data_cfg.corpus_size, split)])
  if spec.startswith("tfds:"):
    name = spec[len("tfds:"):]
    tfds_split = data_cfg.tfds_splits[split]
    source = TFDSSource(name, tfds_split, data_cfg.get("tfds_data_dir") or None)
    return _Renamed(source, data_cfg.text_field)
  if not os.path.exists(spec):
    raise FileNotFoundError(f"config.data.source={spec!r}: no such file (expected 'embedded', "
                            f"'tfds:NAME', or a .txt/.jsonl path)")
  if spec.endswith(".jsonl"):
    records = [{"text": r[data_cfg.text_field]} for r in read_jsonl(spec, [data_cfg.text_field])]
  elif spec.endswith(".txt"):
    records = read_text(spec)
  else:
    raise ConfigError(f"config.data.source={spec!r}: unknown file type (use .txt or .jsonl)")
  return ListSource(holdout(records, split, data_cfg.holdout_every))


class _Renamed:
  """Exposes `field` of each record as `text`."""

  def __init__(self, source, field: str):
    self._source, self._field = source, field

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    record = self._source[i]
    if self._field not in record:
      raise DataError(f"record {i} has no field {self._field!r} (config.data.text_field); "
                      f"fields: {sorted(record)}")
    return {"text": record[self._field]}
