"""Reading and writing Hugging Face safetensors checkpoints, tensor by tensor.

Import never holds the model on the host: the checkpoint's headers are checked
first (every shape, no data read), then each device's shard of each parameter
is read as one block of its safetensors tensor (memory-mapped by the
`safetensors` package, numpy framework, bfloat16 through ml_dtypes), converted,
and placed with `jax.make_array_from_callback`, which asks only for the shards
of this process's devices: on several hosts each reads only its own blocks.
Export writes shards of at most `max_shard_bytes`, so the host holds one shard
at a time.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from research import distributed
from research.models.hf.families import IGNORED_SUFFIXES, CheckpointError, Tensor, tensor_map

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_config(directory: str) -> dict:
  if not os.path.isdir(directory):
    raise CheckpointError(f"--from_hf={directory}: not a directory")
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{directory} is not a Hugging Face checkpoint: no config.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


class SafetensorsDir:
  """The tensors of a checkpoint directory: one `model.safetensors` or an index of shards."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map'")
      for shard in sorted(set(weight_map.values())):
        if not os.path.exists(os.path.join(directory, shard)):
          raise CheckpointError(f"{index} names shard {shard}, which is missing from "
                                f"{directory}")
      self.files = dict(weight_map)
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
      path = os.path.join(directory, SINGLE_FILE)
      try:
        with safe_open(path, framework="numpy") as f:
          self.files = {name: SINGLE_FILE for name in f.keys()}
      except Exception as e:  # a truncated or corrupt file: its header does not parse
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or "
                              f"corrupt?): {e}") from e
    else:
      found = sorted(n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth")))
      hint = f" (found {found}: torch pickles are not read; save with safetensors)" if found else ""
      raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
    self._handles: dict[str, Any] = {}
    # Consecutive devices ask for the same tensor; keep the last few read.
    self.read = functools.lru_cache(maxsize=2)(self._read)

  def _open(self, file: str):
    if file not in self._handles:
      self._handles[file] = safe_open(os.path.join(self.directory, file), framework="numpy")
    return self._handles[file]

  def resolve(self, name: str, prefix: str) -> str | None:
    """`name`, or `name` without the base-model prefix (checkpoints saved from the bare
    model, e.g. GPT-2's `h.0...` for `transformer.h.0...`)."""
    if name in self.files:
      return name
    if prefix and name.startswith(prefix) and name[len(prefix):] in self.files:
      return name[len(prefix):]
    return None

  def _read(self, name: str) -> np.ndarray:
    file = self.files[name]
    try:
      return self._open(file).get_tensor(name)
    except Exception as e:  # a truncated or corrupt shard
      raise CheckpointError(f"{os.path.join(self.directory, file)}: cannot read tensor "
                            f"{name!r}: {e}") from e

  def shape(self, name: str) -> tuple[int, ...]:
    """The tensor's shape, from the file's header."""
    return tuple(self._open(self.files[name]).get_slice(name).get_shape())

  def read_block(self, name: str, region: tuple[slice, ...]) -> np.ndarray:
    """Only `region` of the tensor (one block of the memory-mapped file)."""
    return self._open(self.files[name]).get_slice(name)[region]


def _block(index: tuple[slice, ...], dims: tuple[int, ...]) -> tuple[int, int] | None:
  """The row-major flat range [start, stop) that `index` selects over `dims`, when it
  is one contiguous range (a block along one axis, the axes after it whole), else None."""
  ranges = []
  for s, d in zip(index, dims):
    start, stop, step = s.indices(d)
    if step != 1:
      return None
    ranges.append((start, stop))
  partial = [k for k, (r, d) in enumerate(zip(ranges, dims)) if r != (0, d)]
  if not partial:
    return 0, math.prod(dims)
  k = partial[-1]
  if any(b - a != 1 for a, b in ranges[:k]):
    return None
  start = sum(a * math.prod(dims[i + 1:]) for i, (a, _) in enumerate(ranges[:k + 1]))
  return start, start + (ranges[k][1] - ranges[k][0]) * math.prod(dims[k + 1:])


def read_shard(source: SafetensorsDir, name: str, spec: Tensor, shape: tuple[int, ...],
               index: tuple[slice, ...]) -> np.ndarray | None:
  """`to_ours(spec, whole tensor, shape)[index]`, reading only the block of the HF
  tensor it comes from; None when that is not one block (the caller reads it whole)."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  want = tuple(len(range(*s.indices(d))) for s, d in zip(index, shape))
  if spec.layout == "table":  # stored as ours
    return source.read_block(name, index).reshape(want)
  n_in = spec.in_dims if spec.layout in ("linear", "conv1d") else 0
  rows, cols = _block(index[:n_in], shape[:n_in]), _block(index[n_in:], shape[n_in:])
  if rows is None or cols is None:
    return None
  part_size = math.prod(shape[n_in:])
  sizes = spec.sizes or (part_size,) * spec.parts
  offset = sum(sizes[:spec.part])  # where this part starts in a fused tensor's output axis
  out = slice(offset + cols[0], offset + cols[1])
  inp = slice(*rows)
  if spec.layout == "linear":  # [out, in]
    arr = source.read_block(name, (out, inp)).T
  elif spec.layout == "conv1d":  # [in, out]
    arr = source.read_block(name, (inp, out))
  else:
    arr = source.read_block(name, (out,))
  return arr.reshape(want)


def _fused_size(spec: Tensor, part_size: int) -> int:
  """The fused tensor's output size, from one part's."""
  return sum(spec.sizes) if spec.sizes else part_size * spec.parts


def _output_axis(spec: Tensor) -> int:
  return 0 if spec.layout == "linear" else -1  # torch Linear is [out, in]


def hf_shape(spec: Tensor, ours: tuple[int, ...]) -> tuple[int, ...]:
  n_in, n_out = math.prod(ours[:spec.in_dims]), math.prod(ours[spec.in_dims:])
  if spec.layout == "linear":
    return (_fused_size(spec, n_out), n_in)
  if spec.layout == "conv1d":
    return (n_in, _fused_size(spec, n_out))
  if spec.layout == "table":
    return ours
  return (_fused_size(spec, math.prod(ours)),)


def to_ours(spec: Tensor, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if spec.parts > 1:
    sizes = spec.sizes or (arr.shape[_output_axis(spec)] // spec.parts,) * spec.parts
    start = sum(sizes[:spec.part])
    arr = np.take(arr, np.arange(start, start + sizes[spec.part]), axis=_output_axis(spec))
  if spec.layout == "linear":
    arr = arr.T
  return arr.reshape(shape)


def to_hf(spec: Tensor, arr: np.ndarray) -> np.ndarray:
  """One part (before fusing) in the HF layout."""
  n_in = math.prod(arr.shape[:spec.in_dims])
  if spec.layout == "linear":
    return np.ascontiguousarray(arr.reshape(n_in, -1).T)
  if spec.layout == "conv1d":
    return arr.reshape(n_in, -1)
  return arr if spec.layout == "table" else arr.reshape(-1)


def _path(keys) -> tuple[str, ...]:
  return tuple(k.key for k in keys)


def load_params(directory: str, cfg, abstract_params, shardings, *,
                mapping: dict[tuple[str, ...], Tensor] | None = None):
  """Our parameter tree, read from `directory` into `shardings`.

  `abstract_params` (ShapeDtypeStructs) gives the tree and dtypes; `mapping`
  (default: `tensor_map(cfg)`) says which tensor each path comes from. Every
  tensor in the checkpoint must be used: an unknown one means the architecture
  is not what config.json says. A missing `score.bias` (transformers' reward
  heads have none) reads as zero.
  """
  source = SafetensorsDir(directory)
  mapping = mapping or tensor_map(cfg)
  base_prefix = mapping[next(p for p in mapping if p[-1] == "embedding")].name.split(".")[0] + "."
  used: set[str] = set()

  def check(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[Tensor, str | None]:
    """The tensor `path` comes from, its shape checked in the file's header."""
    spec = mapping.get(path)
    if spec is None:
      raise CheckpointError(f"no Hugging Face tensor for parameter {'/'.join(path)}")
    name = source.resolve(spec.name, base_prefix)
    if name is None and spec.name == "score.bias":
      return spec, None
    if name is None:
      raise CheckpointError(f"{directory}: tensor {spec.name!r} is missing (needed for "
                            f"{'/'.join(path)})")
    used.add(name)
    try:
      got = source.shape(name)
    except Exception as e:  # a truncated or corrupt shard
      raise CheckpointError(f"{os.path.join(directory, source.files[name])}: cannot read "
                            f"tensor {name!r}: {e}") from e
    want = hf_shape(spec, shape)
    if got != want:
      raise CheckpointError(f"{os.path.join(directory, source.files[name])}: tensor {name!r} "
                            f"has shape {got}, expected {want} from config.json")
    return spec, name

  @functools.lru_cache(maxsize=8)  # devices that replicate a block ask for it in turn
  def shard(path: tuple[str, ...], shape: tuple[int, ...], dtype,
            index: tuple[tuple[int | None, ...], ...]) -> np.ndarray:
    index = tuple(slice(*s) for s in index)
    spec, name = check(path, shape)
    if name is None:
      return np.zeros(shape, dtype)[index]
    try:
      arr = read_shard(source, name, spec, shape, index)
    except Exception as e:  # a truncated or corrupt shard
      raise CheckpointError(f"{os.path.join(directory, source.files[name])}: cannot read "
                            f"tensor {name!r}: {e}") from e
    if arr is None:
      arr = to_ours(spec, source.read(name), shape)[index]
    return arr.astype(dtype)

  def key(index) -> tuple[tuple[int | None, ...], ...]:
    return tuple((s.start, s.stop, s.step) for s in index)

  def place(keys, leaf, sharding):
    path = _path(keys)
    if path[0] == "layers" or (len(path) > 1 and path[1] == "layers"):
      at = path.index("layers")
      head, rest = path[:at], path[at + 1:]
      layer = lambda i: (*head, f"layer_{i}", *rest)
      for i in range(leaf.shape[0]):
        check(layer(i), leaf.shape[1:])

      def callback(index):
        layers = range(*index[0].indices(leaf.shape[0]))
        return np.stack([shard(layer(i), leaf.shape[1:], leaf.dtype, key(index[1:]))
                         for i in layers])
    else:
      check(path, leaf.shape)
      callback = lambda index: shard(path, leaf.shape, leaf.dtype, key(index))
    return jax.make_array_from_callback(leaf.shape, sharding, callback)

  params = jax.tree_util.tree_map_with_path(place, abstract_params, shardings)
  ignorable = set()
  if cfg.tie_embeddings:
    ignorable.add("lm_head.weight")
  unused = sorted(n for n in source.files if n not in used and n not in ignorable
                  and not n.endswith(IGNORED_SUFFIXES))
  if unused:
    raise CheckpointError(f"{directory}: {len(unused)} tensors this {cfg.family} decoder does "
                          f"not use, e.g. {unused[:3]}: is config.json's architecture right?")
  return params


def hf_tensors(params, mapping: dict[tuple[str, ...], Tensor]):
  """Yields (HF name, numpy array) from our (unscanned) params, fused tensors joined;
  with several processes, each tensor is gathered on every process (all must iterate)."""
  leaves = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  by_name: dict[str, list[tuple[Tensor, tuple[str, ...]]]] = {}
  for path, spec in mapping.items():
    if path in leaves:
      by_name.setdefault(spec.name, []).append((spec, path))
  for name, entries in by_name.items():
    entries.sort(key=lambda e: e[0].part)
    parts = [to_hf(spec, distributed.host_array(leaves[path])) for spec, path in entries]
    yield name, (parts[0] if len(parts) == 1
                 else np.concatenate(parts, axis=_output_axis(entries[0][0])))


def save_tensors(directory: str, tensors: Callable, max_shard_bytes: int = 2 << 30) -> list[str]:
  """Writes `model.safetensors`, or shards plus an index when larger than one shard."""
  os.makedirs(directory, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  files: list[str] = []
  sizes = [0]
  weight_map: dict[str, str] = {}
  total = 0

  def flush(final: bool):
    n = len(files) + 1
    name = f"model-{n:05d}.safetensors"
    save_file(shards[-1], os.path.join(directory, name), metadata={"format": "pt"})
    files.append(name)
    for key in shards[-1]:
      weight_map[key] = name
    if not final:
      shards.append({})
      sizes.append(0)

  for name, arr in tensors():
    if sizes[-1] and sizes[-1] + arr.nbytes > max_shard_bytes:
      flush(final=False)
    shards[-1][name] = arr
    sizes[-1] += arr.nbytes
    total += arr.nbytes
  flush(final=True)
  if len(files) == 1:  # one shard: the plain single-file layout
    os.replace(os.path.join(directory, files[0]), os.path.join(directory, SINGLE_FILE))
    return [SINGLE_FILE]
  renamed = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
  for old, new in renamed.items():
    os.replace(os.path.join(directory, old), os.path.join(directory, new))
  with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as f:
    json.dump({"metadata": {"total_size": total},
               "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())}}, f, indent=2)
  return sorted(renamed.values())
