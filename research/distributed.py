"""Starting JAX's multi-process runtime: one process per host (or, in tests, per
group of simulated CPU devices), one global mesh over all their devices."""

from __future__ import annotations

import jax

from research.errors import ConfigError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 60) -> None:
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
  if coordinator is not None:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id, initialization_timeout=timeout_s)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  # unreachable coordinator and the like
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--distributed: could not join the coordinator "
                      f"{coordinator or '(auto-detected)'}: {first[:300]}") from None
