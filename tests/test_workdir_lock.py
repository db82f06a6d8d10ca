"""One run per workdir (`birnn_jax.training.workdir_lock`): a live holder refuses a second run, a gone
holder never blocks the next.

Fast, in-process on the lock itself: acquire/release, a live holder refused naming host, pid
and since when, a dead local pid (and a reused one, and a zombie) taken over, a stale lock of
another host taken over after the timeout with a warning while a fresh one is refused, the
heartbeat, racers taking over one stale lock (one wins). Fast, in a subprocess: launch.py on a
held workdir stops with one error line and writes nothing. Slow, launch.py end to end: two
runs started at once (one refused, the other's curves those of a lone run), kill -9 then the
same command (not blocked), --mode=eval while training goes on (it neither waits for it nor
touches its files). --mode=predict reads through the same read-only `train.load_trained`,
whose pieces are tested in-process.
"""

import json
import logging
import multiprocessing
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import workdir_lock as wl

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "--config=experiments/synthetic_tagging.py:smoke"
VARIANTS = ("bidirectional", "unidirectional")
PROGRESS = re.compile(r"step (\d+)/(\d+) \|")
TIMEOUT = 600


# --- helpers -------------------------------------------------------------------------------

def lock_path(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / wl.LOCK_FILE


def write_lock(workdir: pathlib.Path, **fields) -> dict:
  """A lock file as a run with `fields` (over this process's identity) would leave it."""
  now = time.time()
  body = {**wl.identity(), "since": now, "heartbeat": now, "token": "someone-else", **fields}
  workdir.mkdir(parents=True, exist_ok=True)
  lock_path(workdir).write_text(json.dumps(body))
  return body


def sleeper() -> subprocess.Popen:
  """A live local process that is not this one."""
  return subprocess.Popen(["sleep", "600"])


def start_time(pid: int) -> int:
  return wl._proc_stat(pid)[1]  # pylint: disable=protected-access


@pytest.fixture
def warnings_logged(caplog):
  """The messages of warnings (and errors) absl logs."""
  caplog.set_level(logging.WARNING)
  return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- acquire / release ---------------------------------------------------------------------

def test_acquire_writes_who_holds_it_and_release_removes_it(tmp_path):
  workdir = tmp_path / "new" / "run"  # made on the way
  lock = wl.acquire(workdir)
  body = json.loads(lock_path(workdir).read_text())
  assert body["host"] == socket.gethostname() and body["pid"] == os.getpid()
  assert body["start_time"] == start_time(os.getpid())
  assert abs(body["since"] - time.time()) < 60 and body["heartbeat"] >= body["since"]
  assert wl.holder(workdir) == body
  lock.release()
  assert not lock_path(workdir).exists()
  assert sorted(p.name for p in workdir.iterdir()) == []  # no tmp files left either
  lock.release()  # idempotent
  with wl.acquire(workdir) as again:  # free again
    assert lock_path(workdir).exists() and again.body["token"] != body["token"]
  assert not lock_path(workdir).exists()


def test_a_live_holder_is_refused_naming_host_pid_and_since(tmp_path):
  with wl.acquire(tmp_path) as lock:
    before = lock_path(tmp_path).read_bytes()
    with pytest.raises(wl.WorkdirLockedError) as info:
      wl.acquire(tmp_path)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lock.body["since"]))
    message = str(info.value)
    assert message.startswith(f"the workdir {tmp_path} is in use by another training run: "
                              f"host {socket.gethostname()}, pid {os.getpid()}, since {since}")
    assert "One run per workdir" in message and f"remove {lock_path(tmp_path)}" in message
    assert lock_path(tmp_path).read_bytes() == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == [wl.LOCK_FILE]
  # launch.py reports it as one line: an expected error type, with no "(workdir ...)" suffix.
  assert isinstance(info.value, ckpt_lib.WorkdirError)


