"""Keep freed host memory in the process, so XLA:CPU steps stop faulting their pages in.

XLA:CPU allocates all of a step's temporaries as one block (~700 MB for the
`small` CLM step) with posix_memalign, from a worker thread. glibc serves a
block that large from mmap in that thread's arena and unmaps it when the step
frees it, so every step faults 170k fresh pages in (zeroed by the kernel):
~15% of the step's CPU time, 0.86 -> 0.76 s per `small` step on 2 cores once
the block is reused (bench/README.md). One arena, no mmap and no trimming make
glibc keep the block for the next step. The costs: the process keeps its peak
heap instead of returning it to the system, and all threads share one malloc
arena, which slows the many small allocations of a decode loop (~10% fewer
tokens/s at 64 x 256), so sampling-only processes leave it off.

Only for CPU runs on glibc, and only before JAX starts its CPU client (a thread
already attached to its own arena keeps it): the entry points call
`keep_freed_memory()` first. RESEARCH_KEEP_FREED_MEMORY=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform

# mallopt parameters (glibc malloc.h), and the values set
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# -1: glibc stores the threshold as a size_t, so never trim (an int's 2 GB was
# exceeded by the free top of a heap holding a DPO step's 1.4 GB block).
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
# The same as glibc environment variables, for a child process that does not
# call keep_freed_memory() itself (bench/compare.py's peers).
ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 62)}
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def cpu_only() -> bool:
  """Whether this process will run on the CPU: JAX_PLATFORMS says so, or no
  accelerator plugin is installed (checked without starting a JAX backend)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def _jax_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return started is None or started()


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to reuse freed blocks (see the module docstring);
  returns whether it did: not once JAX has started a backend (its threads
  keep their arenas), not off Linux/glibc, not for accelerator runs."""
  if os.environ.get("RESEARCH_KEEP_FREED_MEMORY", "1") == "0" or not cpu_only():
    return False
  if _jax_started():
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
