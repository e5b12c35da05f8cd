"""The errors a user can fix: `research.main` prints them in one line (no
traceback) and exits 2. Anything else is a bug and keeps its traceback."""


class UserError(ValueError):
  """Bad input from the user; the message names the key, file or record, and the fix."""


class ConfigError(UserError):
  """A config value (or the workdir it points at) is wrong; the message names the key."""


class DataError(UserError):
  """Bad input data; the message names the file and line (or record) and the field."""
