"""What every reader shares: the data-dir resolution order and the error type."""

import hashlib
import os
import pathlib

ENV_VAR = "BIRNN_DATA_DIR"
CACHE_DIR = pathlib.Path("~/.cache/birnn_jax").expanduser()


class DataError(ValueError):
  """Malformed or missing data; the message names the file and line when there is one."""

  def __init__(self, message: str, path: str | os.PathLike | None = None,
               line: int | None = None):
    self.path, self.line, self.problem = path, line, message
    where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
    super().__init__(where + message)


def resolve_data_dir(configured: str | None, subdir: str) -> pathlib.Path:
  """`<root>/<subdir>` for the first root set: config value, $BIRNN_DATA_DIR, the cache.

  Raises DataError naming `config.data.dir` when the configured folder does not exist.
  (Downloading into the cache is the caller's job, so tests never touch the network.)
  """
  if configured:
    root, origin = pathlib.Path(configured).expanduser(), "config.data.dir"
  elif os.environ.get(ENV_VAR):
    root, origin = pathlib.Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
  else:
    root, origin = CACHE_DIR, "the cache"
  folder = root / subdir
  if configured and not root.is_dir():
    raise DataError(f"config.data.dir={configured!r} is not a directory.")
  if origin != "the cache" and not folder.is_dir():
    raise DataError(f"{origin} points to {root}, which has no {subdir}/ folder.")
  return folder


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
  """The hex digest ('sha1', 'sha256', ...) of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
