"""Runs untrusted Python (a policy's response) so that it can harm nothing.

Each program runs in a fresh subprocess (`python -I`: no user site, no PYTHON*
variables) in its own temporary directory, its own session and process group,
with a scrubbed environment (no secrets to read), and before it starts
(`sandbox_launch.py`, which then execs the program):

  resource limits  CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), the size
                   of any file it writes (RLIMIT_FSIZE), open files (RLIMIT_NOFILE),
                   processes (RLIMIT_NPROC: a fork bomb stops at the cap)
  no network       a new, empty network namespace (CLONE_NEWNET)
  nowhere to write a new mount namespace where /tmp, /var/tmp, /run/lock and
                   /dev/shm are empty and read-only (the program's directory, its
                   working directory, stays writable)
  no privileges    when the harness runs as root, the program runs under a fresh,
                   unused user id (RLIMIT_NPROC binds only non-root users; that
                   user can write nowhere but its directory), with a Python that
                   user may run (`interpreter`: the system's if ours is root-only)

Unprivileged, the namespaces come from a user namespace where the kernel allows
one (the harness user's home is hidden as well); `probe` says which protections
hold on this machine, and the `code` reward warns once about any that do not.

A wall-clock timeout kills the whole process group, and as root every process of
that user id is killed afterwards (a child that left the group with setsid
included). Output is read as it comes, up to a cap: a program that writes more
is killed, and what it wrote before a timeout is kept. Every way a program can
fail (a timeout, a kill, a crash, closing stdout, too much output) is a result,
never an exception. The sandbox protects the machine; a deliberately adversarial
program can still read its own harness, which a policy would have to learn to do
(see `code.py` on how tests are judged).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launch.py")
_KILL_ALL = "import os, signal; os.setgid({uid}); os.setuid({uid}); os.kill(-1, signal.SIGKILL)"
# User ids for sandboxed programs when the harness is root: unused, one per run.
UIDS = (200_000, 260_000)
_NEXT_UID = itertools.count(random.Random(os.getpid()).randrange(*UIDS))
_UID_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Limits:
  cpu_seconds: int = 2
  wall_seconds: float = 5.0
  memory_mb: int = 512
  file_mb: int = 1
  processes: int = 32
  output_bytes: int = 1 << 16


@dataclasses.dataclass
class Result:
  status: str         # ok | error (non-zero exit) | timeout | killed (a signal) | output_limit
  returncode: int
  stdout: str
  stderr: str


def _world_runnable(path: str) -> bool:
  """Whether any user can run `path`: it and every folder above it are o+x."""
  parts = [path]
  while parts[-1] != os.path.dirname(parts[-1]):
    parts.append(os.path.dirname(parts[-1]))
  try:
    return all(os.stat(p).st_mode & 0o001 for p in parts)
  except OSError:
    return False


@functools.lru_cache(maxsize=1)
def interpreter() -> tuple[str, bool]:
  """(python, run as another user): this process's Python (the binary a venv links
  to) where another user may run it, else the system's (a root-only pyenv, say),
  else this one as root."""
  if os.getuid() != 0:
    return sys.executable, False
  for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
    real = os.path.realpath(candidate)
    if os.path.exists(real) and _world_runnable(real):
      return real, True
  return sys.executable, False


def _processes_of(uid: int, threads: bool = False) -> int:
  """How many live processes (or threads) user `uid` runs; zombies not counted."""
  n = 0
  for pid in os.listdir("/proc"):
    if pid.isdigit():
      try:
        if os.stat(f"/proc/{pid}").st_uid == uid:
          with open(f"/proc/{pid}/stat", "rb") as f:
            alive = f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
          n += (len(os.listdir(f"/proc/{pid}/task")) if threads else 1) if alive else 0
      except OSError:
        pass
  return n


def _fresh_uid() -> int:
  """A sandbox user id no live process has (this process's own sequence, checked)."""
  with _UID_LOCK:
    for _ in range(100):
      uid = UIDS[0] + next(_NEXT_UID) % (UIDS[1] - UIDS[0])
      if not _processes_of(uid):
        return uid
  return uid


def _feed(stream, data: bytes) -> None:
  try:
    stream.write(data)
    stream.close()
  except OSError:  # the program exited or closed its stdin: fine
    pass


def _collect(proc: subprocess.Popen, stdin: bytes, limits: Limits):
  """(stdout, stderr, status or None) read as they come, up to the cap and the
  wall-clock limit; status 'timeout' or 'output_limit' when one of them hit."""
  threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
  out = {proc.stdout: bytearray(), proc.stderr: bytearray()}
  total = {proc.stdout: 0, proc.stderr: 0}
  selector = selectors.DefaultSelector()
  for stream in out:
    selector.register(stream, selectors.EVENT_READ)
  deadline = time.monotonic() + limits.wall_seconds
  status = None
  while selector.get_map() and status is None:
    left = deadline - time.monotonic()
    if left <= 0:
      status = "timeout"
      break
    for key, _ in selector.select(left):
      chunk = os.read(key.fileobj.fileno(), 1 << 16)
      if not chunk:
        selector.unregister(key.fileobj)
        continue
      total[key.fileobj] += len(chunk)
      buf = out[key.fileobj]
      buf += chunk[:max(limits.output_bytes - len(buf), 0)]
      if total[key.fileobj] > limits.output_bytes:  # stop it before it fills our memory
        status = "output_limit"
  selector.close()
  if status is None:  # both streams closed: wait for the exit within the wall clock
    try:
      proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
      status = "timeout"
  return bytes(out[proc.stdout]), bytes(out[proc.stderr]), status


def run_python(program: str, stdin: str = "", limits: Limits = Limits(),
               args: tuple[str, ...] = ()) -> Result:
  """Runs `program` (source text) with `stdin`; see the module doc."""
  with tempfile.TemporaryDirectory(prefix="sandbox_") as workdir:
    path = os.path.join(workdir, "main.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(program)
    python, other_user = interpreter()
    uid = _fresh_uid() if other_user else None
    if uid is not None:
      os.chown(workdir, uid, uid)
      os.chmod(path, 0o444)
    nproc = (limits.processes if uid is not None
             else _processes_of(os.getuid(), threads=True) + limits.processes)
    confine = json.dumps({**dataclasses.asdict(limits), "uid": uid, "nproc": nproc,
                          "python": python})
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", LAUNCHER, confine, path, *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir,
        start_new_session=True, close_fds=True)
    try:
      out, err, status = _collect(proc, stdin.encode("utf-8"), limits)
    finally:
      _kill_all(proc, uid)
      for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()
    if status is None:
      status = "ok" if proc.returncode == 0 else ("killed" if proc.returncode < 0 else "error")
    return Result(status, proc.returncode if proc.returncode is not None else -9,
                  out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
  """Kills what is left of the program: its process group (forked children), and
  with its own user id every process of that user (kill(-1) as that user)."""
  for _ in range(50):  # again while any is left: a child forked as the group was killed
    try:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.poll()
      time.sleep(0.005)
      os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
      break
  if uid is not None and _processes_of(uid):  # kill(-1) as that user: all it left anywhere
    subprocess.run([sys.executable, "-I", "-S", "-c", _KILL_ALL.format(uid=uid)], check=False,
                   timeout=30)  # run as root until its setuid
  try:
    proc.wait(timeout=5)
  except subprocess.TimeoutExpired:
    pass


_PROBE = """import os, socket
found = {"network": True, "shared_folders": True}
try:
    socket.create_connection(("10.255.255.1", 9), timeout=0.2).close()
except OSError as e:
    found["network"] = e.errno not in (101,)  # ENETUNREACH: an empty namespace
try:
    with open("/tmp/sandbox_probe", "w"):
        pass
    os.remove("/tmp/sandbox_probe")
except OSError:
    found["shared_folders"] = False
print(found["network"], found["shared_folders"], os.getuid())
"""


@functools.lru_cache(maxsize=1)
def probe() -> dict[str, bool]:
  """Which protections hold here: {'no_network', 'no_shared_folders',
  'own_user', 'process_cap'} (one sandboxed run, cached)."""
  got = run_python(_PROBE, "", Limits(cpu_seconds=2, wall_seconds=10)).stdout.split()
  if len(got) != 3:
    return {"no_network": False, "no_shared_folders": False, "own_user": False,
            "process_cap": False}
  own_user = int(got[2]) != os.getuid() and os.getuid() == 0
  return {"no_network": got[0] == "False", "no_shared_folders": got[1] == "False",
          "own_user": own_user, "process_cap": own_user or os.getuid() != 0}
