"""A researcher's data as it comes: files, Hugging Face `datasets` folders and TFDS,
read offline into records that remember where they came from.

`config.data.source` may be

  path.jsonl     one JSON object per line
  path.json      a JSON list of objects (or an object of split name -> list)
  path.parquet   a table, one record per row
  path.csv       a table with a header row (every value a string)
                 (.jsonl, .json and .csv may be gzipped: path.jsonl.gz)
  DIR            a Hugging Face `datasets` folder: `Dataset.save_to_disk` or
                 `DatasetDict.save_to_disk` output, or a folder of data files such as
                 a hub snapshot (train-*.parquet, data/test-*.jsonl, ...), every file
                 of every type above read, each file's split told by its name
  hf:ORG/NAME    a dataset in the local Hugging Face hub cache ($HF_HUB_CACHE, else
                 ~/.cache/huggingface/hub), read offline; hf:ORG/NAME/FOLDER reads
                 one folder of it (one config: hf:openai/gsm8k/main)
  tfds:NAME      a prepared TFDS dataset (never downloaded here)
  arithmetic     the embedded task with checkable answers (`arithmetic.py`)

Sources that have their own splits (TFDS, a DatasetDict, files named by split)
are read through `config.data.tfds_splits` (train/validation -> split name). A
source without a validation split (one file, a folder of unsplit files, a
DatasetDict or folder with only a train split) holds out every
`config.data.holdout_every`-th record for validation and trains on the others:
the two never share a record, and `Rows.holdout` says how they were cut.
`config.data.field_map` (record field <- source field, or '=literal'; "" for
none) renames fields the same way for every source; integer labels become
`config.data.label_names[label]`.

Every record is a (where, fields) pair, `where` being 'file:line' or 'source
record i', so every later error can name it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from research.data import arithmetic
from research.data.files import FILE_TYPES, Row, file_rows  # pylint: disable=unused-import
from research.data.folders import folder_splits, hub_snapshot
from research.errors import ConfigError, DataError

VALIDATION_SPLITS = ("validation", "valid", "dev", "test")


class Rows(list):
  """The (where, record) rows of one split. `holdout` says how validation was cut
  from a source that has no validation split (None: the source's own splits)."""

  def __init__(self, rows=(), holdout: str | None = None):
    super().__init__(rows)
    self.holdout = holdout


def rows(data_cfg, split: str, normalize: Callable[[dict, str], Any] | None = None, *,
         text_ok: bool = False, layout_of: Callable[[dict], str | None] | None = None) -> Rows:
  """(where, record) of `split` ('train' | 'validation'), field_map applied, then
  `normalize(record, where)`: over the whole set before a split is held out, so a
  bad record fails whichever split it falls in. With `layout_of(record) -> name`, a
  set whose records come in more than one layout is refused (a field missing from
  some records would otherwise change what they mean)."""
  spec = data_cfg.source
  holdout = None
  if spec.startswith("tfds:"):
    out = tfds_rows(spec[len("tfds:"):], _split_name(data_cfg, split),
                    data_cfg.get("tfds_data_dir") or None)
  else:
    out, holdout = _pick(_splits(spec, text_ok, data_cfg), data_cfg, split, spec)
  field_map = {k: v for k, v in dict(data_cfg.get("field_map") or {}).items() if v}
  labels = list(data_cfg.get("label_names") or ())
  if field_map:
    out = [(where, map_fields(record, field_map, labels, where)) for where, record in out]
  kinds = [(where, layout_of(record)) for where, record in out] if layout_of else []
  if normalize is not None:  # a bad record is named before a mix of layouts
    out = [(where, normalize(record, where)) for where, record in out]
  check_one_layout(kinds, spec)
  if holdout is not None:
    every = data_cfg.holdout_every
    total, out = len(out), holdout_split(out, split, every)
    if not out:
      raise DataError(f"{spec}: {total} record(s) leave no {split} records "
                      f"(config.data.holdout_every={every} holds out every n-th, starting "
                      f"with the first); give more records")
    holdout = (f"validation is every {every}th record of {holdout} (records 0, {every}, "
               f"{2 * every}, ...: {len(holdout_split(range(total), 'validation', every))} of "
               f"{total}; config.data.holdout_every), train the other "
               f"{len(holdout_split(range(total), 'train', every))}")
  elif not out:
    raise DataError(f"{spec}: the {split} split has no records")
  return Rows(out, holdout)


def holdout_split(records, split: str, every: int) -> list:
  """Every `every`-th record is validation, the rest train: disjoint."""
  records = list(records)
  if split == "validation":
    return records[::every]
  return [r for i, r in enumerate(records) if i % every]


def check_one_layout(kinds: list[tuple[str, str | None]], spec: str) -> None:
  """Refuses records of more than one layout, given (where, layout name) per record,
  naming each layout's first record."""
  seen: dict[str, list] = {}
  for where, name in kinds:
    if name is not None:
      seen.setdefault(name, [0, where])[0] += 1
  if len(seen) > 1:
    parts = "; ".join(f"{name}: {n} record(s), first {where}"
                      for name, (n, where) in sorted(seen.items(), key=lambda x: -x[1][0]))
    raise DataError(f"{spec}: records in {len(seen)} layouts ({parts}); one dataset holds one "
                    f"layout: fix the odd records (a missing field changes the layout), or "
                    f"split the file")


def _split_name(data_cfg, split: str) -> str:
  splits = data_cfg.get("tfds_splits") or {}
  return splits.get(split, split)


def _pick(splits: dict, data_cfg, split: str, spec: str) -> tuple[list[Row], str | None]:
  """The rows of `split` from a source's {split name: loader} (the key None: a source
  without splits), and what to hold out from (None: the source has the split)."""
  names = [n for n in splits if n is not None]
  if not names:
    return splits[None](), spec
  train = _split_name(data_cfg, "train")
  validation = _split_name(data_cfg, "validation")
  if validation not in splits:
    validation = next((s for s in VALIDATION_SPLITS if s in splits), None)
  if validation is None:  # only training data: hold out from it, disjointly
    base = train if train in splits else (names[0] if len(names) == 1 else None)
    if base is None:
      raise DataError(f"{spec}: no split {train!r} (config.data.tfds_splits.train) and no "
                      f"validation split; splits: {sorted(names)}")
    return splits[base](), f"{spec} split {base!r} (it has no validation split)"
  name = train if split == "train" else validation
  if name not in splits:
    raise DataError(f"{spec}: no split {name!r} (config.data.tfds_splits.{split}); splits: "
                    f"{sorted(names)}")
  return splits[name](), None


def _splits(spec: str, text_ok: bool, data_cfg=None) -> dict:
  """{split name or None: () -> rows} of a file, dataset folder, hub dataset or the
  embedded arithmetic task."""
  if spec.split(":")[0] == arithmetic.PREFIX:
    return {split: (lambda split=split: arithmetic.records(
        spec, data_cfg.corpus_seed, data_cfg.corpus_size, split)) for split in ("train",
                                                                                "validation")}
  if spec.startswith("hf:"):  # hf:ORG/NAME, or hf:ORG/NAME/SUBFOLDER (one config of several)
    org, name, *sub = spec[len("hf:"):].split("/")
    folder = os.path.join(hub_snapshot(f"{org}/{name}"), *sub)
    if not os.path.isdir(folder):
      parent = os.path.dirname(folder)
      there = sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))
                     and not d.startswith(".")) if os.path.isdir(parent) else []
      raise DataError(f"config.data.source={spec!r}: the snapshot has no folder "
                      f"{'/'.join(sub)!r}; its folders: {there}")
    return folder_splits(folder, spec, text_ok)
  if os.path.isdir(spec):
    return folder_splits(spec, spec, text_ok)
  if not os.path.exists(spec):
    raise FileNotFoundError(f"config.data.source={spec!r}: no such file or directory "
                            f"(expected 'embedded', 'tfds:NAME', 'hf:ORG/NAME', a dataset "
                            f"folder or a {'/'.join(FILE_TYPES)} file)")
  out = file_rows(spec, text_ok=text_ok)
  if isinstance(out, dict):  # a .json object of splits
    return {name: (lambda rows=rows: rows) for name, rows in out.items()}
  return {None: lambda: out}


