"""Data files read whole into (where, record) rows: JSON lines, JSON, parquet, CSV
and text (one document per line), the text ones optionally gzipped. `where` is
'file:line' (or 'file row i' / 'file record i'), so every error names the place."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from typing import Any, Iterator

from research.errors import ConfigError, DataError

Row = tuple[str, dict]
FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSED = (".jsonl.gz", ".json.gz", ".csv.gz", ".txt.gz")


def data_type(path: str) -> str | None:
  """The type of a data file by its name ('.jsonl', ..., '.txt'), .gz removed; None if
  it is not one of them."""
  name = path.lower()
  if name.endswith(".gz"):
    name = name[:-3]
  ext = os.path.splitext(name)[1]
  return ext if ext in FILE_TYPES + (".txt",) else None


def file_rows(path: str, *, text_ok: bool = False) -> list[Row] | dict[str, list[Row]]:
  """A whole file's records; an empty file or one without records is an error."""
  ext = data_type(path)
  if ext == ".jsonl":
    out = list(_jsonl(path))
  elif ext == ".json":
    out = _json(path)
  elif ext == ".parquet":
    out = _parquet(path)
  elif ext == ".csv":
    out = _csv(path)
  elif ext == ".txt" and text_ok:
    out = [(f"{path}:{n}", {"text": line}) for n, line in _lines(path) if line.strip()]
  else:
    kinds = ("txt",) * text_ok + tuple(t[1:] for t in FILE_TYPES)
    shown = os.path.splitext(path)[1]
    raise ConfigError(f"config.data.source={path!r}: unknown file type {shown or '(none)'!r}; "
                      f"expected .{', .'.join(kinds)} (.gz too, but for parquet), or a "
                      f"dataset folder")
  if not out:
    raise DataError(f"{path}: no records (the file is empty)")
  return out


def _open(path: str):
  return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text) with non-UTF-8 bytes named by line and byte offset; a
  UTF-8 byte-order mark at the start of the file is dropped."""
  try:
    with _open(path) as f:
      for n, raw in enumerate(f, start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
          raw = raw[3:]
        try:
          yield n, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
          raise DataError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at byte offset "
                          f"{e.start} of the line); re-encode the file as UTF-8") from None
  except (gzip.BadGzipFile, EOFError) as e:
    raise DataError(f"{path}: not a readable gzip file ({e})") from None


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
  if not text.strip():
    return []
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    if e.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON lines named .json
      return list(_jsonl(path))
    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
  if isinstance(data, list):
    return [(f"{path} record {i}", _object(r, f"{path} record {i}")) for i, r in enumerate(data)]
  if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
    return {split: [(f"{path} {split} record {i}", _object(r, f"{path} {split} record {i}"))
                    for i, r in enumerate(records)] for split, records in data.items()}
  raise DataError(f"{path}: expected a JSON list of records (or an object of split name -> "
                  f"list of records); for one record per line use .jsonl")


def _csv(path: str) -> list[Row]:
  text = io.StringIO("\n".join(line for _, line in _lines(path)))
  reader = csv.DictReader(text)
  out = []
  try:
    for record in reader:
      where = f"{path}:{reader.line_num}"
      if None in record:
        raise DataError(f"{where}: more values than the {len(reader.fieldnames)} columns of "
                        f"the header")
      out.append((where, record))
  except csv.Error as e:
    raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
  return out


def _parquet(path: str) -> list[Row]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    table = pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-except  # arrow's errors name no file
    raise DataError(f"{path}: not a readable parquet file ({e})") from None
  return [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]


