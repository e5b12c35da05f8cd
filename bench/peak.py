"""The machine's measured matmul peak, the denominator of every MFU in bench/."""

from __future__ import annotations

import time


def measure_matmul_peak(jax, jnp, dtype) -> dict:
  """Best FLOP/s over square matmul sizes, 8 chained matmuls per call."""
  best = {"flops_per_sec": 0.0}
  for n in (512, 1024, 2048):
    a = jnp.ones((n, n), dtype) / n

    @jax.jit
    def chain(x):
      for _ in range(8):
        x = jnp.dot(x, a, preferred_element_type=jnp.float32).astype(dtype)
      return x

    chain(a).block_until_ready()
    times = []
    for _ in range(5):
      t = time.perf_counter()
      chain(a).block_until_ready()
      times.append(time.perf_counter() - t)
    rate = 8 * 2 * n ** 3 / min(times)
    if rate > best["flops_per_sec"]:
      best = {"flops_per_sec": rate, "size": n, "dtype": str(jnp.dtype(dtype))}
  return best
