"""Reliability: a run survives SIGTERM/SIGINT, kill -9, NaNs and bad input without losing work.

Mostly launch.py in subprocesses on experiments/synthetic_tagging.py:smoke, as a user (or a
preempting scheduler) would drive it:
- SIGTERM/SIGINT in training: a checkpoint at the current step, the metrics so far, exit 0 and
  a line saying how to resume; the same command then resumes and ends exactly where an
  uninterrupted run ends (slow).
- kill -9 at seeded random points (during saves, between a metrics row and its checkpoint):
  the next run resumes from the last complete checkpoint and the metrics rows and results
  equal an uninterrupted run's (slow).
- NaN/Inf: stops naming the step and what became non-finite, exit 1, the last good
  checkpoint byte-for-byte untouched; `nan_policy='skip'` skips exactly those updates.
- Bad flags, values, data, workdirs: one `launch.py: error:` line naming the key/file/folder,
  exit 1, no traceback, and nothing written (or no workdir at all) - before any compute.
- A workdir of another config is refused showing the differing keys; --force_fresh starts
  over, and re-running that same command after an interruption resumes (slow).
Checkpoint-level behaviour (leftover tmp folders, unreadable steps, full disks) is also tested
in-process on `birnn_jax.training.checkpoint` directly.
"""

import concurrent.futures
import errno
import json
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import config_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import train
from birnn_jax.data import common

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "--config=experiments/synthetic_tagging.py:smoke"
VARIANTS = ("bidirectional", "unidirectional")
# Long enough that a signal lands mid-training; log rows every 3 steps and checkpoints every 5,
# so most stops and resumes fall between two rows (the partial sums travel with the checkpoint).
LONG = ("--config.train.num_steps=200", "--config.train.checkpoint_every=5",
        "--config.train.log_every=3")
# For exact comparisons with an uninterrupted run: dropout between two layers makes the
# dropout RNG stream part of what must match.
SHORT = ("--config.train.num_steps=30", "--config.train.checkpoint_every=5",
         "--config.train.log_every=3", "--config.model.num_layers=2",
         "--config.model.dropout=0.2")
PROGRESS = re.compile(r"step (\d+)/(\d+) \|")
TIMEOUT = 600
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(subprocess_env):
  return subprocess_env


def command(workdir, *args, config=SMOKE) -> list[str]:
  return [sys.executable, "launch.py", config, f"--workdir={workdir}", *args]


def launch(env, workdir, *args, config=SMOKE, timeout=TIMEOUT, **kw):
  return subprocess.run(command(workdir, *args, config=config), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False, **kw)


class Run:
  """launch.py in the background, its stderr read line by line as it comes."""

  def __init__(self, env, workdir, *args):
    self.proc = subprocess.Popen(command(workdir, *args), cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, pattern: re.Pattern, timeout: float = TIMEOUT, start: int = 0):
    """The first match in stderr lines[start:], or None once the process has exited."""
    deadline = time.monotonic() + timeout
    seen = start
    while time.monotonic() < deadline:
      while seen < len(self.lines):
        if m := pattern.search(self.lines[seen]):
          return m
        seen += 1
      if self.proc.poll() is not None and not self._reader.is_alive() and seen == len(
          self.lines):
        return None
      time.sleep(0.01)
    raise TimeoutError(f"no {pattern.pattern!r} in {timeout}s:\n{self.stderr[-3000:]}")

  def finish(self, timeout: float = TIMEOUT) -> int:
    rc = self.proc.wait(timeout)
    self._reader.join(timeout)
    return rc

  @property
  def stderr(self) -> str:
    return "".join(self.lines)


def assert_clean_error(proc, *needles):
  """Exit 1, every needle on stderr, and no traceback through our code."""
  tail = proc.stderr[-3000:]
  assert proc.returncode == 1, f"rc={proc.returncode}\n{tail}"
  for needle in needles:
    assert needle in proc.stderr, f"{needle!r} not in stderr:\n{tail}"
  assert "launch.py: error:" in proc.stderr or "FATAL Flags parsing error" in proc.stderr, tail
  assert not re.search(r'File ".*(launch\.py|birnn_jax/)', proc.stderr), (
      f"a traceback reached the user:\n{tail}")


