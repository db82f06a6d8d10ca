"""Compile once: what compile_log counts, where compile_cache keeps programs, and that a second
launch.py run of the same config compiles nothing and computes the same results."""

import json
import logging
import pathlib
import re
import subprocess
import sys
import threading

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import compile_cache
from birnn_jax.training import compile_log

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


@pytest.fixture
def settings_restored():
  """The suite's compilation-cache settings back after the test."""
  old = {name: jax.config.values[name] for name in _SETTINGS}
  yield
  for name, value in old.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture
def own_cache(tmp_path, settings_restored):
  """compile_cache.enable on an empty folder for this test."""
  del settings_restored
  compile_cache.enable(tmp_path / "xla")
  return tmp_path / "xla"


def make_program(scale: float):
  """A new function object (so nothing of JAX's in-memory caches applies) of one program."""
  def program(x):
    return jnp.tanh(x * scale) @ x.T
  return program


def test_a_program_compiles_once_then_comes_from_the_persistent_cache(own_cache):
  x = np.ones((3, 5), np.float32)
  before = compile_log.snapshot()
  first = jax.jit(make_program(2.0))(x)
  compiled = compile_log.snapshot() - before
  assert compiled.compiles >= 1 and compiled.cache_hits == 0
  assert compiled.traces >= 1 and compiled.compile_s > 0
  assert any(own_cache.iterdir())   # written to the folder we gave
  before = compile_log.snapshot()
  second = jax.jit(make_program(2.0))(x)   # the same program, traced afresh
  read = compile_log.snapshot() - before
  assert (read.compiles, read.cache_hits) == (0, compiled.compiles)
  np.testing.assert_array_equal(first, second)
  before = compile_log.snapshot()
  jax.jit(make_program(3.0))(x)            # another constant: another program
  assert (compile_log.snapshot() - before).compiles >= 1


def test_by_default_the_cache_is_bounded_so_that_jax_locks_it(tmp_path, monkeypatch,
                                                              settings_restored):
  del settings_restored
  monkeypatch.delenv(compile_cache.MAX_SIZE_ENV_VAR, raising=False)
  compile_cache.enable(tmp_path / "xla")
  assert jax.config.values["jax_compilation_cache_max_size"] == compile_cache.DEFAULT_MAX_SIZE_BYTES
  assert jax.config.values["jax_persistent_cache_min_compile_time_secs"] == 0
  jax.jit(make_program(11.0))(np.ones((2, 2), np.float32))
  assert (tmp_path / "xla" / ".lockfile").exists()   # JAX's file lock, for concurrent runs
  # JAX's own variable wins (JAX reads it when it is imported; set here by hand).
  monkeypatch.setenv(compile_cache.MAX_SIZE_ENV_VAR, "-1")
  jax.config.update("jax_compilation_cache_max_size", -1)
  compile_cache.enable(tmp_path / "xla2")
  assert jax.config.values["jax_compilation_cache_max_size"] == -1


def test_off_turns_the_cache_off_even_when_the_environment_sets_one(own_cache, monkeypatch):
  monkeypatch.setenv(compile_cache.ENV_VAR, str(own_cache))
  assert compile_cache.configure("off") is None and compile_cache.directory() is None
  x = np.ones((2, 2), np.float32)
  before = compile_log.snapshot()
  jax.jit(make_program(7.0))(x)
  jax.jit(make_program(7.0))(x)
  counts = compile_log.snapshot() - before
  assert counts.compiles >= 2 and counts.cache_hits == 0
  assert compile_cache.configure(None) == own_cache == compile_cache.directory()


def test_logged_names_a_function_recompiled_for_new_shapes(caplog):
  fn = jax.jit(make_program(5.0))
  with caplog.at_level(logging.INFO), compile_log.logged("the test span"):
    fn(np.ones((2, 4), np.float32))
    fn(np.ones((2, 4), np.float32))   # the same shapes: no new program
    fn(np.ones((3, 4), np.float32))
  (message,) = [r.getMessage() for r in caplog.records if "the test span" in r.getMessage()]
  assert "recompiled (new shapes or shardings): jit(program) x2" in message, message
  with caplog.at_level(logging.INFO), compile_log.logged("the quiet span"):
    fn(np.ones((3, 4), np.float32))
  assert any("the quiet span: 0 XLA compiles" in r.getMessage() and "no recompiles" in
             r.getMessage() for r in caplog.records)


