"""JAX's persistent compilation cache, on for launch.py runs: compile a program once, then
read it back in every later run of it.

XLA compiles make most of a small run's start-up (a smoke run spends far longer compiling
than training). JAX can keep each compiled program on disk, keyed by the program, the
compile options, the XLA flags and the jax/jaxlib version, and read it back in any later
process that builds the same program (`jax.experimental.compilation_cache`). `enable(dir)`
turns it on for this process:

- every program is kept, however quick its compile (JAX's default keeps only those over
  1 s, so a second run would still compile the rest);
- the folder is bounded (`max_size_bytes`, least recently used entries evicted first;
  `$JAX_COMPILATION_CACHE_MAX_SIZE` overrides it, -1 = unbounded), which also makes JAX
  guard every read and write with a file lock in the folder, so several runs may share
  one cache at once (JAX writes entries in place, so without the lock a run could read
  another's half-written entry).

JAX writes an entry in place even under the lock, so a run killed at the very moment it
writes one can leave it truncated; JAX then warns ("Error reading persistent compilation
cache entry") and compiles that program again, each time, until the folder is deleted.

Where (`resolve`): `launch.py --compile_cache=DIR`; else `$JAX_COMPILATION_CACHE_DIR`; else
the per-user `~/.cache/birnn_jax/xla`. `--compile_cache=off` turns it off. Deleting the
folder is always safe (the next run compiles again).
"""

import os
import pathlib

from absl import logging
# JAX locks a bounded cache folder with filelock (and fails on the first compile without it).
import filelock  # noqa: F401  pylint: disable=unused-import
import jax
from jax.experimental.compilation_cache import compilation_cache

from birnn_jax import errors

DEFAULT_DIR = pathlib.Path("~/.cache/birnn_jax/xla").expanduser()
ENV_VAR = "JAX_COMPILATION_CACHE_DIR"   # JAX's own variables, honoured as JAX does
MAX_SIZE_ENV_VAR = "JAX_COMPILATION_CACHE_MAX_SIZE"
OFF = "off"
# Room for every experiment's programs many times over (a smoke run's are a few MB).
DEFAULT_MAX_SIZE_BYTES = 4 << 30


def resolve(flag_value: str | None) -> pathlib.Path | None:
  """The cache folder for a `--compile_cache` value: the value itself, `$ENV_VAR` or
  DEFAULT_DIR when it is None or empty, and None (no cache) for 'off'."""
  if flag_value == OFF:
    return None
  if flag_value:
    return pathlib.Path(flag_value).expanduser()
  return pathlib.Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else DEFAULT_DIR


def configure(flag_value: str | None) -> pathlib.Path | None:
  """`enable(resolve(flag_value))`, or `disable()` for 'off'; returns the folder or None."""
  folder = resolve(flag_value)
  if folder is None:
    disable()
  else:
    enable(folder)
  return folder


def enable(directory: str | os.PathLike, max_size_bytes: int = DEFAULT_MAX_SIZE_BYTES) -> None:
  """Keeps every compiled program of this process in `directory` and reads it back there.

  Call before the first compile that should be cached (programs JAX already compiled in
  this process are not written).

  Args:
    directory: the cache folder (made if missing); may be shared by concurrent runs.
    max_size_bytes: the folder's bound, > 0; the least recently used entries go first.

  Raises:
    errors.ConfigError: `directory` cannot be made or written (naming --compile_cache), or
      `max_size_bytes` is not positive.
  """
  if max_size_bytes <= 0:
    raise errors.ConfigError(f"max_size_bytes={max_size_bytes} is invalid: expected > 0.")
  directory = pathlib.Path(directory).expanduser()
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise errors.ConfigError(
        f"--compile_cache={str(directory)!r} is invalid: cannot write there "
        f"({e.strerror or e}); give another folder, or --compile_cache={OFF}.") from e
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)   # -1: no lower bound
  if not os.environ.get(MAX_SIZE_ENV_VAR):   # JAX's own variable wins, as for the folder
    jax.config.update("jax_compilation_cache_max_size", int(max_size_bytes))
  compilation_cache.reset_cache()   # the next compile opens the cache with these settings
  logging.info("Persistent compilation cache: %s (--compile_cache=%s turns it off).",
               directory, OFF)


def disable() -> None:
  """No persistent compilation cache for this process (also not `$ENV_VAR`'s)."""
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()


def directory() -> pathlib.Path | None:
  """The folder this process caches compiled programs in, or None."""
  value = jax.config.jax_compilation_cache_dir
  return pathlib.Path(value) if value else None
