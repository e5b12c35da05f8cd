"""Dataset folders: `save_to_disk` output, or folders of data files such as a
Hugging Face hub snapshot, as {split: loader}; every file of every readable type is
read (`files`), each file's split told by its name. Offline."""

from __future__ import annotations

import glob
import os
import re

from research.data import files as files_lib
from research.errors import DataError

# How files name their split (Hugging Face's conventions): a word of the path.
SPLIT_WORDS = {"train": ("train", "training"),
               "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
# Files in a dataset folder that are not data.
_IGNORED = (".md", ".gitattributes", ".gitignore", ".py", ".lock", ".yaml", ".yml")


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


def split_of(relative_path: str) -> str | None:
  """The split a data file's path names (Hugging Face's conventions: 'train-0000.parquet',
  'data/test.jsonl', 'validation/part-1.json'), or None. The file's own name decides
  before its folders'."""
  parts = relative_path.replace(os.sep, "/").lower().split("/")
  for part in reversed(parts):
    words = set(re.split(r"[^a-z]+", os.path.splitext(part)[0] if part == parts[-1] else part))
    found = [split for split, names in SPLIT_WORDS.items() if words & set(names)]
    if len(found) == 1:
      return found[0]
  return None


def data_files(folder: str, spec: str, text_ok: bool) -> list[str]:
  """Every data file under `folder` (hidden files and folders skipped), relative
  paths, sorted; any other file that looks like data is an error, not skipped."""
  found, unread = [], []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if name.startswith(".") or name.lower().endswith(_IGNORED) or name.lower() == "license":
        continue
      rel = os.path.relpath(os.path.join(root, name), folder)
      kind = files_lib.data_type(name)
      (found if kind and (kind != ".txt" or text_ok) else unread).append(rel)
  if unread:
    shown = ", ".join(unread[:5]) + (", ..." if len(unread) > 5 else "")
    raise DataError(f"{spec}: {len(unread)} file(s) of a type not read here ({shown}); data "
                    f"files are "
                    f"{', '.join(('.txt',) * text_ok + files_lib.FILE_TYPES)} (or gzipped: "
                    f"{', '.join(files_lib.COMPRESSED)}): convert or remove them")
  if not found:
    raise DataError(f"{spec}: no data files in the folder ({', '.join(files_lib.FILE_TYPES)})")
  return found


def folder_splits(folder: str, spec: str, text_ok: bool) -> dict:
  """{split: loader} of a `save_to_disk` folder, or of a folder of data files
  grouped by the split their names give (None: no file names one)."""
  if any(os.path.exists(os.path.join(folder, f))
         for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
    return _saved_splits(folder, spec)
  files = data_files(folder, spec, text_ok)
  by_split: dict[str | None, list[str]] = {}
  for rel in files:
    by_split.setdefault(split_of(rel), []).append(rel)
  if None in by_split and len(by_split) > 1:
    named = ", ".join(by_split[next(s for s in by_split if s)][:2])
    raise DataError(f"{spec}: the names of {', '.join(by_split[None][:3])} give no split, "
                    f"while others do ({named}, ...); name every file by its split "
                    f"(train-*, validation-*, test-*), move it out, or read one subfolder "
                    f"(hf:ORG/NAME/FOLDER, or the folder's path)")

  def load(paths):
    out = []
    for rel in paths:
      rows_ = files_lib.file_rows(os.path.join(folder, rel), text_ok=text_ok)
      if isinstance(rows_, dict):
        raise DataError(f"{os.path.join(folder, rel)}: a .json object of splits inside a "
                        f"dataset folder; give each split its own file")
      out += rows_
    return out
  return {split: (lambda paths=paths: load(paths)) for split, paths in by_split.items()}


def _saved_splits(folder: str, spec: str) -> dict:
  """A `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder through `datasets`."""
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import datasets  # pylint: disable=g-import-not-at-top  # slow import; only when used
  datasets.disable_progress_bars()
  try:
    ds = datasets.load_from_disk(folder)
  except Exception as e:  # pylint: disable=broad-except  # many kinds, none names the source
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{spec}: not a readable Hugging Face dataset folder ({first[:300]})") from None
  if isinstance(ds, datasets.DatasetDict):
    return {name: (lambda name=name: [(f"{spec} {name} record {i}", r)
                                      for i, r in enumerate(ds[name])]) for name in ds}
  return {None: lambda: [(f"{spec} record {i}", r) for i, r in enumerate(ds)]}