def test_work_on_another_thread_is_counted_for_its_label():
  compile_log.install()
  x = np.ones((2, 3), np.float32)
  def work():
    with compile_log.attributed_to("a run on another thread"):
      jax.jit(make_program(5.0))(x)
  thread = threading.Thread(target=work)
  thread.start()
  thread.join()
  counts = compile_log.snapshot(of="a run on another thread")
  assert counts.traces >= 1 and dict(counts.programs) == {"jit(program)": 1}
  assert compile_log.snapshot(of="a run that built nothing") == compile_log.Counts()
  assert compile_log.snapshot().traces >= counts.traces   # the process total holds it too


def test_counts_subtract_and_print():
  a = compile_log.Counts(traces=3, compiles=2, compile_s=1.5, cache_hits=1, cache_s=0.25,
                         programs=(("jit(f)", 2), ("jit(g)", 1)))
  b = compile_log.Counts(traces=1, compiles=1, compile_s=0.5, programs=(("jit(f)", 1),))
  d = a - b
  assert (d.traces, d.compiles, d.compile_s, d.cache_hits) == (2, 1, 1.0, 1)
  assert d.programs == (("jit(f)", 1), ("jit(g)", 1)) and d.rebuilt == {}
  assert a.rebuilt == {"jit(f)": 2} and a.seconds == pytest.approx(1.75)
  assert str(d).startswith("1 XLA compiles (1.0 s), 1 programs read from the persistent")


def test_where_the_cache_is(tmp_path, monkeypatch):
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  assert compile_cache.resolve(None) == compile_cache.resolve("") == compile_cache.DEFAULT_DIR
  assert compile_cache.DEFAULT_DIR == pathlib.Path.home() / ".cache" / "birnn_jax" / "xla"
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
  assert compile_cache.resolve(None) == tmp_path / "env"
  assert compile_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"
  assert compile_cache.resolve("off") is None


def test_an_unusable_folder_is_a_config_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(errors.ConfigError, match=r"--compile_cache=.*a_file/xla.* cannot write"):
    compile_cache.enable(blocker / "xla")
  with pytest.raises(errors.ConfigError, match="max_size_bytes=0"):
    compile_cache.enable(tmp_path / "xla", max_size_bytes=0)


# launch.py: the second run of a config compiles nothing ---------------------------------------

_COUNT = re.compile(r"Compilation in this run: (\d+) XLA compiles .*?, (\d+) programs read")
_QUICK = ("--config=experiments/synthetic_tagging.py:smoke", "--config.train.num_steps=4",
          "--config.train.log_every=2", "--config.train.eval_every=4",
          "--config.train.checkpoint_every=4")


def test_a_second_run_of_a_config_compiles_nothing_and_computes_the_same(
    tmp_path, subprocess_env, _compile_cache_dir):
  """Both runs use the suite's own cache (given by --compile_cache), so the first compiles
  only what no earlier test compiled (nothing, once the cache is warm); the second compiles
  nothing at all and reads every program it builds from the cache."""
  runs = []
  for name in ("first", "second"):
    proc = subprocess.run(
        [sys.executable, "launch.py", *_QUICK, f"--workdir={tmp_path / name}",
         f"--compile_cache={_compile_cache_dir}"], cwd=ROOT, env=subprocess_env,
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (count,) = _COUNT.findall(proc.stderr)
    runs.append((tuple(map(int, count)), json.loads((tmp_path / name / "results.json")
                                                    .read_text())))
  (compiled, read), (recompiled, reread) = runs[0][0], runs[1][0]
  assert recompiled == 0 and reread == compiled + read > 0
  strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  assert {k: strip(v) if isinstance(v, dict) else v for k, v in runs[1][1].items()} == {
      k: strip(v) if isinstance(v, dict) else v for k, v in runs[0][1].items()}