def test_another_live_local_process_is_refused(tmp_path):
  proc = sleeper()
  try:
    write_lock(tmp_path, pid=proc.pid, start_time=start_time(proc.pid))
    with pytest.raises(wl.WorkdirLockedError, match=rf"pid {proc.pid}, since "):
      wl.acquire(tmp_path)
  finally:
    proc.kill()
    proc.wait()


def test_a_dead_local_pid_is_taken_over_with_a_warning(tmp_path, warnings_logged):
  proc = sleeper()
  old = write_lock(tmp_path, pid=proc.pid, start_time=start_time(proc.pid))
  proc.kill()
  proc.wait()  # as kill -9 leaves it: the lock names a pid that is gone
  with wl.acquire(tmp_path) as lock:
    assert wl.holder(tmp_path)["token"] == lock.body["token"] != old["token"]
  assert any(f"process {proc.pid} on this host is not running" in m and "Took over" in m
             for m in warnings_logged()), warnings_logged()


def test_a_zombie_holder_is_dead(tmp_path):
  proc = sleeper()
  write_lock(tmp_path, pid=proc.pid, start_time=start_time(proc.pid))
  proc.kill()
  deadline = time.monotonic() + 10
  while wl._proc_stat(proc.pid)[0] != "Z" and time.monotonic() < deadline:  # pylint: disable=protected-access
    time.sleep(0.01)
  try:  # killed, not yet reaped by its parent
    wl.acquire(tmp_path).release()
  finally:
    proc.wait()


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
  """The pid is alive again, but as a process started at another time."""
  proc = sleeper()
  try:
    write_lock(tmp_path, pid=proc.pid, start_time=start_time(proc.pid) - 1)
    wl.acquire(tmp_path).release()
  finally:
    proc.kill()
    proc.wait()


# --- another host: the heartbeat ------------------------------------------------------------

def test_a_fresh_lock_of_another_host_is_refused(tmp_path):
  write_lock(tmp_path, host="node-17", pid=4242, heartbeat=time.time() - 10)
  with pytest.raises(wl.WorkdirLockedError) as info:
    wl.acquire(tmp_path)
  message = str(info.value)
  assert "host node-17, pid 4242" in message and "last heartbeat 10 s ago" in message
  assert f"taken over once its heartbeat is {wl.STALE_AFTER_S:.0f} s old" in message


def test_a_stale_lock_of_another_host_is_taken_over_with_a_warning(tmp_path,
                                                                 warnings_logged):
  write_lock(tmp_path, host="node-17", pid=4242, heartbeat=time.time() - wl.STALE_AFTER_S - 5)
  with wl.acquire(tmp_path) as lock:
    assert wl.holder(tmp_path)["token"] == lock.body["token"]
  logged = warnings_logged()
  assert any("Took over" in m and "host node-17, pid 4242" in m and "another host" in m
             for m in logged), logged


def test_the_timeout_is_an_argument(tmp_path):
  write_lock(tmp_path, host="node-17", pid=4242)
  with pytest.raises(wl.WorkdirLockedError):
    wl.acquire(tmp_path, stale_after_s=0.5)
  time.sleep(0.6)  # no heartbeat came: node-17 is gone
  wl.acquire(tmp_path, stale_after_s=0.5).release()


def test_same_host_in_another_boot_or_pid_namespace_goes_by_the_heartbeat(tmp_path):
  """Its pid means nothing here (a container sharing the hostname, a reboot): not 'dead'."""
  for other in ({"boot_id": "another-boot"}, {"pid_ns": "pid:[1]"}):
    write_lock(tmp_path, pid=2**22 + 7, **other)  # no such pid here
    with pytest.raises(wl.WorkdirLockedError):
      wl.acquire(tmp_path)
    write_lock(tmp_path, pid=2**22 + 7, heartbeat=time.time() - wl.STALE_AFTER_S - 1, **other)
    wl.acquire(tmp_path).release()


