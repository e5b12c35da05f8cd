"""Device mesh and logical-axis rules: the whole parallelism layout as config.

Modules name their axes (`embed`, `mlp`, `act_batch`, ...); `config.sharding.rules`
maps each name to mesh axes (`data`, `fsdp`, `tensor`). Data parallelism is
`mesh.data`, ZeRO-3 style fully sharded data parallelism is `mesh.fsdp`
(parameters and optimizer state split along `embed`, gathered per layer by
XLA), Megatron-style tensor parallelism is `mesh.tensor` (heads, mlp, vocab).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from research.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes first, then activations. An axis name missing here is an error
# (see `check_rules`), so a new module cannot silently end up replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    ("lora", None),          # a LoRA adapter's rank
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_kv", None),
    ("act_vocab", "tensor"),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh` sizes; one axis may be -1 and takes the rest."""
  sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices "
                        f"are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} "
                      f"devices but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh with Auto axes (sharding propagated by GSPMD).

  `mesh_cfg.num_devices` (-1: all) takes the first N devices when `devices` is None.
  """
  if devices is None:
    devices = jax.devices()
    n = int(mesh_cfg.get("num_devices", -1))
    if n > len(devices):
      raise ConfigError(f"config.mesh.num_devices={n} but only {len(devices)} devices exist")
    devices = devices[:n] if n > 0 else devices
  devices = list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  if len(devices) == len(jax.devices()):
    # Topology-aware device order on TPU/GPU.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                           axis_types=(AxisType.Auto,) * 3)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
  rules = config.sharding.rules
  return tuple((str(name), _as_mesh_axes(axes)) for name, axes in rules)


def _as_mesh_axes(axes):
  if axes is None or isinstance(axes, str):
    return axes
  return tuple(axes)


def check_rules(logical_specs, rules) -> None:
  """Every logical axis name used by a parameter must have a rule."""
  known = {name for name, _ in rules}
  missing: dict[str, str] = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(
      logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]:
    for name in spec:
      if isinstance(name, str) and name not in known:
        missing.setdefault(name, jax.tree_util.keystr(path))
  if missing:
    detail = ", ".join(f"{n!r} (first used by {p})" for n, p in missing.items())
    raise ConfigError(f"config.sharding.rules has no rule for logical axes {detail}; "
                      f"known axes: {sorted(known)}")


def logical_shardings(abstract_boxed_tree, mesh, rules):
  """NamedShardings for a tree whose leaves carry logical partitioning metadata.

  A dimension its mesh axes do not divide is replicated instead (an imported
  vocabulary of 50257 or 601 rows on tensor=2): XLA can only tile evenly.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  check_rules(specs, rules)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = jax.tree.map(lambda x: getattr(x, "value", x), abstract_boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return jax.tree.map(lambda sharding, leaf: _divisible(sharding, getattr(leaf, "shape", ())),
                      shardings, shapes)


def _divisible(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  spec = list(sharding.spec)
  for i, axes in enumerate(spec[:len(shape)]):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if shape[i] % math.prod(sharding.mesh.shape[a] for a in names):
      spec[i] = None
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def data_sharding(mesh, rules, ndim: int) -> NamedSharding:
  """Sharding of a batch array: leading axis `batch`, the rest replicated."""
  names = ("batch",) + (None,) * (ndim - 1)
  return NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules))


def batch_axis_size(mesh, rules) -> int:
  """How many ways the batch axis is split; global batch sizes must divide by it."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  if spec is None:
    return 1
  axes = (spec,) if isinstance(spec, str) else spec
  return math.prod(mesh.shape[a] for a in axes)


def mesh_and_rules(config):
  """The mesh (`config.mesh`) and logical rules (`config.sharding.rules`) of a run,
  after checking the global batch divides over the ways it is split."""
  mesh = make_mesh(config.mesh)
  rules = rules_from_config(config)
  ways = batch_axis_size(mesh, rules)
  if config.data.batch_size % ways:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} must be divisible by "
                      f"the {ways} ways the batch is sharded (config.mesh {dict(mesh.shape)})")
  return mesh, rules


@contextlib.contextmanager
def activate(mesh, rules):
  """Mesh + rules for tracing modules that call `nn.with_logical_constraint`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def shard_batch(batch: dict, mesh, rules) -> dict:
  """Host numpy batch (this process's rows; nested dicts too) -> global sharded arrays."""
  def put(x):
    x = np.asarray(x)
    sharding = data_sharding(mesh, rules, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)


def local_rows(tree, mesh, rules):
  """The inverse of `shard_batch`: this process's rows of batch-sharded global
  arrays, as numpy (all of them in one process). Outputs of a computation on a
  sharded batch must come back this way: another process's rows cannot be read."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  def get(x):
    spec = data_sharding(mesh, rules, x.ndim).spec
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))
  return jax.tree.map(get, tree)


def process_block(rows: int) -> slice:
  """This process's block of `rows` host rows that every process holds alike."""
  if rows % jax.process_count():
    raise ConfigError(f"{rows} rows do not split evenly over {jax.process_count()} processes")
  per = rows // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def gather_rows(tree):
  """Every process's rows (numpy, a `process_block` each) concatenated in process
  order, on every process: the inverse of taking `process_block`."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      tree)


def all_processes(flag: bool) -> bool:
  """True where `flag` holds on every process (one tiny collective when there are several)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def pad_rows(arrays: dict, mesh, rules, fill: dict | None = None) -> tuple[dict, int]:
  """Pads the leading axis to a multiple of the mesh's batch split.

  Returns (padded arrays, original row count); `fill[key]` is the value of the
  filler rows (default 0). Callers slice results back to the original rows.
  """
  fill = fill or {}
  n = len(next(iter(arrays.values())))
  ways = batch_axis_size(mesh, rules)
  rows = -(-n // ways) * ways
  out = {}
  for key, x in arrays.items():
    x = np.asarray(x)
    padded = np.full((rows, *x.shape[1:]), fill.get(key, 0), x.dtype)
    padded[:n] = x
    out[key] = padded
  return out, n


def per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds for a tree of ShapeDtypeStructs under `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard_shape = sharding.shard_shape(leaf.shape)
    total += math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
  return total