def map_fields(record: dict, field_map: dict, labels: list, where: str) -> dict:
  """Fields renamed per `field_map`; unmapped fields pass through unchanged."""
  out = dict(record)
  for field, spec in field_map.items():
    if not isinstance(spec, str) or not spec:
      raise ConfigError(f"config.data.field_map.{field}={spec!r}: expected a source field "
                        f"name or '=literal'")
    if spec.startswith("="):
      out[field] = spec[1:]
      continue
    if spec not in record:
      raise DataError(f"{where}: no field {spec!r} (config.data.field_map.{field}); "
                      f"fields: {sorted(record)}")
    value = record[spec]
    if labels and isinstance(value, int) and not isinstance(value, bool):
      if not 0 <= value < len(labels):
        raise DataError(f"{where}: label {value} of field {spec!r} has no name in "
                        f"config.data.label_names={labels}")
      value = labels[value]
    out[field] = value
  return out


# TFDS, offline.

class TFDSSource:
  """Random access to a prepared TFDS split; bytes features decode to str (real
  TFDS returns bytes, mocks return str). Never downloads."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow import
    self.name = name
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f"config.data.source='tfds:{name}': no TFDS dataset of that name "
                      f"(tfds.list_builders() lists them)") from None
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(_tfds_problem(tfds, name, split, data_dir, e)) from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    record = self._source[i]
    return {k: (v.decode("utf-8", errors="replace") if isinstance(v, bytes) else
                v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v)
            for k, v in record.items()}


def _tfds_problem(tfds, name: str, split: str, data_dir: str | None, error: Exception) -> str:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")
  prepare = (f"tfds build {name} --data_dir={where} --file_format=array_record (where there "
             f"is internet, then copy the folder; config.data.tfds_data_dir points at it)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
    splits = sorted(builder.info.splits) if prepared else []
    file_format = str(builder.info.file_format) if prepared else ""
  except Exception:  # pylint: disable=broad-except
    prepared, splits, file_format = False, [], ""
  if not prepared:
    return f"tfds:{name} is not prepared in {where} and nothing is downloaded here; run: {prepare}"
  if split not in splits:
    return (f"tfds:{name} has no split {split!r} (config.data.tfds_splits); splits: {splits}")
  if "TFRECORD" in file_format.upper():
    return (f"tfds:{name} in {where} is prepared as TFRecord, which has no random access; "
            f"prepare it as ArrayRecord: {prepare}")
  return f"tfds:{name} ({where}) cannot be read: {str(error).splitlines()[0][:300]}"


def tfds_rows(name: str, split: str, data_dir: str | None) -> list[Row]:
  source = TFDSSource(name, split, data_dir)
  return [(f"tfds:{name} {split} record {i}", source[i]) for i in range(len(source))]