def steps_in(checkpoints: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def assert_never_trained(vdir: pathlib.Path) -> None:
  """A later variant's folder (made when the experiment starts, so that its steps compile
  while the first variant trains) holds no checkpoint, metrics or results."""
  assert not (vdir / "checkpoints").exists() or not steps_in(vdir / "checkpoints")
  assert not (vdir / "metrics.jsonl").exists() and not (vdir / "results.json").exists()


def tmp_dirs(workdir: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in workdir.rglob(f"*{TMP_SUFFIX}*") if p.is_dir()]


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def rows(workdir: pathlib.Path) -> list[dict]:
  return metrics_lib.read_metrics(workdir / "metrics.jsonl")


def metrics_files(vdir: pathlib.Path) -> list[pathlib.Path]:
  """A variant's metrics.jsonl: its own, or each member's (`seed_<s>/`)."""
  return sorted(vdir.glob("seed_*/metrics.jsonl")) or [vdir / "metrics.jsonl"]


def without_timing(obj):
  if isinstance(obj, dict):
    return {k: without_timing(v) for k, v in obj.items() if k != "train_seconds"}
  if isinstance(obj, list):   # e.g. each member's results
    return [without_timing(v) for v in obj]
  return obj


def row_steps(last: int) -> list[int]:
  """The steps with a metrics row, up to `last`: log rows (every 3) and eval rows (every 10)."""
  return [s for s in range(1, last + 1) if s % 3 == 0 or s % 10 == 0]


def stop_step(stderr: str, name: str) -> int:
  m = re.search(rf"Received {name} at step (\d+): saved a checkpoint in (\S+)\. Re-run the "
                r"same command to resume from step (\d+)\.", stderr)
  assert m, f"no resume instructions on stderr:\n{stderr[-3000:]}"
  assert m.group(1) == m.group(3)
  return int(m.group(1))


# --- signals (fast) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, env):
  """A LONG run of the smoke experiment, SIGTERMed once training is under way."""
  workdir = tmp_path_factory.mktemp("sigterm") / "run"
  run = Run(env, workdir, *LONG)
  assert run.wait_for(PROGRESS), f"training never started:\n{run.stderr[-3000:]}"
  run.proc.send_signal(signal.SIGTERM)
  rc = run.finish(timeout=180)
  return workdir, rc, run.stderr


def test_sigterm_saves_a_checkpoint_and_exits_zero(sigterm_run):
  workdir, rc, stderr = sigterm_run
  assert rc == 0, stderr[-3000:]
  step = stop_step(stderr, "SIGTERM")
  assert 0 < step < 200
  assert not re.search(r'File ".*(launch\.py|birnn_jax/)', stderr), stderr[-3000:]
  vdir = workdir / "bidirectional"
  # The checkpoint of the step it stopped at is the latest, complete, with its partial sums.
  assert steps_in(vdir / "checkpoints")[-1] == step
  assert not tmp_dirs(workdir)
  host_state = json.loads((vdir / "checkpoints" / ckpt_lib.HOST_STATE).read_text())
  assert str(step) in host_state
  # The metrics so far are on disk: every log row up to that step, none after it.
  assert [r["step"] for r in rows(vdir)] == row_steps(step)
  assert json.loads((vdir / "config.json").read_text())["train"]["num_steps"] == 200
  # It stopped: no later variant trained, no final results.
  assert_never_trained(workdir / "unidirectional")
  assert not (workdir / "results.json").exists() and not (vdir / "results.json").exists()


# --- a workdir of another config (fast: refused before any compute) ------------------------

def copy_of(sigterm_run, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "copy"
  shutil.copytree(sigterm_run[0], workdir)
  return workdir


def test_refuses_to_resume_another_config_showing_the_keys(sigterm_run, tmp_path, env):
  workdir = copy_of(sigterm_run, tmp_path)
  before = snapshot(workdir)
  proc = launch(env, workdir, *LONG, "--config.model.hidden_size=16",
                "--config.optim.learning_rate=0.5", timeout=300)
  assert_clean_error(proc, "holds a run of a different config",
                     "model.hidden_size: 8 -> 16", "optim.learning_rate: 0.01 -> 0.5",
                     "--force_fresh")
  assert "train.num_steps" not in proc.stderr  # how long to train is not a difference
  assert snapshot(workdir) == before, "the refused run touched the workdir"


def test_refuses_to_resume_with_another_number_of_members_naming_both(sigterm_run, tmp_path,
                                                                     env):
  workdir = copy_of(sigterm_run, tmp_path)
  before = snapshot(workdir)
  proc = launch(env, workdir, *LONG, "--config.train.num_seeds=4", timeout=300)
  assert_clean_error(proc, "holds a run of a different config", "train.num_seeds: 1 -> 4")
  assert snapshot(workdir) == before, "the refused run touched the workdir"


def test_unreadable_config_json_is_refused_not_a_traceback(sigterm_run, tmp_path, env):
  workdir = copy_of(sigterm_run, tmp_path)
  saved = workdir / "bidirectional" / "config.json"
  saved.write_text(saved.read_text()[:100])  # as a kill under a non-atomic writer would leave
  proc = launch(env, workdir, *LONG, timeout=300)
  assert_clean_error(proc, f"{saved} is unreadable", "--force_fresh")


# --- bad flags, values, data and workdirs (fast: all before any compute) -------------------

def corrupt_conllu(root: pathlib.Path) -> tuple[pathlib.Path, int]:
  """A copy of UD EWT whose train file has a token line with 3 of its 10 columns."""
  src, dst = common.BUNDLED_DIR / "ud_english_ewt", root / "ud_english_ewt"
  dst.mkdir(parents=True)
  for split in ("dev", "test"):
    (dst / f"en_ewt-ud-{split}.conllu.xz").symlink_to(src / f"en_ewt-ud-{split}.conllu.xz")
  lines = common.read_bytes(src / "en_ewt-ud-train.conllu.xz").decode().splitlines(True)[:200]
  bad = next(i for i, line in enumerate(lines) if line.startswith("8\t"))
  lines[bad] = "\t".join(lines[bad].split("\t")[:3]) + "\n"
  (dst / "en_ewt-ud-train.conllu").write_text("".join(lines), encoding="utf-8")
  return dst / "en_ewt-ud-train.conllu", bad + 1


def corrupt_time_machine(root: pathlib.Path) -> tuple[pathlib.Path, int]:
  """A copy of The Time Machine with a byte that is not UTF-8 on line 7."""
  dst = root / "time_machine"
  dst.mkdir(parents=True)
  lines = common.read_bytes(common.BUNDLED_DIR / "time_machine" / "timemachine.txt.xz").split(
      b"\n")
  lines[6] = lines[6][:10] + b"\xff" + lines[6][10:]
  (dst / "timemachine.txt").write_bytes(b"\n".join(lines))
  return dst / "timemachine.txt", 7


def bad_input_cases(tmp: pathlib.Path) -> dict:
  """name -> (launch args, workdir, strings stderr must contain, whether the workdir may
  exist afterwards)."""
  regular_file = tmp / "a_file"
  regular_file.write_text("not a folder\n")
  cases = {
      "type": (["--config.train.batch_size=abc"], ["--config.train.batch_size", "abc"]),
      "unknown_key": (["--config.train.batchsize=4"],
                      ["--config.train.batchsize", "did you mean 'batch_size'"]),
      "zero_batch": (["--config.train.batch_size=0"], ["config.train.batch_size=0"]),
      "dropout": (["--config.model.dropout=1.5"], ["config.model.dropout=1.5"]),
      "negative_hidden": (["--config.model.hidden_size=-4"], ["config.model.hidden_size=-4"]),
      "merge_none_bidirectional": (["--config.model.merge=none"],
                                   ["config.model.merge='none'"]),
  }
  out = {name: (args, tmp / name / "run", needles, False)
         for name, (args, needles) in cases.items()}
  out["workdir_under_a_file"] = (
      [], regular_file / "run", ["cannot write to the workdir", str(regular_file / "run")],
      False)
  path, line = corrupt_conllu(tmp / "pos_data")
  out["malformed_conllu"] = (
      ["--config=experiments/pos_ewt.py:smoke", f"--config.data.dir={tmp / 'pos_data'}"],
      tmp / "pos_run", [f"{path}:{line}:"], True)
  path, line = corrupt_time_machine(tmp / "tm_data")
  out["malformed_time_machine"] = (
      ["--config=experiments/masked_time_machine.py:smoke",
       f"--config.data.dir={tmp / 'tm_data'}"],
      tmp / "tm_run", [f"{path}:{line}:", "UTF-8"], True)
  return out


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, env, request):
  """Runs the bad-input cases this session selected, at once (each is only imports and a
  refusal)."""
  tmp = tmp_path_factory.mktemp("bad_input")
  cases = bad_input_cases(tmp)
  selected = {item.callspec.params["name"] for item in request.session.items
              if item.originalname == "test_bad_input_fails_before_compute_naming_what"}

  def go(case):
    args, workdir, _, _ = case
    config = next((a for a in args if a.startswith("--config=")), SMOKE)
    args = [a for a in args if not a.startswith("--config=")]
    return launch(env, workdir, *args, config=config, timeout=300)

  names = [name for name in cases if name in selected]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    procs = dict(zip(names, pool.map(go, [cases[name] for name in names])))
  return cases, procs


# Each case is a launch.py process (seconds of imports). The fast suite runs one of each
# way to fail: a flag that does not parse, a workdir that cannot be made, a malformed corpus.
# The rest are slow here because faster tests keep their promise: an unknown key and an
# invalid value through launch.py in test_launch.py, and every invalid value's message in
# process in test_config_lib.py; malformed Time Machine bytes in test_text.py.
_FAST_BAD_INPUTS = ("type", "workdir_under_a_file", "malformed_conllu")
BAD_INPUTS = [pytest.param(name, marks=() if name in _FAST_BAD_INPUTS else pytest.mark.slow)
              for name in ("type", "unknown_key", "zero_batch", "dropout", "negative_hidden",
                           "merge_none_bidirectional", "workdir_under_a_file",
                           "malformed_conllu", "malformed_time_machine")]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_fails_before_compute_naming_what(bad_input_runs, name):
  cases, procs = bad_input_runs
  _, workdir, needles, workdir_may_exist = cases[name]
  assert_clean_error(procs[name], *needles)
  if workdir_may_exist:  # the task reads its data after making the workdir
    written = [p for p in workdir.rglob("*") if p.is_file()] if workdir.exists() else []
    assert not written, written
  else:
    assert not workdir.exists(), sorted(workdir.rglob("*"))


# --- non-finite loss (fast) ----------------------------------------------------------------

def test_nan_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, env):
  """A huge learning rate (Adam moves every weight by ~lr) overflows on the next step."""
  workdir = tmp_path / "run"
  proc = launch(env, workdir, "--config.optim.learning_rate=1e38",
                "--config.optim.clip_norm=0", "--config.train.checkpoint_every=1",
                timeout=300)
  assert_clean_error(proc, "became non-finite", "is untouched")
  m = re.search(r"launch\.py: error: step (\d+): (.+?) became non-finite \(loss=(\S+), "
                r"grad_norm=(\S+)\)\. Stopping; the last good checkpoint \(step (\d+)\)",
                proc.stderr)
  assert m, proc.stderr[-3000:]
  bad, last_good = int(m.group(1)), int(m.group(5))
  assert "loss" in m.group(2) and m.group(3) in ("nan", "inf", "-inf"), m.group(0)
  checkpoints = workdir / "bidirectional" / "checkpoints"
  assert steps_in(checkpoints) == list(range(1, bad))[-2:] and last_good == bad - 1
  assert not tmp_dirs(workdir)
  assert not (workdir / "results.json").exists()
  assert_never_trained(workdir / "unidirectional")


