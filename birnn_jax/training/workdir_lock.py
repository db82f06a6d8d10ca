"""One training run per workdir: a lock file, `<workdir>/train.lock`, held for the whole run.

Two runs writing one workdir interleave their metrics rows and checkpoints, so the second is
refused before it writes anything (`WorkdirLockedError`, naming the holder). A lock whose
holder is gone never blocks the run that follows:
- a holder on this machine is gone when its pid is not alive, or is alive with another start
  time (the pid was reused: the start time in /proc/<pid>/stat is recorded in the lock);
- a holder on another machine (or in another pid namespace, or before a reboot) cannot be
  asked, so it refreshes the lock's `heartbeat` every `HEARTBEAT_S` seconds from a daemon
  thread; a lock whose heartbeat is older than `STALE_AFTER_S` is taken over, with a warning.
  This assumes the machines' clocks agree to within a few seconds (NTP).

The lock file is a JSON body {host, pid, start_time, since, heartbeat, ...} that appears
whole (written aside, then hard-linked into place, which fails if the lock exists). A stale
lock is taken over by renaming it aside and checking that what was moved is the file judged
stale, so of two runs taking over the same stale lock only one wins. Removing the file by
hand (`rm <workdir>/train.lock`) is safe whenever no run uses the workdir.

`held(workdir)` is what the trainer uses: process 0 of a multi-process job takes the lock and
every process learns whether it did, so all of them stop together.
"""

import contextlib
import errno
import json
import os
import pathlib
import socket
import threading
import time
import uuid

from absl import logging

from birnn_jax.training import checkpoint as ckpt_lib

LOCK_FILE = "train.lock"
HEARTBEAT_S = 5.0
# Several missed heartbeats, so a busy file server or a long pause of the holder (swapping,
# a stalled NFS write) is not mistaken for a dead holder.
STALE_AFTER_S = 60.0
# File systems without hard links report one of these; the lock is then created with
# O_CREAT | O_EXCL instead (a reader may briefly see it empty, so reads retry).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class WorkdirLockedError(ckpt_lib.WorkdirError):
  """Another live training run holds the workdir; the message names it (host, pid, since)."""


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip()
  except OSError:
    return ""


def _proc_stat(pid: int) -> tuple[str, int] | None:
  """(state, start time in clock ticks since boot) of `pid`, or None if it cannot be read."""
  try:
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  # comm (field 2) may hold spaces and parentheses: the fields after its last ')' start
  # with field 3 (state); field 22 is the start time.
  fields = text[text.rindex(")") + 2:].split()
  return fields[0], int(fields[19])


def identity() -> dict:
  """This process as a lock records it: what tells 'a process here' from one elsewhere."""
  stat = _proc_stat(os.getpid())
  try:
    pid_ns = os.readlink("/proc/self/ns/pid")
  except OSError:
    pid_ns = ""
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "start_time": stat[1] if stat else None,
          "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _is_local(holder: dict, me: dict) -> bool:
  """Whether `holder`'s pid means the same process here: same host, same boot, same pid
  namespace (containers sharing a hostname see other pids)."""
  return all(holder.get(k) == me[k] for k in ("host", "boot_id", "pid_ns"))


def _local_pid_alive(pid: int, start_time: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, another user's
  stat = _proc_stat(pid)
  if stat is None:  # no /proc (not Linux): trust kill; with /proc, it just exited
    return not os.path.isdir("/proc/self")
  state, started = stat
  return state not in ("Z", "X") and (start_time is None or started == start_time)


def describe(holder: dict | None, now: float | None = None) -> str:
  """'host H, pid P, since <time>, last heartbeat N s ago' for messages."""
  if holder is None:
    return "its lock file is unreadable"
  now = time.time() if now is None else now
  since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(holder.get("since", 0)))
  beat = now - holder.get("heartbeat", 0)
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {since}, last "
          f"heartbeat {max(beat, 0):.0f} s ago")


