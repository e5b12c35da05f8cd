"""XLA_FLAGS for simulated CPU devices, shared by the test session and its subprocesses.

The 8 simulated devices are threads that meet at every collective. XLA:CPU aborts
the whole process ("Termination timeout ... exceeded") when one of them arrives
more than 40 s late, which happens on a loaded 2-core CI machine while the other
xdist worker compiles; a late thread here is slowness, not a deadlock, so the
timeouts are raised to 15 minutes (still short of pytest's CI budget).
"""

COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=300"
                       " --xla_cpu_collective_call_terminate_timeout_seconds=900"
                       " --xla_cpu_collective_timeout_seconds=900")


def xla_flags(devices: int, base: str = "") -> str:
  """`base` plus `devices` simulated host devices and patient collectives."""
  return " ".join(filter(None, [base, f"--xla_force_host_platform_device_count={devices}",
                                COLLECTIVE_TIMEOUTS]))