def smoke_config(**train_overrides):
  config = config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  config.train.log_every = 3
  config.train.checkpoint_every = 3
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


def poisoned_trainer(config, workdir, bad_steps=()) -> train.Trainer:
  """A Trainer whose batches at `bad_steps` (0-based) hold an out-of-vocabulary id: its
  embedding is NaN (jnp.take fills), so the loss and gradients of those steps are NaN."""
  trainer = train.Trainer(config, workdir)
  poison(trainer.task, bad_steps)
  return trainer


def poison(task, bad_steps) -> None:
  """`task`'s training batches at `bad_steps` hold an out-of-vocabulary id (see above)."""
  original = task.train_batch

  def batch(step):
    out = original(step)
    if step in bad_steps:
      out = dict(out, tokens=out["tokens"].copy())
      out["tokens"][0, 0] = 10**6
    return out

  task.train_batch = batch


def test_nan_leaves_the_last_good_checkpoint_byte_for_byte(tmp_path):
  workdir = tmp_path / "run"
  poisoned_trainer(smoke_config(num_steps=6), workdir).train()
  before, rows_before = snapshot(workdir / "checkpoints"), rows(workdir)
  assert steps_in(workdir / "checkpoints") == [3, 6]
  trainer = poisoned_trainer(smoke_config(num_steps=20), workdir, bad_steps={7})
  with pytest.raises(errors.NonFiniteError,
                     match=r"^step 8: loss and grad_norm and the updated parameters became "
                           r"non-finite \(loss=nan, grad_norm=nan\)\. Stopping; the last good "
                           r"checkpoint \(step 6\)"):
    trainer.train()
  assert snapshot(workdir / "checkpoints") == before
  assert rows(workdir) == rows_before
  # ... and it is the state a clean 6-step run ends with.
  params = ckpt_lib.restore(trainer.manager, trainer.init_state())["params"]
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_a_member_gone_nan_stops_the_run_naming_it_and_loses_nothing(tmp_path):
  """train.num_seeds = 2: member 1 (seed 1) turns NaN at step 8; the run stops naming it,
  and every member's last good checkpoint and metrics rows are untouched."""
  from birnn_jax.training import members  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"

  def run(num_steps, bad_steps=()):
    trainer = members.make_trainer(smoke_config(num_steps=num_steps, num_seeds=2), workdir)
    poison(trainer.tasks[1], bad_steps)
    return trainer

  run(6).train()
  member_rows = lambda: [metrics_lib.read_metrics(workdir / f"seed_{s}" / "metrics.jsonl")
                         for s in (0, 1)]
  before, rows_before = snapshot(workdir / "checkpoints"), member_rows()
  trainer = run(20, bad_steps={7})
  with pytest.raises(errors.NonFiniteError,
                     match=r"^member 1 \(seed 1\): step 8: loss and grad_norm .* the last "
                           r"good checkpoint \(step 6\)"):
    trainer.train()
  assert snapshot(workdir / "checkpoints") == before
  assert member_rows() == rows_before and all(rows_before)


