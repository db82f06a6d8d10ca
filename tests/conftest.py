"""Shared pytest setup: fast compiles, compilation caches, random variables. The tests import
birnn_jax as installed (scripts/test.sh installs the built wheel), never from a path edit."""

import functools
import os
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
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


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib knows `flag`: XLA aborts the process on an unknown one, so ask a
  child process (once per test session)."""
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}",
             JAX_PLATFORMS="cpu")
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                         capture_output=True, check=False, timeout=120)
  return probe.returncode == 0


def pytest_configure(config):
  """Adds the fast-compiling XLA flag to the environment before any backend starts. Run in
  the main process only: pytest-xdist's workers and launch.py subprocesses inherit it."""
  del config
  flags = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("PYTEST_XDIST_WORKER") or _FAST_CPU_EMITTERS.split("=")[0] in flags:
    return   # a worker, or the user chose
  if _xla_accepts(_FAST_CPU_EMITTERS):
    os.environ["XLA_FLAGS"] = f"{flags} {_FAST_CPU_EMITTERS}".strip()


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
def _compile_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_compile_cache")


@pytest.fixture(scope="module")
def compile_cache(_compile_cache_dir):
  """A persistent XLA compilation cache for this module (one folder per test session and
  worker): each `Trainer` jits fresh closures, so without it every Trainer of the same
  config recompiles. Identical programs load from the cache instead. Restored afterwards.
  Opt in with `pytestmark = pytest.mark.usefixtures("compile_cache")`."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: jax.config.values[n] for n in names}
  jax.config.update("jax_compilation_cache_dir", str(_compile_cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def subprocess_env(_compile_cache_dir):
  """An environment for launch.py subprocesses: they share the session's XLA cache and
  compile options with the in-process tests, so each distinct program compiles once."""
  out = dict(os.environ)
  out.update(JAX_COMPILATION_CACHE_DIR=str(_compile_cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
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
