"""Random-access sources of records, fed to grain.

`config.data.source` names one:

  embedded               the generated movie-review corpus (research.data.corpus)
  tfds:NAME              a prepared TFDS dataset read through `tfds.data_source`
                         (ArrayRecord, no TensorFlow needed), e.g. tfds:imdb_reviews,
                         tfds:lm1b, tfds:tiny_shakespeare
  /path/file.txt         one document per line
  anything else          a file or dataset folder (`research.data.readers`), the
                         document in `config.data.text_field`

A source is any object with `__len__` and `__getitem__`; here every item is a
dict of fields (`text` for pretraining).
"""

from __future__ import annotations

from typing import Sequence

from research.data import corpus, layouts, readers
from research.errors import DataError


class ListSource:
  """Records held in memory (embedded corpus, local files); `holdout` as `readers.Rows`."""

  def __init__(self, records: Sequence[dict], holdout: str | None = None):
    self._records = list(records)
    self.holdout = holdout

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict:
    return self._records[i]


def text_source(data_cfg, split: str):
  """A source of {'text': str} records for CLM on `split` ('train'/'validation')."""
  spec = data_cfg.source
  if spec == "embedded":
    return ListSource([{"text": r.text} for r in
                       corpus.reviews(data_cfg.corpus_seed, data_cfg.corpus_size, split)])
  if spec.startswith("tfds:"):  # random access, never read whole (lm1b has 30M documents)
    name = spec[len("tfds:"):]
    tfds_split = data_cfg.tfds_splits[split]
    source = readers.TFDSSource(name, tfds_split, data_cfg.get("tfds_data_dir") or None)
    return _Renamed(source, data_cfg.text_field, f"tfds:{name} {tfds_split}")
  field = data_cfg.text_field
  rows = readers.rows(data_cfg, split, lambda r, where: {"text": text_of(r, field, where)},
                      text_ok=True)
  return ListSource([record for _, record in rows], rows.holdout)


def text_of(record: dict, field: str, where: str) -> str:
  if field not in record:
    raise DataError(f"{where}: no field {field!r} (config.data.text_field); fields: "
                    f"{sorted(record)}")
  value = record[field]
  if not isinstance(value, str):
    raise DataError(f"{where}: field {field!r} is {layouts.kind(value)}; expected a string")
  return value


class _Renamed:
  """Exposes `field` of each record as `text`."""

  def __init__(self, source, field: str, name: str):
    self._source, self._field, self._name = source, field, name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    return {"text": text_of(self._source[i], self._field, f"{self._name} record {i}")}
