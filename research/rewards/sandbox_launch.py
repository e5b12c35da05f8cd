"""The sandbox's launcher (`sandbox.py`), run as a fresh single-threaded process:
`python -I -S sandbox_launch.py LIMITS_JSON PROGRAM [ARGS...]`. It confines
itself (no network, the shared writable folders hidden, resource limits, another
user id when started as root, the program's directory) and then becomes the
program by exec, so no Python code runs between fork and exec in the harness,
which may hold threads (JAX's). Standard library only: it must not import the
project.

As root it uses its privileges (network and mount namespaces, a fresh user id).
Unprivileged, it tries a user namespace, which grants the same two namespaces
where the kernel allows it (the program then keeps the harness's user id, so its
home folder is hidden too). What it could not get, `sandbox.probe` reports.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 1, 2, 4, 1 << 14, 1 << 18
# The folders every user may write to: hidden behind empty read-only ones.
SHARED = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")


def limit(which, value):
  try:
    resource.setrlimit(which, (value, value))
  except (ValueError, OSError):  # a hard limit below ours: keep the stricter one
    pass


def write(path, text):
  try:
    with open(path, "w") as f:
      f.write(text)
    return True
  except OSError:
    return False


def namespaces(libc, as_root: bool) -> bool:
  """New network and mount namespaces (via a user namespace when unprivileged);
  whether the mount namespace is ours to change."""
  if as_root:
    libc.unshare(CLONE_NEWNET)
    return libc.unshare(CLONE_NEWNS) == 0
  uid, gid = os.getuid(), os.getgid()
  if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
    return False
  write("/proc/self/setgroups", "deny")
  return write("/proc/self/uid_map", f"0 {uid} 1") and write("/proc/self/gid_map", f"0 {gid} 1")


def hide(libc, folders):
  """Empty, read-only file systems over `folders` (the program's own directory,
  its working directory, opened before, stays reachable)."""
  libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
  for folder in folders:
    if folder and os.path.isdir(folder):
      libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                 b"size=4k,mode=755")


def main():
  limits, program, args = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
  os.chdir(os.path.dirname(program))
  source = os.open(program, os.O_RDONLY)  # read through /dev/fd: its path will be hidden
  os.set_inheritable(source, True)
  libc = ctypes.CDLL(None, use_errno=True)
  as_root = os.getuid() == 0
  if namespaces(libc, as_root):
    hide(libc, SHARED + (() if as_root else (os.path.expanduser("~"),)))
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