def test_nan_policy_skip_skips_exactly_those_updates(tmp_path):
  config = smoke_config(num_steps=12, checkpoint_every=1, keep_checkpoints=20,
                        nan_policy="skip")
  trainer = poisoned_trainer(config, tmp_path / "run", bad_steps={6, 7, 8, 10})
  results = trainer.train()
  assert results["steps"] == 12 and np.isfinite(results["test_loss"])
  by_step = {r["step"]: r for r in rows(tmp_path / "run")}
  assert sorted(by_step) == [3, 6, 9, 10, 12]  # 10: an eval row
  assert not any("train_skipped_steps" in by_step[s] for s in (3, 6, 10))
  assert by_step[9]["train_skipped_steps"] == 3 and "train_loss" not in by_step[9]
  assert by_step[12]["train_skipped_steps"] == 1 and np.isfinite(by_step[12]["train_loss"])

  def saved(step):
    return jax.device_get(ckpt_lib.restore(trainer.manager, trainer.init_state(), step=step))

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  s6, s9, s10, s11 = saved(6), saved(9), saved(10), saved(11)
  assert same(s6["params"], s9["params"]) and same(s6["opt_state"], s9["opt_state"])
  assert not same(s9["params"], s10["params"])  # step 10 was a real update
  assert same(s10["params"], s11["params"])
  assert int(s9["step"]) == 9  # the step counter (and so the data order) moves on