def test_the_heartbeat_refreshes_the_lock(tmp_path):
  with wl.acquire(tmp_path, heartbeat_s=0.05) as lock:
    first = wl.holder(tmp_path)
    time.sleep(0.5)
    later = wl.holder(tmp_path)
    assert later["heartbeat"] > first["heartbeat"] + 0.1
    assert later["since"] == first["since"] and later["token"] == lock.body["token"]
    # So another host, whose only evidence is the heartbeat, keeps seeing it alive.
    assert wl.gone_because(later, 0.0, stale_after_s=0.5) is None
  assert not lock_path(tmp_path).exists()


def test_a_lock_taken_over_is_neither_refreshed_nor_removed_by_its_old_holder(
    tmp_path, warnings_logged):
  lock = wl.acquire(tmp_path, heartbeat_s=0.05)
  other = write_lock(tmp_path, host="node-3", pid=99)  # as a takeover (judged stale) leaves it
  time.sleep(0.3)
  assert wl.holder(tmp_path) == other
  lock.release()
  assert wl.holder(tmp_path) == other
  assert any("was taken over" in m and "node-3" in m for m in warnings_logged())


def test_an_unreadable_lock_is_refused_while_fresh_and_taken_over_when_old(tmp_path):
  lock_path(tmp_path).write_text('{"host": "no')  # cut short
  with pytest.raises(wl.WorkdirLockedError, match="unreadable"):
    wl.acquire(tmp_path)
  old = time.time() - wl.STALE_AFTER_S - 1
  os.utime(lock_path(tmp_path), (old, old))
  wl.acquire(tmp_path).release()


def test_a_takeover_never_removes_a_lock_that_replaced_the_stale_one(tmp_path):
  write_lock(tmp_path, host="node-17", heartbeat=0.0)
  raw = lock_path(tmp_path).read_bytes()
  inode = os.stat(lock_path(tmp_path)).st_ino
  fresh = write_lock(tmp_path, host="node-18")  # another run won meanwhile (a new file)
  assert not wl._remove_if_same(lock_path(tmp_path), raw, inode)  # pylint: disable=protected-access
  assert wl.holder(tmp_path) == fresh
  assert [p.name for p in tmp_path.iterdir()] == [wl.LOCK_FILE]


def _race(workdir, go, results, done):
  go.wait()
  try:
    wl.acquire(workdir)
    results.put("won")
  except wl.WorkdirLockedError:
    results.put("refused")
  done.wait()  # hold it (alive) until every racer has tried


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # JAX's; the children skip JAX
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_of_racers_on_one_lock_exactly_one_wins(tmp_path, stale):
  ctx = multiprocessing.get_context("fork")  # the children only touch files
  for attempt in range(3):
    workdir = tmp_path / str(attempt)
    if stale:
      write_lock(workdir, host="node-17", heartbeat=0.0)
    go, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    racers = [ctx.Process(target=_race, args=(workdir, go, results, done)) for _ in range(6)]
    for p in racers:
      p.start()
    go.set()
    outcomes = sorted(results.get(timeout=60) for _ in racers)
    done.set()
    for p in racers:
      p.join(60)
    assert outcomes == ["refused"] * 5 + ["won"], outcomes


def test_held_releases_on_an_exception(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with wl.held(tmp_path) as lock:
      assert wl.holder(tmp_path)["token"] == lock.body["token"]
      raise RuntimeError("boom")
  assert not lock_path(tmp_path).exists()


# --- readers (eval, predict) of a workdir a run may be writing ------------------------------

def tiny_state(value: float) -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"step": jnp.asarray(int(value), jnp.int32),
          "params": {"w": jnp.full((2, 3), value, jnp.float32)}}


def train_cfg(**kw):
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  t = config_lib.base_config().train
  t.update(kw)
  return t


