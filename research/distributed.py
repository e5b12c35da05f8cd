"""Starting JAX's multi-process runtime: one process per host (or, in tests, per
group of simulated CPU devices), one global mesh over all their devices."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import time

from absl import flags
import jax
import numpy as np

from research.errors import ConfigError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
  """`jax.distributed.initialize`: auto-detected (TPU, SLURM, MPI) without
  arguments, else the coordinator's host:port, the process count and this id.
  On CPU the processes' collectives go through gloo."""
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ConfigError("give all of --coordinator, --num_processes and --process_id, or none "
                      "(auto-detection on TPU, SLURM, MPI)")
  if jax.config.jax_platforms in (None, "", "cpu") or jax.config.jax_platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if coordinator is not None and process_id != 0:
    _wait_for(coordinator, timeout_s)  # JAX aborts the process on a timeout
  if coordinator is not None:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id, initialization_timeout=timeout_s)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  # unreachable coordinator and the like
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--distributed: could not join the coordinator "
                      f"{coordinator or '(auto-detected)'}: {first[:300]}") from None


@dataclasses.dataclass
class Flags:
  """A CLI's multi-process flags (research.main, research.convert)."""
  distributed: flags.FlagHolder
  coordinator: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder
  timeout_s: flags.FlagHolder

  def initialize(self) -> None:
    """Joins the other processes where --distributed is given."""
    if self.distributed.value:
      initialize(self.coordinator.value, self.num_processes.value, self.process_id.value,
                 self.timeout_s.value)


def define_flags() -> Flags:
  return Flags(
      flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host "
                        "TPU/GPU; auto-detected, or the flags below)"),
      flags.DEFINE_string("coordinator", None, "with --distributed: the coordinator's "
                          "host:port (process 0's), where it is not auto-detected"),
      flags.DEFINE_integer("num_processes", None, "with --coordinator: processes"),
      flags.DEFINE_integer("process_id", None, "with --coordinator: this process's id"),
      flags.DEFINE_integer("coordinator_timeout_s", 300, "with --distributed: how long to "
                           "wait for every process to join"))


def _wait_for(address: str, timeout_s: int) -> None:
  """Returns once something listens at host:port, or fails in one line after `timeout_s`."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(f"--coordinator={address!r}: expected host:port")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=2).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ConfigError(f"--distributed: could not join the coordinator {address}: nothing "
                          f"answered within {timeout_s} s ({e.strerror or e}); is process 0 "
                          f"running there?") from None
      time.sleep(0.5)


def check_same_config(config, workdir: str) -> None:
  """Refuses, on every process, a run whose processes were given different configs
  or workdirs (a flag missing on one host): they would run different programs and
  hang in the first collective that differs."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  text = config.to_json(sort_keys=True) + "\n" + workdir
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int64)[0]
  digests = np.asarray(multihost_utils.process_allgather(np.int64(digest))).reshape(-1)
  differ = [i for i, d in enumerate(digests) if d != digests[0]]
  if differ:
    raise ConfigError(f"process {jax.process_index()} of {jax.process_count()}: processes "
                      f"{differ} were given another config or --workdir than process 0; give "
                      f"every process the same flags")


def host_array(x) -> np.ndarray:
  """The whole of a (possibly sharded) array on this host, gathered from the other
  processes when part of it lives on their devices: then every process must call
  it, in the same order (a collective)."""
  if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
