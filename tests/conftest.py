"""Shared pytest setup: fast compiles, compilation caches, random variables. The tests import
birnn_jax as installed (scripts/test.sh installs the built wheel), never from a path edit."""

import contextlib
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_FAST_COMPILE = "jax_disable_most_optimizations"
# With few optimisations (as the tests compile), XLA:CPU's newer fusion emitters compile our
# small scans about 2x slower than the classic ones (quiet 2-core machine: test_fused 53 ->
# 30 s, the fast suite 5:48 -> 4:08); the numbers the tests check are the same either way.
# Tests only: at XLA's default optimisations the classic emitters were slower (NER :smoke
# 105 -> 125 s), so training keeps XLA's default.
_FAST_CPU_EMITTERS = "--xla_cpu_use_fusion_emitters=false"

# Every test process (xdist workers, launch.py subprocesses) keeps its compiled programs in
# one persistent compilation cache, kept across test sessions: most of the suite's time is
# XLA compiling a few hundred small programs, and a second run reads them back instead.
# Keyed by program, XLA flags and versions, so a stale entry is never used. Unbounded: a
# bounded cache (launch.py's default) is locked, but every write then reads the whole
# folder's access times, and the suite writes thousands of entries; without the lock a
# worker may read an entry another is still writing, which JAX reports with a warning and
# compiles instead. `BIRNN_TEST_COMPILE_CACHE=<folder>` moves it (an empty folder measures
# a cold suite).
_TEST_CACHE_ENV = "BIRNN_TEST_COMPILE_CACHE"
_TEST_CACHE_DIR = pathlib.Path("~/.cache/birnn_jax/xla-tests").expanduser()
_PARSED_CACHE_ENV = "BIRNN_PARSED_CACHE_DIR"   # birnn_jax.data.cache: a folder per session


def _compile_cache_env() -> dict[str, str]:
  """JAX's own variables for the tests' compilation cache."""
  folder = os.path.expanduser(os.environ.get(_TEST_CACHE_ENV) or str(_TEST_CACHE_DIR))
  return {"JAX_COMPILATION_CACHE_DIR": folder,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
          "JAX_COMPILATION_CACHE_MAX_SIZE": "-1"}


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib knows `flag`: XLA aborts the process on an unknown one, so ask a
  child process, once per jaxlib version (the answer is kept beside the compilation cache:
  the child's imports cost seconds of every session)."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  flags = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  known = pathlib.Path(_compile_cache_env()["JAX_COMPILATION_CACHE_DIR"]) / "xla_flag_probes.json"
  key = f"jaxlib {jaxlib.__version__}: {flags}"
  try:
    answers = json.loads(known.read_text())
  except (OSError, ValueError):
    answers = {}
  if key not in answers:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                           capture_output=True, check=False, timeout=120)
    answers[key] = probe.returncode == 0
    with contextlib.suppress(OSError):
      known.parent.mkdir(parents=True, exist_ok=True)
      known.write_text(json.dumps(answers, indent=1))
  return answers[key]


def pytest_configure(config):
  """Sets the environment before any backend starts: the fast-compiling XLA flag, the
  compilation cache and a parsed-corpus cache folder for this session. Run in the main
  process only: pytest-xdist's workers and launch.py subprocesses inherit it."""
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  cache = _compile_cache_env()
  os.environ.update(cache)
  for name, value in cache.items():   # this process imported jax before reading them
    jax.config.update(name.lower(), value if name.endswith("_DIR") else float(value)
                      if name.endswith("_SECS") else int(value))
  if not os.environ.get(_PARSED_CACHE_ENV):
    config.birnn_parsed_cache = tempfile.mkdtemp(prefix="birnn_parsed_")
    os.environ[_PARSED_CACHE_ENV] = config.birnn_parsed_cache
  flags = os.environ.get("XLA_FLAGS", "")
  if _FAST_CPU_EMITTERS.split("=")[0] in flags:
    return   # the user chose
  if _xla_accepts(_FAST_CPU_EMITTERS):
    os.environ["XLA_FLAGS"] = f"{flags} {_FAST_CPU_EMITTERS}".strip()


def pytest_unconfigure(config):
  """Removes the session's parsed-corpus cache folder (made by pytest_configure)."""
  folder = getattr(config, "birnn_parsed_cache", None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fast_compile():
  """Compiles with few XLA optimisations: the core tests run tiny arrays, where compile
  time dominates. Module-scoped and restored afterwards, so other test files see the
  default. Opt in with `pytestmark = pytest.mark.usefixtures("fast_compile")`."""
  old = jax.config.values[_FAST_COMPILE]
  jax.config.update(_FAST_COMPILE, True)
  yield
  jax.config.update(_FAST_COMPILE, old)


@pytest.fixture(scope="session")
def _compile_cache_dir():
  """The tests' compilation cache folder."""
  return pathlib.Path(_compile_cache_env()["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture(scope="module")
def compile_cache():
  """Kept for the modules that ask for it: every test process now uses the persistent
  compilation cache (`_compile_cache_env`), so identical programs of fresh jits (each
  `Trainer` jits its own closures) load from it instead of compiling again."""
  yield


@pytest.fixture(scope="module")
def subprocess_env(_compile_cache_dir):
  """An environment for launch.py subprocesses: they share the session's XLA cache and
  compile options with the in-process tests, so each distinct program compiles once."""
  out = dict(os.environ)
  del _compile_cache_dir   # in the environment already (pytest_configure)
  out.update(_compile_cache_env())
  out.update(JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return out


def random_variables_for(module, *args, seed=0, scale=0.5, **kwargs):
  """Variables of `module.init(key, *args, **kwargs)`'s structure, drawn U(-scale, scale)
  with numpy: no recurrence is compiled just to make parameters."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.uniform(-scale, scale, s.shape), s.dtype), abstract)


@pytest.fixture(scope="session")
def random_variables():
  """`random_variables(module, *init_args, seed=0, scale=0.5)` -> variables for `module`."""
  return random_variables_for