# --- an unwritable or full workdir ---------------------------------------------------------

def link_or_copy(src, dst):
  """A hard link (instant, and safe: JAX never rewrites a file of an unbounded cache such as
  the tests', it only adds new ones), else a copy (another filesystem)."""
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


def test_full_disk_during_a_checkpoint_save_is_one_clear_error(tmp_path, env,
                                                               _compile_cache_dir):
  """RLIMIT_FSIZE makes every write past 8 KiB fail with EFBIG, as a full disk fails with
  ENOSPC: config.json and the first rows fit, the first checkpoint does not."""
  cache = tmp_path / "xla_cache"  # the limit also truncates cache entries: use a copy
  shutil.copytree(_compile_cache_dir, cache, copy_function=link_or_copy)
  limited = dict(env, JAX_COMPILATION_CACHE_DIR=str(cache))
  workdir = tmp_path / "run"
  limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
  proc = launch(limited, workdir, *LONG, preexec_fn=limit, timeout=300)
  checkpoints = workdir / "bidirectional" / "checkpoints"
  assert_clean_error(proc, f"could not save the checkpoint of step 5 in {checkpoints}",
                     "File too large", "re-run the same command to resume")
  assert steps_in(checkpoints) == []  # the half-written step is only a tmp folder


def test_unwritable_workdir_is_named_in_process(tmp_path, monkeypatch):
  regular_file = tmp_path / "file"
  regular_file.write_text("x")
  with pytest.raises(ckpt_lib.WorkdirError, match=re.escape(
      f"cannot write to the workdir {regular_file / 'sub'}: Not a directory")):
    ckpt_lib.ensure_writable(regular_file / "sub")

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(ckpt_lib.WorkdirError, match=re.escape(
      f"workdir {tmp_path / 'w'}: No space left on device")):
    ckpt_lib.ensure_writable(tmp_path / "w")
  assert not list((tmp_path / "w").iterdir())  # the probe file is gone again