def test_a_reader_makes_nothing_in_a_workdir_without_checkpoints(tmp_path):
  from birnn_jax.training import config_lib, train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*; train first"):
    train.load_trained(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_reader_leaves_saves_in_progress_and_unreadable_steps_alone(tmp_path):
  writer = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=3))
  for step in (1, 2, 3):
    ckpt_lib.save(writer, step, tiny_state(step))
  folder = tmp_path / "checkpoints"
  (folder / "4.orbax-checkpoint-tmp").mkdir()  # the live run is saving step 4
  for f in (folder / "3" / "default").rglob("*"):  # and step 3 cannot be read
    if f.is_file() and f.name != "_METADATA":
      f.unlink()
  before = sorted(p.name for p in folder.iterdir())
  reader = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=3), read_only=True)
  assert int(ckpt_lib.restore(reader, tiny_state(0), read_only=True)["step"]) == 2
  assert sorted(p.name for p in folder.iterdir()) == before


def test_a_reader_lists_again_when_the_run_deletes_the_step_it_reads(tmp_path):
  writer = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=2))
  for step in (1, 2):
    ckpt_lib.save(writer, step, tiny_state(step))
  reader = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=2), read_only=True)
  original, calls = reader.restore, []

  def racing_restore(step, **kw):  # the run saves 3 and 4 (deleting 1 and 2) mid-read
    calls.append(step)
    if len(calls) == 1:
      for s in (3, 4):
        ckpt_lib.save(writer, s, tiny_state(s))
      raise FileNotFoundError(f"step {step} vanished")
    return original(step, **kw)

  reader.restore = racing_restore
  assert int(ckpt_lib.restore(reader, tiny_state(0), read_only=True)["step"]) == 4
  assert calls == [2, 4]


# --- launch.py (subprocesses) --------------------------------------------------------------

@pytest.fixture(scope="module")
def env(subprocess_env):
  return subprocess_env


def command(workdir, *args) -> list[str]:
  return [sys.executable, "launch.py", SMOKE, f"--workdir={workdir}", *args]


