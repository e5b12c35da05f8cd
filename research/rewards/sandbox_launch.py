"""The sandbox's launcher (`sandbox.py`), run as a fresh single-threaded process:
`python -I -S sandbox_launch.py LIMITS_JSON PROGRAM [ARGS...]`. It confines
itself (no network, the shared writable folders hidden, resource limits, another
user id when started as root, the program's directory) and then becomes the
program by exec, so no Python code
runs between fork and exec in the harness, which may hold threads (JAX's).
Standard library only: it must not import the project."""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 1, 2, 4, 1 << 14, 1 << 18
# The folders every user may write to: hidden behind empty read-only ones.
SHARED = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")


def private_filesystem(libc):
  """A mount namespace whose world-writable folders are empty and read-only; the
  program keeps its own directory as its working directory (opened before)."""
  if libc.unshare(CLONE_NEWNS) != 0:
    return
  libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
  for folder in SHARED:
    if os.path.isdir(folder):
      libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                 b"size=4k,mode=755")


def limit(which, value):
  try:
    resource.setrlimit(which, (value, value))
  except (ValueError, OSError):  # a hard limit below ours: keep the stricter one
    pass


def main():
  limits, program, args = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
  os.chdir(os.path.dirname(program))
  source = os.open(program, os.O_RDONLY)  # read through /dev/fd: its path will be hidden
  os.set_inheritable(source, True)
  libc = ctypes.CDLL(None, use_errno=True)
  libc.unshare(CLONE_NEWNET)  # best effort, as below: both need the privilege
  private_filesystem(libc)
  limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
  limit(resource.RLIMIT_AS, limits["memory_mb"] << 20)
  limit(resource.RLIMIT_FSIZE, limits["file_mb"] << 20)
  limit(resource.RLIMIT_NOFILE, 64)
  limit(resource.RLIMIT_CORE, 0)
  if limits.get("uid") is not None:
    os.setgroups([])
    os.setgid(limits["uid"])
    os.setuid(limits["uid"])
  limit(resource.RLIMIT_NPROC, limits["nproc"])
  python = limits["python"]
  os.execv(python, [python, "-I", f"/dev/fd/{source}", *args])


if __name__ == "__main__":
  main()
