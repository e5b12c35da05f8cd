"""Command-line helpers: config loading outside absl and readable override errors."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys

from absl import flags
import ml_collections

_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(?:=.*)?$")


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
  """absl flags parser that explains a bad `--config.x.y=v` instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    spec = _config_spec(argv)
    if spec:
      try:
        config = config_from_file(spec)
      except Exception:  # the config itself is broken: report the original error
        config = None
      for arg in argv:
        match = _OVERRIDE.match(arg)
        message = config is not None and match and _valid_keys_message(config, match.group(1))
        if message:
          sys.exit(f"error: {message}")
    sys.exit(f"error: {e}")