def gone_because(holder: dict | None, mtime: float, stale_after_s: float,
                 now: float | None = None) -> str | None:
  """Why the lock's holder is gone, or None while it may be alive."""
  now = time.time() if now is None else now
  if holder is None:  # damaged (a crash of the O_EXCL fallback mid-write): judged by age
    return f"it is unreadable and {now - mtime:.0f} s old" if (
        now - mtime > stale_after_s) else None
  if _is_local(holder, identity()):
    if not _local_pid_alive(int(holder["pid"]), holder.get("start_time")):
      return f"its process {holder['pid']} on this host is not running"
    return None
  age = now - float(holder.get("heartbeat", 0))
  if age > stale_after_s:
    return (f"its holder is on another host (or another boot or pid namespace) and its "
            f"heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)")
  return None


def _place(src: pathlib.Path, dst: pathlib.Path) -> bool:
  """Puts the complete file `src` at `dst` unless `dst` exists (False then); atomic."""
  try:
    os.link(src, dst)
    return True
  except FileExistsError:
    return False
  except OSError as e:
    if e.errno not in _NO_LINKS:
      raise
  try:
    fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(src.read_bytes())
    f.flush()
    os.fsync(f.fileno())
  return True


def _write_aside(path: pathlib.Path, body: dict) -> pathlib.Path:
  tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
  with open(tmp, "wb") as f:
    f.write((json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    f.flush()
    os.fsync(f.fileno())
  return tmp


def _read(path: pathlib.Path) -> tuple[bytes, int, float] | None:
  """(content, inode, mtime) of the lock, or None if there is none."""
  try:
    with open(path, "rb") as f:
      st = os.fstat(f.fileno())
      return f.read(), st.st_ino, st.st_mtime
  except FileNotFoundError:
    return None


def _parse(raw: bytes) -> dict | None:
  """The lock's body, or None unless it has the fields a decision needs, of the right types."""
  try:
    body = json.loads(raw)
  except ValueError:
    return None
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  ok = isinstance(body, dict) and isinstance(body.get("pid"), int) and (
      0 < body["pid"] < 2**31) and all(number(body.get(k)) for k in ("since", "heartbeat"))
  return body if ok else None


def _remove_if_same(path: pathlib.Path, raw: bytes, inode: int) -> bool:
  """Removes the lock at `path` only if it is still the file read as (raw, inode).

  A rename is atomic, so of several runs taking over one stale lock only one moves it; a run
  that moved a file another run had put there in the meantime puts it back.
  """
  aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  try:
    if os.stat(aside).st_ino == inode and aside.read_bytes() == raw:
      return True
    _place(aside, path)  # fails only if a third run took the free place: it holds it now
    return False
  finally:
    aside.unlink(missing_ok=True)


class Lock:
  """A held lock: refreshes its heartbeat from a daemon thread until `release`."""

  def __init__(self, path: pathlib.Path, body: dict, heartbeat_s: float = HEARTBEAT_S):
    self.path = path
    self.body = body
    self._stop = threading.Event()
    self._lost = False  # taken over by another run, or released
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                    name=f"workdir-lock-heartbeat {path}")
    self._thread.start()

  def _ours(self) -> bool:
    for _ in range(3):  # absent for an instant while another run checks it (_remove_if_same)
      read = _read(self.path)
      if read is not None:
        return (_parse(read[0]) or {}).get("token") == self.body["token"]
      time.sleep(0.05)
    return False

  def refresh(self) -> bool:
    """Rewrites the heartbeat; False (with an error logged once) if the lock is not ours
    any more: another run took it over, judging this one gone."""
    if self._lost:
      return False
    if not self._ours():
      self._lost = True
      read = _read(self.path)
      logging.error("The lock %s was taken over (now: %s): another run may be writing this "
                    "workdir too.", self.path,
                    describe(_parse(read[0])) if read else "no lock")
      return False
    self.body["heartbeat"] = time.time()
    tmp = _write_aside(self.path, self.body)
    os.replace(tmp, self.path)
    return True

  def _beat(self, heartbeat_s: float) -> None:
    while not self._stop.wait(heartbeat_s):
      try:
        if not self.refresh():
          return
      except OSError as e:  # a full or flaky disk: the run goes on; retry at the next beat
        logging.warning("Could not refresh the lock %s: %s", self.path, e)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still ours; idempotent."""
    self._stop.set()
    if self._thread is not threading.current_thread():
      self._thread.join()
    if not self._lost and self._ours():
      self.path.unlink(missing_ok=True)
    self._lost = True  # a later refresh or release must not touch a lock taken since

  def __enter__(self) -> "Lock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str | pathlib.Path, stale_after_s: float = STALE_AFTER_S,
            heartbeat_s: float = HEARTBEAT_S) -> Lock:
  """Takes the training lock on `workdir` (created if needed), taking over a lock whose
  holder is gone (see the module docstring) with a warning.

  Raises:
    WorkdirLockedError: a live run holds it (the message names host, pid and since when).
    checkpoint.WorkdirError: the workdir cannot be written.
  """
  workdir = ckpt_lib.ensure_writable(workdir, probe=False)
  path = workdir / LOCK_FILE
  taken_over = None
  for _ in range(20):  # each round ends in a decision unless the lock changes under it
    now = time.time()
    body = {**identity(), "since": now, "heartbeat": now, "token": uuid.uuid4().hex}
    try:
      tmp = _write_aside(path, body)
      try:
        placed = _place(tmp, path)
      finally:
        tmp.unlink(missing_ok=True)
    except OSError as e:
      raise ckpt_lib.WorkdirError(f"cannot write the lock {path}: {e.strerror or e}.") from e
    if placed:
      if taken_over:
        logging.warning("Took over the lock %s of a run that is gone (%s): %s.", path,
                        describe(taken_over[0], now), taken_over[1])
      return Lock(path, body, heartbeat_s)
    read = _read(path)
    if read is None:  # released meanwhile
      continue
    raw, inode, mtime = read
    holder = _parse(raw)
    if holder is None and now - mtime < 1.0:  # maybe being written (the O_EXCL fallback)
      time.sleep(0.1)
      continue
    why = gone_because(holder, mtime, stale_after_s, now)
    if why is None:
      remote = holder is not None and not _is_local(holder, identity())
      raise WorkdirLockedError(
          f"the workdir {workdir} is in use by another training run: {describe(holder, now)}"
          ". One run per workdir: wait for it to end, stop it, or use another --workdir." +
          (f" Its host cannot be asked, so the lock is taken over once its heartbeat is "
           f"{stale_after_s:.0f} s old." if remote else "") +
          f" If no run uses this workdir, remove {path}.")
    if _remove_if_same(path, raw, inode):
      taken_over = (holder, why)
  raise WorkdirLockedError(f"could not take the lock {path}: it kept changing (several runs "
                           "starting on this workdir at once?).")


def holder(workdir: str | pathlib.Path) -> dict | None:
  """The body of the lock on `workdir` (None if there is none or it is unreadable)."""
  read = _read(pathlib.Path(workdir) / LOCK_FILE)
  return _parse(read[0]) if read else None


@contextlib.contextmanager
def held(workdir: str | pathlib.Path, stale_after_s: float = STALE_AFTER_S,
         heartbeat_s: float = HEARTBEAT_S):
  """The training lock on `workdir` for the body of a `with`, released however it ends.

  Process 0 takes it; every process learns whether it could (a collective), so all of them
  stop together rather than the others hanging at their first collective. Call it after
  `sharding.maybe_initialize_distributed`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import sharding  # pylint: disable=g-import-not-at-top
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, stale_after_s, heartbeat_s)
    except Exception as e:  # pylint: disable=broad-exception-caught
      error = e
  if sharding.any_process(error is not None):
    if error is not None:
      raise error
    raise WorkdirLockedError(f"process 0 could not take the lock on the workdir {workdir} "
                             "(its log says why); stopping with it.")
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