def launch(env, workdir, *args, timeout=TIMEOUT):
  return subprocess.run(command(workdir, *args), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def start(env, workdir, *args) -> subprocess.Popen:
  return subprocess.Popen(command(workdir, *args), cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def rows(vdir: pathlib.Path) -> list[dict]:
  return metrics_lib.read_metrics(vdir / "metrics.jsonl")


def results_without_timing(workdir: pathlib.Path) -> dict:
  def strip(obj):
    if isinstance(obj, dict):
      return {k: strip(v) for k, v in obj.items() if k != "train_seconds"}
    return obj
  return strip(json.loads((workdir / "results.json").read_text()))


def assert_refused(stderr: str, holder: dict):
  errors = [line for line in stderr.splitlines() if line.startswith("launch.py: error:")]
  assert len(errors) == 1, stderr[-3000:]
  assert f"in use by another training run: host {holder['host']}, pid {holder['pid']}, " \
         "since " in errors[0], errors[0]
  assert "Traceback" not in stderr and not PROGRESS.search(stderr), stderr[-3000:]


def test_launch_on_a_held_workdir_stops_with_one_line_and_writes_nothing(tmp_path, env):
  workdir = tmp_path / "run"
  (workdir / "bidirectional").mkdir(parents=True)
  (workdir / "bidirectional" / "metrics.jsonl").write_text('{"step": 5, "train_loss": 1.0}\n')
  with wl.acquire(workdir) as lock:
    before = snapshot(workdir)
    proc = launch(env, workdir, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert_refused(proc.stderr, lock.body)
    after = snapshot(workdir)
    # The lock's heartbeat went on (it is this test's); everything else is byte for byte.
    assert json.loads(after.pop(wl.LOCK_FILE))["token"] == lock.body["token"]
    before.pop(wl.LOCK_FILE)
    assert after == before
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == [
        "bidirectional", "bidirectional/metrics.jsonl", wl.LOCK_FILE]


# --- slow: launch.py end to end ------------------------------------------------------------

@pytest.fixture(scope="module")
def lone_run(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp("lone") / "run"
  proc = launch(env, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def assert_same_as(workdir: pathlib.Path, reference: pathlib.Path):
  for variant in VARIANTS:
    got = rows(workdir / variant)
    steps = [r["step"] for r in got]
    assert steps == sorted(set(steps)), f"{variant}: steps not strictly increasing: {steps}"
    assert got == rows(reference / variant), variant
  assert results_without_timing(workdir) == results_without_timing(reference)


@pytest.mark.slow
def test_two_runs_started_at_once_one_is_refused(lone_run, tmp_path, env):
  workdir = tmp_path / "run"
  procs = [start(env, workdir) for _ in range(2)]
  outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 1], [(p.returncode, err[-2000:]) for p, (_, err) in zip(procs, outs)]
  winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
  assert_refused(outs[loser][1], {"host": socket.gethostname(), "pid": procs[winner].pid})
  assert not lock_path(workdir).exists()  # released by the winner at its end
  assert_same_as(workdir, lone_run)


def wait_for_progress(proc: subprocess.Popen, lines: list[str], timeout=TIMEOUT):
  """Reads proc's stderr into `lines` (in a thread) until a progress line appears."""
  seen = threading.Event()

  def read():
    for line in proc.stderr:
      lines.append(line)
      if PROGRESS.search(line):
        seen.set()

  threading.Thread(target=read, daemon=True).start()
  assert seen.wait(timeout), "".join(lines)[-3000:]


@pytest.mark.slow
def test_kill_9_then_the_same_command_is_not_blocked(lone_run, tmp_path, env):
  workdir = tmp_path / "run"
  proc, lines = start(env, workdir), []
  wait_for_progress(proc, lines)
  proc.kill()
  proc.wait()
  assert wl.holder(workdir)["pid"] == proc.pid  # left behind by the killed run
  resumed = launch(env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"process {proc.pid} on this host is not running" in resumed.stderr
  assert not lock_path(workdir).exists()
  assert_same_as(workdir, lone_run)


@pytest.mark.slow
def test_eval_during_training_neither_waits_nor_touches_its_files(tmp_path, env):
  workdir = tmp_path / "run"
  train = start(env, workdir, "--config.train.num_steps=100000",
                "--config.train.checkpoint_every=5", "--config.train.keep_checkpoints=1")
  lines = []
  try:
    wait_for_progress(train, lines)
    checkpoints = workdir / "bidirectional" / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(p.name.isdigit() for p in checkpoints.iterdir()):
      assert time.monotonic() < deadline and train.poll() is None, "".join(lines)[-3000:]
      time.sleep(0.1)
    holder = wl.holder(workdir)
    # What the run writes goes on being written; what the readers could wrongly write or
    # delete is the run's: its saves in progress (a tmp folder, cleaned up by a writer's
    # checkpoint manager), unreadable steps (moved aside), vocabularies, config and lock.
    in_progress = checkpoints / f"999999{'.orbax-checkpoint-tmp'}"
    in_progress.mkdir()
    (in_progress / "marker").write_text("a save in progress\n")
    evaluated = launch(env, workdir, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test_accuracy" in evaluated.stdout
    got = json.loads((workdir / "eval_results.json").read_text())
    assert set(got) == {"bidirectional"}, got  # the variant not reached yet is skipped
    assert "'unidirectional' has no checkpoint" in evaluated.stderr
    assert (in_progress / "marker").exists()
    assert not list(checkpoints.glob("*.unreadable*"))
    assert wl.holder(workdir) == holder or wl.holder(workdir)["token"] == holder["token"]
    assert train.poll() is None, "".join(lines)[-3000:]  # still training
  finally:
    train.send_signal(signal.SIGTERM)
    train.wait(TIMEOUT)
  assert train.returncode == 0, "".join(lines)[-3000:]
  assert not lock_path(workdir).exists()  # released on the SIGTERM path
  steps = [r["step"] for r in rows(workdir / "bidirectional")]
  assert steps == sorted(set(steps))