def tiny_state(value: float) -> dict:
  return {"step": jnp.asarray(int(value), jnp.int32),
          "params": {"w": jnp.full((2, 3), value, jnp.float32)}}


def train_cfg(**kw):
  t = config_lib.base_config().train
  for k, v in kw.items():
    t[k] = v
  return t


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    ValueError("OUT_OF_RANGE: Error writing local file \"x/_sharding\": Failed to write 517 "
               "bytes to file 21: No space left on device [os_error_code='28']"),
])
def test_save_on_a_full_disk_raises_workdir_error(tmp_path, monkeypatch, error):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  ckpt_lib.save(manager, 1, tiny_state(1))

  def refuse(*args, **kwargs):
    raise error

  monkeypatch.setattr(manager, "save", refuse)
  with pytest.raises(ckpt_lib.WorkdirError, match=re.escape(
      f"checkpoint of step 2 in {manager.directory}: No space left on device. Earlier "
      "checkpoints are intact")):
    ckpt_lib.save(manager, 2, tiny_state(2))


def test_save_lets_real_bugs_through(tmp_path, monkeypatch):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())

  def buggy(*args, **kwargs):
    raise ValueError("tree structure mismatch")

  monkeypatch.setattr(manager, "save", buggy)
  with pytest.raises(ValueError, match="tree structure mismatch"):
    ckpt_lib.save(manager, 1, tiny_state(1))


# --- half-written and damaged checkpoints (in-process) -------------------------------------

def test_leftover_tmp_folder_is_never_loaded_and_is_cleaned_up(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  for step in (1, 2):
    ckpt_lib.save(manager, step, tiny_state(step))
  folder = tmp_path / "checkpoints"
  # What a kill -9 in the middle of saving step 3 leaves: a tmp folder, half written.
  shutil.copytree(folder / "2", folder / f"3{TMP_SUFFIX}")
  for f in (folder / f"3{TMP_SUFFIX}").rglob("*"):
    if f.is_file() and f.name != "_CHECKPOINT_METADATA":
      f.write_bytes(b"\0" * 3)
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  assert manager.latest_step() == 2
  restored = ckpt_lib.restore(manager, tiny_state(0))
  assert int(restored["step"]) == 2
  ckpt_lib.save(manager, 3, tiny_state(3))  # the same step saves cleanly over the leftover
  assert steps_in(folder) == [2, 3] and not tmp_dirs(tmp_path)
  assert int(ckpt_lib.restore(manager, tiny_state(0))["step"]) == 3


def test_unreadable_latest_step_falls_back_and_is_moved_aside(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=3))
  for step in (1, 2, 3):
    ckpt_lib.save(manager, step, tiny_state(step))
  folder = tmp_path / "checkpoints"
  # A deletion cut short (orbax deletes files in place) leaves a step folder without data.
  for f in (folder / "3" / "default").rglob("*"):
    if f.is_file() and f.name != "_METADATA":
      f.unlink()
  manager = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=3))
  restored = ckpt_lib.restore(manager, tiny_state(0))
  assert int(restored["step"]) == 2
  assert steps_in(folder) == [1, 2] and list(folder.glob("3.unreadable-*"))
  ckpt_lib.save(manager, 3, tiny_state(3))  # training goes on through step 3 again
  assert int(ckpt_lib.restore(manager, tiny_state(0))["step"]) == 3


