"""Command-line helpers: config loading outside absl, readable flag errors, and the
one exit code of every user error (`fail`, `user_errors`).

Exit codes of the CLIs (research.main, research.generate, research.convert):
  0    finished
  1    a non-finite loss (the last good checkpoint is kept) or a bug (a traceback)
  2    a user error: a bad flag, config file, config value, data file or workdir,
       reported in one line on stderr
  143  pre-empted by SIGTERM after saving; rerun the same command to continue
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import re
import sys

from absl import flags
import ml_collections

from research.errors import UserError

EXIT_USAGE = 2        # a user error, reported in one line
EXIT_PREEMPTED = 143  # SIGTERM: the state is saved; rerun the same command to continue

_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(?:=.*)?$")


def fail(message: str) -> None:
  """Ends a CLI on a user error: `error: <message>` in one line, exit code 2."""
  first = " ".join(str(message).split("\n")[0].split()) if message else "unknown error"
  print(f"error: {first}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors():
  """A user error raised inside (a UserError, or an OS error on one of the user's
  paths: missing, not a directory, no permission) ends the CLI via `fail`."""
  try:
    yield
  except UserError as e:
    fail(str(e))
  except OSError as e:  # FileNotFoundError, PermissionError, NotADirectoryError, ...
    if e.errno is None and e.args:  # ours: FileNotFoundError("<path> not found: ...")
      fail(str(e))
    if not e.filename:  # not about a path of the user's (EMFILE, EIO): a traceback
      raise
    fail(f"{e.filename}: {e.strerror}" if e.strerror else str(e))


def config_from_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/file.py[:arg]` -> get_config(arg), as config_flags would load it."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config={spec}: no such file {path}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if inspect.signature(module.get_config).parameters:
    return module.get_config(arg or None)
  return module.get_config()


def config_file_problem(spec: str) -> str | None:
  """Why `--config=spec` cannot be loaded, in one line (None: it loads)."""
  path, _, _ = spec.partition(":")
  if not path:
    return "--config is empty; give configs/STAGE.py[:arg]"
  if not os.path.isfile(path):
    return (f"--config={spec}: no such file {path!r} (configs/STAGE.py[:arg], e.g. "
            f"configs/clm.py:tiny)")
  if not path.endswith(".py"):
    return (f"--config={spec}: {path} is not a config file; a config is a Python file with "
            f"get_config(arg), e.g. configs/clm.py:tiny")
  try:
    config = config_from_file(spec)
  except SyntaxError as e:
    return f"--config={spec}: {path}:{e.lineno}: not valid Python ({e.msg})"
  except AttributeError as e:
    if "get_config" in str(e):
      return f"--config={spec}: {path} defines no get_config(arg)"
    return f"--config={spec}: {path}: {type(e).__name__}: {e}"
  except Exception as e:  # pylint: disable=broad-except  # the config's own error, e.g. a bad arg
    return f"--config={spec}: {e}"
  if not isinstance(config, ml_collections.ConfigDict):
    return f"--config={spec}: get_config returned {type(config).__name__}, not a ConfigDict"
  return None


def _valid_keys_message(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """For `a.b.c`, the first missing part and the keys valid at that level."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      return None
    if part not in node:
      where = "config" + "".join(f".{p}" for p in parts[:i])
      return (f"unknown config key --config.{dotted}: {where} has no key {part!r}; "
              f"valid keys: {', '.join(sorted(node.keys()))}")
    node = node[part]
  return None


def _config_spec(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """absl flags parser for research.main: a bad config file or `--config.x.y=v` ends
  in one line and exit code 2 instead of a traceback."""
  spec = _config_spec(argv)
  if spec is not None:
    problem = config_file_problem(spec)
    if problem:
      fail(problem)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # any flag error is the user's
    if spec:
      config = config_from_file(spec)
      for arg in argv:
        match = _OVERRIDE.match(arg)
        message = match and _valid_keys_message(config, match.group(1))
        if message:
          fail(message)
    fail(str(e))


def parse_any_flags(argv):
  """absl flags parser for the other CLIs: a bad or missing flag ends in one line
  and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # any flag error is the user's
    fail(str(e))


def explicit_overrides(argv, prefix: str = "") -> list[str]:
  """The `--config.KEY=...` keys given on the command line that start with `prefix`."""
  keys = [m.group(1) for m in map(_OVERRIDE.match, argv) if m]
  return [k for k in keys if k.startswith(prefix)]
