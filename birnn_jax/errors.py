"""Errors a user can fix, one small hierarchy: `launch.py` reports a `BirnnError` in one line
(its message says what is wrong and where) and lets everything else keep its traceback::

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

    >>> from birnn_jax import errors
    >>> try:
    ...   raise errors.DataError("a token line needs 10 columns", "train.conllu", 7)
    ... except ValueError as e:
    ...   print(e)
    train.conllu:7: a token line needs 10 columns
"""

import os


class BirnnError(Exception):
  """Base class: an error whose message alone tells the user what to fix.

  `launch.py` prints such an error as one `launch.py: error: <message>` line and exits
  with status 1; any other exception keeps its traceback.

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.NoCheckpointError, errors.BirnnError)
    True
  """


class ConfigError(BirnnError, ValueError):
  """An invalid config value; the message starts with `config.<key>=<value>`.

  Example:
    >>> from birnn_jax import errors
    >>> isinstance(errors.ConfigError("config.model.dropout=1.5 is invalid"), ValueError)
    True
  """


class DataError(BirnnError, ValueError):
  """Malformed or missing data; the message names the file and line when there is one.

  Args:
    message: what is wrong.
    path: the file, or None.
    line: the 1-based line number in `path`, or None.

  Example:
    >>> from birnn_jax import errors
    >>> error = errors.DataError("unknown tag 'XYZ'", "dev.iob2", 12)
    >>> str(error), error.line, error.problem
    ("dev.iob2:12: unknown tag 'XYZ'", 12, "unknown tag 'XYZ'")
  """

  def __init__(self, message: str, path: str | os.PathLike | None = None,
               line: int | None = None):
    self.path, self.line, self.problem = path, line, message
    where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
    super().__init__(where + message)


class InputError(BirnnError, ValueError):
  """A user's input to predict (`--text`) that the task cannot read.

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.InputError, ValueError)
    True
  """


class WorkdirError(BirnnError, OSError):
  """The workdir cannot be used (read-only, full, not a directory); the message names it.

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.WorkdirError, OSError)
    True
  """


class WorkdirMismatchError(WorkdirError):
  """The workdir holds a run of another config or data (its config.json or a vocabulary).

  `--force_fresh` starts over in such a workdir.

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.WorkdirMismatchError, errors.WorkdirError)
    True
  """


class NoCheckpointError(WorkdirError, FileNotFoundError):
  """Nothing trained in the workdir yet (eval, predict, frozen features).

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.NoCheckpointError, FileNotFoundError)
    True
  """


class NonFiniteError(BirnnError, FloatingPointError):
  """A loss or gradient became NaN/Inf; the last good checkpoint is left as it was.

  Example:
    >>> from birnn_jax import errors
    >>> issubclass(errors.NonFiniteError, FloatingPointError)
    True
  """
