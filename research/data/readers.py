"""A researcher's data as it comes: files, Hugging Face `datasets` folders and TFDS,
read offline into records that remember where they came from.

`config.data.source` may be

  path.jsonl     one JSON object per line
  path.json      a JSON list of objects (or an object of split name -> list)
  path.parquet   a table, one record per row
  DIR            a Hugging Face `datasets` folder: `Dataset.save_to_disk` or
                 `DatasetDict.save_to_disk` output, or a folder of data files such as
                 a hub snapshot (train-*.parquet, test-*.jsonl, ...)
  hf:ORG/NAME    a dataset in the local Hugging Face hub cache ($HF_HUB_CACHE, else
                 ~/.cache/huggingface/hub), read with `datasets` offline
  tfds:NAME      a prepared TFDS dataset (never downloaded here)

Sources that have their own splits (TFDS, a DatasetDict, files named by split)
are read through `config.data.tfds_splits` (train/validation -> split name); a
single file holds out every `config.data.holdout_every`-th record.
`config.data.field_map` (record field <- source field, or '=literal'; "" for
none) renames fields the same way for every source; integer labels become
`config.data.label_names[label]`.

Every record is a (where, fields) pair, `where` being 'file:line' or 'source
record i', so every later error can name it.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Iterator

from research.errors import ConfigError, DataError

Row = tuple[str, dict]
FILE_TYPES = (".jsonl", ".json", ".parquet")
_SPLIT_FILES = ("train", "validation", "valid", "dev", "test")


def rows(data_cfg, split: str, normalize: Callable[[dict, str], Any] | None = None, *,
         text_ok: bool = False) -> list[tuple[str, Any]]:
  """(where, record) of `split` ('train' | 'validation'), field_map applied, then
  `normalize(record, where)`: over the whole file before a split is held out, so a
  bad record fails whichever split it falls in."""
  spec = data_cfg.source
  single = False  # one file without splits: hold out every n-th record
  if spec.startswith("tfds:"):
    out = tfds_rows(spec[len("tfds:"):], _split_name(data_cfg, split),
                    data_cfg.get("tfds_data_dir") or None)
  elif spec.startswith("hf:"):
    out, single = _dataset_rows(hub_snapshot(spec[len("hf:"):]), data_cfg, split, spec)
  elif os.path.isdir(spec):
    out, single = _dataset_rows(spec, data_cfg, split, spec)
  elif not os.path.exists(spec):
    raise FileNotFoundError(f"config.data.source={spec!r}: no such file or directory "
                            f"(expected 'embedded', 'tfds:NAME', 'hf:ORG/NAME', a dataset "
                            f"folder or a {'/'.join(FILE_TYPES)} file)")
  else:
    out = file_rows(spec, text_ok=text_ok)
    single = not isinstance(out, dict)
    if not single:  # a .json object of splits
      name = _split_name(data_cfg, split)
      if name not in out:
        raise DataError(f"{spec}: no split {name!r} (config.data.tfds_splits.{split}); "
                        f"splits: {sorted(out)}")
      out = out[name]
  field_map = {k: v for k, v in dict(data_cfg.get("field_map") or {}).items() if v}
  labels = list(data_cfg.get("label_names") or ())
  if field_map:
    out = [(where, map_fields(record, field_map, labels, where)) for where, record in out]
  if normalize is not None:
    out = [(where, normalize(record, where)) for where, record in out]
  if single:
    total, out = len(out), holdout(out, split, data_cfg.holdout_every)
    if not out:
      raise DataError(f"{spec}: {total} record(s) leave no {split} records "
                      f"(config.data.holdout_every={data_cfg.holdout_every} holds out every "
                      f"n-th, starting with the first); give more records")
  elif not out:
    raise DataError(f"{spec}: the {split} split has no records")
  return out


def holdout(records: list, split: str, every: int) -> list:
  """Every `every`-th record is validation, the rest train (single-file sources)."""
  if split == "validation":
    return list(records[::every])
  return [r for i, r in enumerate(records) if i % every]


def _split_name(data_cfg, split: str) -> str:
  splits = data_cfg.get("tfds_splits") or {}
  return splits.get(split, split)


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


# Files.

def file_rows(path: str, *, text_ok: bool = False) -> list[Row] | dict[str, list[Row]]:
  """A whole file's records; an empty file or one without records is an error."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".jsonl":
    out = list(_jsonl(path))
  elif ext == ".json":
    out = _json(path)
  elif ext == ".parquet":
    out = _parquet(path)
  elif ext == ".txt" and text_ok:
    out = [(f"{path}:{n}", {"text": line}) for n, line in _lines(path) if line.strip()]
  else:
    kinds = ("txt",) * text_ok + tuple(t[1:] for t in FILE_TYPES)
    raise ConfigError(f"config.data.source={path!r}: unknown file type {ext or '(none)'!r}; "
                      f"expected .{', .'.join(kinds)}, or a dataset folder")
  if not out:
    raise DataError(f"{path}: no records (the file is empty)")
  return out


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text) with non-UTF-8 bytes named by line and byte offset."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, start=1):
      try:
        yield n, raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at byte offset "
                        f"{e.start} of the line); re-encode the file as UTF-8") from None


