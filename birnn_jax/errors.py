"""Errors a user can fix, one small hierarchy: `launch.py` reports a `BirnnError` in one line
(its message says what is wrong and where) and lets everything else keep its traceback.

    BirnnError
      ConfigError            an invalid config value; the message names `config.<key>`
      DataError              malformed or missing data; names the file and line
      InputError             a user's --text that the task cannot read
      WorkdirError           a workdir that cannot be written (read-only, full, ...)
        WorkdirMismatchError   the workdir holds a run of another config or other data
        NoCheckpointError      eval/predict of a workdir with nothing trained in it
      NonFiniteError         the loss or gradients became NaN/Inf (last good checkpoint kept)

Each also derives from the built-in type code would have caught before (ValueError, OSError,
FileNotFoundError, FloatingPointError), so `except ValueError` keeps working.
"""

import os


class BirnnError(Exception):
  """Base class: an error whose message alone tells the user what to fix."""


class ConfigError(BirnnError, ValueError):
  """An invalid config value; the message starts with `config.<key>=<value>`."""


class DataError(BirnnError, ValueError):
  """Malformed or missing data; the message names the file and line when there is one."""

  def __init__(self, message: str, path: str | os.PathLike | None = None,
               line: int | None = None):
    self.path, self.line, self.problem = path, line, message
    where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
    super().__init__(where + message)


class InputError(BirnnError, ValueError):
  """A user's input to predict (--text) that the task cannot read."""


class WorkdirError(BirnnError, OSError):
  """The workdir cannot be used (read-only, full, not a directory); the message names it."""


class WorkdirMismatchError(WorkdirError):
  """The workdir holds a run of another config or data (its config.json or a vocabulary)."""


class NoCheckpointError(WorkdirError, FileNotFoundError):
  """Nothing trained in the workdir yet (eval, predict, frozen features)."""


class NonFiniteError(BirnnError, FloatingPointError):
  """A loss or gradient became NaN/Inf; the last good checkpoint is left as it was."""
