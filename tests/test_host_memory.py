"""research/host_memory.py: a CPU step's temporaries are reused, not faulted in anew."""

import json
import os
import subprocess
import sys

from research import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose ~200 MB operand XLA:CPU holds in its temporary block
# (the reshape feeds a dot), called repeatedly: page faults per call, in a fresh
# process (the setting must come before JAX starts).
PROBE = """
import json, resource
from research import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
x, w = jnp.ones((1000, 1000)), jnp.ones((1000, 8))
f = jax.jit(lambda x, w: ((x[None] * jnp.arange(1, 51.0)[:, None, None])
                          .reshape(50000, 1000) @ w).sum())
f(x, w).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _probe(**env) -> dict:
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
                            "XLA_FLAGS": "", **env}, check=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in():
  on, off = _probe(), _probe(RESEARCH_KEEP_FREED_MEMORY="0")
  assert on["kept"] and not off["kept"]
  block_pages = 50000 * 1000 * 4 // 4096  # the 200 MB operand, in 4 KB pages
  assert min(off["faults"]) > block_pages // 2, off  # glibc unmaps it after every call
  assert max(on["faults"][1:]) < block_pages // 100, on  # kept: reused as it is


def test_not_applied_once_jax_has_started_or_off_cpu(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # the test session's backend exists: its threads keep their arenas
  assert not host_memory.keep_freed_memory()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not host_memory.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu,cuda")
  assert host_memory.cpu_only()