def _jsonl(path: str) -> Iterator[Row]:
  for n, line in _lines(path):
    if not line.strip():
      continue
    where = f"{path}:{n}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    yield where, _object(record, where)


def _object(record: Any, where: str) -> dict:
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected a JSON object of fields, got "
                    f"{type(record).__name__} {json.dumps(record)[:80]}")
  return record


def _json(path: str) -> list[Row] | dict[str, list[Row]]:
  text = "\n".join(line for _, line in _lines(path))
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
  if isinstance(data, list):
    return [(f"{path} record {i}", _object(r, f"{path} record {i}")) for i, r in enumerate(data)]
  if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
    return {split: [(f"{path} {split} record {i}", _object(r, f"{path} {split} record {i}"))
                    for i, r in enumerate(records)] for split, records in data.items()}
  raise DataError(f"{path}: expected a JSON list of records (or an object of split name -> "
                  f"list of records); for one record per line use .jsonl")


def _parquet(path: str) -> list[Row]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    table = pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-except  # arrow's errors name no file
    raise DataError(f"{path}: not a readable parquet file ({e})") from None
  return [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]


# Hugging Face datasets, offline.

def hub_snapshot(name: str) -> str:
  """The folder of `name`'s cached snapshot (refs/main, else the newest)."""
  cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
      os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
  repo = os.path.join(cache, "datasets--" + name.replace("/", "--"))
  ref = os.path.join(repo, "refs", "main")
  if os.path.exists(ref):
    with open(ref, encoding="utf-8") as f:
      snapshot = os.path.join(repo, "snapshots", f.read().strip())
    if os.path.isdir(snapshot):
      return snapshot
  snapshots = sorted(glob.glob(os.path.join(repo, "snapshots", "*")), key=os.path.getmtime)
  if not snapshots:
    raise DataError(f"hf:{name} is not in the Hugging Face hub cache ({repo} has no "
                    f"snapshot); nothing is downloaded here: fetch it where there is internet "
                    f"(huggingface-cli download --repo-type dataset {name}) and copy the cache, "
                    f"or set HF_HUB_CACHE")
  return snapshots[-1]


def _dataset_rows(folder: str, data_cfg, split: str, spec: str) -> tuple[list[Row], bool]:
  """A `save_to_disk` folder, or a folder of data files, through `datasets` offline;
  -> (rows, whether they are one unsplit set to hold out from)."""
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import datasets  # pylint: disable=g-import-not-at-top  # slow import; only when used
  datasets.disable_progress_bars()
  saved = any(os.path.exists(os.path.join(folder, f))
              for f in ("dataset_dict.json", "state.json", "dataset_info.json"))
  try:
    if saved:
      ds = datasets.load_from_disk(folder)
    else:
      ds = datasets.load_dataset(folder)
  except Exception as e:  # pylint: disable=broad-except  # many kinds, none names the source
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{spec}: not a readable Hugging Face dataset folder ({first[:300]})") from None
  if isinstance(ds, datasets.DatasetDict):
    name = _split_name(data_cfg, split)
    if name not in ds and split == "validation":
      name = next((s for s in ("validation", "valid", "dev", "test") if s in ds), name)
    if name in ds:
      return [(f"{spec} {name} record {i}", r) for i, r in enumerate(ds[name])], False
    if len(ds) != 1:
      raise DataError(f"{spec}: no split {name!r} (config.data.tfds_splits.{split}); splits: "
                      f"{sorted(ds)}")
    ds = next(iter(ds.values()))  # one split only: hold out from it
  return [(f"{spec} record {i}", r) for i, r in enumerate(ds)], True


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
