"""orbax-checkpoint: the TrainState plus a JSON side-car (data position, config).

Saves are atomic (orbax writes to a temporary directory and renames it), the
last `max_to_keep` are kept, and restoring takes the *current* mesh's
shardings, so a run saved on one layout resumes on another.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from etils import epath
import flax.traverse_util
import jax
import orbax.checkpoint as ocp

from research.errors import DataError
from research.models import lora, quantize


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class Checkpointer:
  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Saves and waits for the write to finish, so the step is on disk on return."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore_newest_good(self, abstract_state, shardings):
    """(step, state, meta) of the newest checkpoint that restores, or None if there
    is none. Newer ones that fail (a crash or disk fault mid-write, a truncated
    file) are moved aside to `<checkpoints>_corrupt/<step>`, never deleted, with a
    warning naming the step and the error. If none restores, the newest's error is
    raised as a DataError and nothing is moved (the fault is not in one checkpoint:
    the config builds another state, or the whole directory is damaged)."""
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(abstract_state, shardings, step)
      except Exception as e:  # pylint: disable=broad-except
        failed.append((step, e))
        continue
      for bad, error in failed:
        aside = os.path.join(f"{self.directory}_corrupt", str(bad))
        logging.warning("checkpoint step %d in %s does not restore (%s: %s); moved it to %s "
                        "and resumed from step %d", bad, self.directory, type(error).__name__,
                        str(error).splitlines()[0][:200] if str(error) else "", aside, step)
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          os.replace(os.path.join(self.directory, str(bad)), aside)
      if failed:  # the manager caches its step list
        self._manager.close()
        self._manager = self._open()
      return step, state, meta
    if failed:
      step, error = failed[0]
      raise DataError(
          f"no checkpoint in {self.directory} restores into the state this config builds "
          f"(newest, step {step}: {_first_line(error)}); nothing was moved or deleted. If the "
          f"config changed the model, the critic or the optimizer, rerun with the run's own "
          f"config or use a new --workdir; if the files are damaged, move {self.directory} "
          f"aside to start over")
    return None

  def restore(self, abstract_state, shardings, step: int | None = None):
    """(state placed on `shardings`, meta dict) of `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(abstract_state, shardings)),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(directory: str, abstract_params, shardings, step: int | None = None):
  """Only the `params` of a TrainState checkpoint (e.g. to start SFT from CLM).

  A LoRA run's checkpoint (its meta's `lora_alpha`) read into parameters without
  adapters comes back merged, W + (alpha / r) A B, and an int8 base (QLoRA) read
  into float kernels comes back dequantized: a full fine-tune or a new LoRA run
  started from such a run, an export, an evaluation."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory} (config.init_from)")
  try:
    target, alpha = _restore_target(manager, step, abstract_params, shardings)
    abstract = {"params": target}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                     partial_restore=True)))
  except Exception as e:  # pylint: disable=broad-except  # orbax's errors name no run
    raise DataError(f"cannot restore the parameters of {directory} step {step} "
                    f"({_first_line(e)}): the checkpoint is damaged or holds another "
                    f"model") from None
  finally:
    manager.close()
  params = restored.state["params"]
  want = flax.traverse_util.flatten_dict(abstract_params)
  if quantize.is_quantized(params) and not quantize.is_quantized(abstract_params):
    dtypes = {k[:-1]: v.dtype for k, v in want.items() if k[-1] == "kernel"}
    params = quantize.dequantize(params, dtypes)
  return lora.merge(params, alpha) if alpha is not None else params


def _restore_target(manager, step: int, abstract_params, shardings):
  """(the abstract tree to restore, the LoRA alpha to merge with or None): what
  `abstract_params` asks for, where the checkpoint holds it as LoRA adapters beside
  its kernel (read to be merged) or int8 codes and scales (read to be dequantized)."""
  # The saved tree's shapes, from its metadata file (a manager opened for reading
  # has no handler registered to answer item_metadata).
  saved = ocp.PyTreeCheckpointHandler().metadata(
      epath.Path(os.path.join(manager.directory, str(step), "state")))
  saved = getattr(saved, "tree", saved)
  target = flax.traverse_util.flatten_dict(_abstract(abstract_params, shardings))
  if "params" not in saved:
    return flax.traverse_util.unflatten_dict(target), None
  saved = flax.traverse_util.flatten_dict(saved["params"])
  mesh = jax.tree.leaves(shardings)[0].mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  like = lambda leaf, sharding: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype,  # noqa: E731
                                                     sharding=sharding)
  alpha = None
  for path, leaf in saved.items():
    kernel = (*path[:-1], "kernel")
    if path in target or kernel not in target:
      continue
    if lora.is_adapter(path):
      target[path] = like(leaf, replicated)
      alpha = alpha or _lora_alpha(manager, step)
    elif path[-1] in (quantize.CODES, quantize.SCALE) and kernel not in saved:
      codes = path[-1] == quantize.CODES
      target[path] = like(leaf, target[kernel].sharding if codes else replicated)
  for path in [k for k in target if k[-1] == "kernel" and (*k[:-1], quantize.CODES) in target]:
    del target[path]
  return flax.traverse_util.unflatten_dict(target), alpha


def _lora_alpha(manager, step: int) -> float:
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  if "lora_alpha" not in (meta or {}):
    raise ValueError("it holds LoRA adapters but its meta no lora_alpha to merge them with")
  return float(meta["lora_alpha"])


def latest_step(directory: str) -> int | None:
  """The newest step saved in `directory`, without opening a manager for writing."""
  if not os.path.isdir(directory):
    return None
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  return max(steps) if steps else None
