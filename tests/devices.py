"""XLA_FLAGS for simulated CPU devices, shared by the test session and its subprocesses.

The 8 simulated devices are threads that meet at every collective. XLA:CPU aborts
the process when one of them is more than 40 s late ("Termination timeout ...
exceeded"), which a loaded 2-core CI machine can reach while the other xdist
worker compiles, so the limit is 120 s. A true deadlock still ends the worker
in 2 minutes instead of hanging CI (two CI runs deadlocked in
test_steps' (2,2,2) case while eager multi-device ops overlapped: see conftest,
which turns off asynchronous CPU dispatch for that reason).
"""

COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=60"
                       " --xla_cpu_collective_call_terminate_timeout_seconds=120"
                       " --xla_cpu_collective_timeout_seconds=120")


def xla_flags(devices: int, base: str = "") -> str:
  """`base` plus `devices` simulated host devices and these collective timeouts."""
  return " ".join(filter(None, [base, f"--xla_force_host_platform_device_count={devices}",
                                COLLECTIVE_TIMEOUTS]))