def test_when_no_step_is_readable_restore_raises_and_moves_nothing(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  ckpt_lib.save(manager, 1, tiny_state(1))
  wrong_shape = {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros((5,))}}
  with pytest.raises(Exception):  # a code or config change, not a damaged disk
    ckpt_lib.restore(manager, wrong_shape)
  assert steps_in(tmp_path / "checkpoints") == [1]


def test_host_state_travels_with_its_step(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=2))
  for step in (1, 2, 3, 4):
    ckpt_lib.save(manager, step, tiny_state(step), host_state={"window": {"loss": step / 3}})
  assert ckpt_lib.restored_host_state(manager, 4) == {"window": {"loss": 4 / 3}}
  assert ckpt_lib.restored_host_state(manager, 3) == {"window": {"loss": 1.0}}
  assert ckpt_lib.restored_host_state(manager, 1) == {}  # pruned with its checkpoint
  assert ckpt_lib.restored_host_state(manager, 99) == {}


# --- slow: resume equals an uninterrupted run ----------------------------------------------

# A run of one seed, and of 4 members in one program (train.num_seeds: each member's rows in
# <variant>/seed_<s>/, every member in one checkpoint).
MEMBERS = {1: (), 4: ("--config.train.num_seeds=4",)}


@pytest.fixture(scope="module", params=sorted(MEMBERS), ids=lambda n: f"seeds{n}")
def reference(request, tmp_path_factory, env):
  """An uninterrupted SHORT run: the curves every interrupted run must reproduce; (its
  workdir, the arguments of its command)."""
  args = (*SHORT, *MEMBERS[request.param])
  workdir = tmp_path_factory.mktemp("reference") / "run"
  proc = launch(env, workdir, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, args


def assert_same_run(workdir: pathlib.Path, reference: pathlib.Path):
  for variant in VARIANTS:
    files = metrics_files(reference / variant)
    assert [f.relative_to(workdir) for f in metrics_files(workdir / variant)] == [
        f.relative_to(reference) for f in files]
    for file in files:
      got = metrics_lib.read_metrics(workdir / file.relative_to(reference))
      want = metrics_lib.read_metrics(file)
      assert [r["step"] for r in got] == [r["step"] for r in want], file
      for a, b in zip(got, want):
        assert a == b, f"{file} row at step {b['step']} differs: {a} != {b}"
  got = without_timing(json.loads((workdir / "results.json").read_text()))
  assert got == without_timing(json.loads((reference / "results.json").read_text()))


@pytest.mark.slow
def test_sigint_then_the_same_command_resumes_exactly(reference, tmp_path, env):
  reference, args = reference
  workdir = tmp_path / "run"
  run = Run(env, workdir, *args)
  assert run.wait_for(PROGRESS), run.stderr[-3000:]
  run.proc.send_signal(signal.SIGINT)
  assert run.finish() == 0, run.stderr[-3000:]
  step = stop_step(run.stderr, "SIGINT")
  assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr
  for file in metrics_files(workdir / "bidirectional"):
    assert [r["step"] for r in metrics_lib.read_metrics(file)] == row_steps(step)
  proc = launch(env, workdir, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(rf"Resuming from \S+bidirectional/checkpoints at step {step}\.",
                   proc.stderr), proc.stderr[-3000:]
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(reference, tmp_path,
                                                                        env):
  """Up to 8 kill -9s at seeded random points: a random delay into training, the moment a
  checkpoint's tmp folder appears (mid-save), or right after a metrics row is appended
  (before its checkpoint). Then the same command runs to the end. With 4 members too."""
  reference, args = reference
  rng = random.Random(20240611)
  workdir = tmp_path / "run"
  log = []
  for _ in range(8):
    run = Run(env, workdir, *args)
    if not run.wait_for(PROGRESS):  # already done (or failed: checked below)
      assert run.finish() == 0, run.stderr[-3000:]
      break
    # Each kill comes k events into this run, so the kills walk through the whole run.
    mode, k = rng.choice(["delay", "mid_save", "after_row"]), rng.randint(1, 5)
    if mode == "delay":  # k progress rows in, then a random fraction of a second
      for _ in range(k - 1):
        run.wait_for(PROGRESS, start=len(run.lines))
      time.sleep(rng.uniform(0.0, 0.5))
    elif mode == "mid_save":  # as the k-th save of this run starts writing
      seen, deadline = set(), time.monotonic() + 120
      while run.proc.poll() is None and time.monotonic() < deadline and len(seen) < k:
        for v in VARIANTS:
          if (workdir / v / "checkpoints").is_dir():
            seen.update(f"{v}/{p.name}" for p in (workdir / v / "checkpoints").iterdir()
                        if TMP_SUFFIX in p.name)
        time.sleep(0.001)
    else:  # right after the k-th metrics row is appended (often before its checkpoint)
      def newlines():  # not parsed rows: a row may be half-appended right now
        files = [f for v in VARIANTS for f in metrics_files(workdir / v)]
        return sum(f.read_bytes().count(b"\n") for f in files if f.exists())
      target, deadline = newlines() + k, time.monotonic() + 120
      while run.proc.poll() is None and time.monotonic() < deadline and newlines() < target:
        time.sleep(0.001)
    run.proc.kill()
    run.finish()
    latest = {v: (steps_in(workdir / v / "checkpoints") or [0])[-1] for v in VARIANTS
              if (workdir / v / "checkpoints").is_dir()}
    log.append((mode, k, latest, [p.name for p in tmp_dirs(workdir)]))
  # Deterministically too: a save cut short, and a row logged after the last checkpoint.
  variant = next(v for v in reversed(VARIANTS) if (workdir / v / "checkpoints").is_dir())
  folder = workdir / variant / "checkpoints"
  last = steps_in(folder)[-1] if steps_in(folder) else 0
  if last:
    shutil.copytree(folder / str(last), folder / f"{last + 5}{TMP_SUFFIX}")
  with open(metrics_files(workdir / variant)[-1], "a") as f:
    f.write(json.dumps({"step": last + 1, "train_loss": 123.0}) + "\n")
  print("kills (mode, k, latest checkpoints, tmp folders left):", *log, sep="\n  ")
  assert len(log) >= 3 and len({str(entry[2]) for entry in log}) >= 2, log  # progress
  proc = launch(env, workdir, *args)
  assert proc.returncode == 0, f"{log}\n{proc.stderr[-3000:]}"
  assert not tmp_dirs(workdir), log
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_force_fresh_starts_over_and_its_rerun_resumes(sigterm_run, tmp_path, env):
  workdir = copy_of(sigterm_run, tmp_path)
  old_steps = steps_in(workdir / "bidirectional" / "checkpoints")
  old_rows = rows(workdir / "bidirectional")
  args = (*LONG, "--config.model.hidden_size=16", "--force_fresh")
  run = Run(env, workdir, *args)
  assert run.wait_for(PROGRESS), run.stderr[-3000:]
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.stderr[-3000:]
  step = stop_step(run.stderr, "SIGTERM")
  assert "deleting the run of another config" in run.stderr and "Resuming" not in run.stderr
  vdir = workdir / "bidirectional"
  assert json.loads((vdir / "config.json").read_text())["model"]["hidden_size"] == 16
  assert steps_in(vdir / "checkpoints")[-1] == step
  assert not set(steps_in(vdir / "checkpoints")) - set(range(5, step + 1, 5)) - {step}, (
      old_steps)
  new_rows = rows(vdir)
  assert [r["step"] for r in new_rows] == row_steps(step)
  assert new_rows[0] != old_rows[0]  # a new model from step 0, not the old curve
  # The same command again (an interrupted --force_fresh run): same config now, so it resumes.
  run = Run(env, workdir, *args)
  resumed = run.wait_for(re.compile(r"Resuming from \S+ at step (\d+)\."))
  assert resumed and int(resumed.group(1)) == step, run.stderr[-3000:]
  assert run.wait_for(PROGRESS), run.stderr[-3000:]
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.stderr[-3000:]
  assert "deleting the run of another config" not in run.stderr
