"""Runs untrusted Python (a policy's response) so that it can harm nothing.

Each program runs in a fresh subprocess (`python -I`: no user site, no PYTHON*
variables) in its own temporary directory, its own session and process group,
with a scrubbed environment (no secrets to read), and before it starts
(`sandbox_launch.py`, which then execs the program):

  resource limits  CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), the size
                   of any file it writes (RLIMIT_FSIZE), open files (RLIMIT_NOFILE),
                   processes (RLIMIT_NPROC: a fork bomb stops at the cap)
  no network       a new, empty network namespace (unshare CLONE_NEWNET) where the
                   kernel allows it
  nowhere to write a new mount namespace where /tmp, /var/tmp, /run/lock and
                   /dev/shm are empty and read-only (the program's directory, its
                   working directory, stays writable)
  no privileges    when the harness runs as root, the program runs under a fresh,
                   unused user id (RLIMIT_NPROC binds only non-root users; that
                   user can write nowhere but its directory), with a Python that
                   user may run (`interpreter`: the system's if ours is root-only)

A wall-clock timeout kills the whole process group, and as root every process of
that user id is killed afterwards (a child that left the group with setsid
included); output is read up to a cap.
Every way a program can fail (a timeout, a kill, a crash, closing stdout, too
much output) is a result, never an exception. The sandbox protects the machine;
a deliberately adversarial program can still read its own harness, which a
policy would have to learn to do (see `code.py` on how tests are judged).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launch.py")
_KILL_ALL = "import os, signal; os.setgid({uid}); os.setuid({uid}); os.kill(-1, signal.SIGKILL)"
# User ids for sandboxed programs when the harness is root: unused, one per run.
UIDS = (200_000, 260_000)


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
  status: str         # ok | error (non-zero exit) | timeout | killed (by a signal)
  returncode: int
  stdout: str
  stderr: str


def _world_runnable(path: str) -> bool:
  """Whether any user can run `path`: it and every folder above it are o+x."""
  path = os.path.realpath(path)
  parts = [path] + [os.path.dirname(path)]
  while parts[-1] != os.path.dirname(parts[-1]):
    parts.append(os.path.dirname(parts[-1]))
  try:
    return all(os.stat(p).st_mode & 0o001 for p in parts)
  except OSError:
    return False


@functools.lru_cache(maxsize=1)
def interpreter() -> tuple[str, bool]:
  """(python, run as another user): this process's Python where another user may
  run it, else the system's (a root-only pyenv, say), else this one as root."""
  if os.getuid() != 0:
    return sys.executable, False
  for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
    if os.path.exists(candidate) and _world_runnable(candidate):
      return candidate, True
  return sys.executable, False


def _processes_of(uid: int) -> int:
  """How many live processes user `uid` runs (zombies, already dead, not counted)."""
  n = 0
  for pid in os.listdir("/proc"):
    if pid.isdigit():
      try:
        if os.stat(f"/proc/{pid}").st_uid == uid:
          with open(f"/proc/{pid}/stat", "rb") as f:
            n += f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
      except OSError:
        pass
  return n


def _own_processes() -> int:
  """How many processes this user runs (RLIMIT_NPROC counts them all)."""
  return _processes_of(os.getuid())


def run_python(program: str, stdin: str = "", limits: Limits = Limits(),
               args: tuple[str, ...] = ()) -> Result:
  """Runs `program` (source text) with `stdin`; see the module doc."""
  with tempfile.TemporaryDirectory(prefix="sandbox_") as workdir:
    path = os.path.join(workdir, "main.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(program)
    python, other_user = interpreter()
    uid = random.randrange(*UIDS) if other_user else None
    if uid is not None:
      os.chown(workdir, uid, uid)
      os.chmod(path, 0o444)
    nproc = limits.processes if uid is not None else _own_processes() + limits.processes
    confine = json.dumps({**dataclasses.asdict(limits), "uid": uid, "nproc": nproc,
                          "python": python})
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", LAUNCHER, confine, path, *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir,
        start_new_session=True, close_fds=True)
    try:
      out, err = proc.communicate(stdin.encode("utf-8"), timeout=limits.wall_seconds)
      status = "ok" if proc.returncode == 0 else ("killed" if proc.returncode < 0 else "error")
    except subprocess.TimeoutExpired:
      out, err, status = b"", b"", "timeout"
    finally:
      _kill_all(proc, uid)
    return Result(status, proc.returncode if proc.returncode is not None else -9,
                  out[:limits.output_bytes].decode("utf-8", "replace"),
                  err[-limits.output_bytes:].decode("utf-8", "replace"))


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
  """Kills what is left of the program: its process group (forked children), and
  with its own user id every process of that user (kill(-1) as that user)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  if uid is not None and _processes_of(uid):  # kill(-1) as that user: all it left anywhere
    subprocess.run([sys.executable, "-I", "-S", "-c", _KILL_ALL.format(uid=uid)], check=False,
                   timeout=30)  # run as root until its setuid
  try:
    proc.wait(timeout=5)
  except subprocess.TimeoutExpired:
    pass
