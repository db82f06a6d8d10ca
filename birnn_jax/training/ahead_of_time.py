"""Compiling a run's steps ahead, on a thread of its own, while the state initialises and
the first steps (or the variant before) train."""

import collections
from collections.abc import Callable
import threading
from typing import Any

from absl import logging


class AheadOfTime:
  """Compiles on a thread of its own, in the order asked (`add`), while the callers' threads
  go on: XLA releases the GIL while it compiles. The thread ends when nothing is left and
  starts again on the next `add`; `cancel` drops what has not started. A failed compile is
  only logged here: the jitted call then fails the same way, in the caller's thread, with
  its usual traceback. Not a daemon thread: the interpreter waits for a compile under way
  rather than exit beneath it (XLA then aborts the process)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._pending: collections.deque = collections.deque()
    self._running = False

  def add(self, compile_fn: Callable[[], Any]) -> threading.Event:
    """Queues `compile_fn`; the event is set once it has run (or failed)."""
    done = threading.Event()
    with self._lock:
      self._pending.append((compile_fn, done))
      if not self._running:
        self._running = True
        threading.Thread(target=self._run, name="compile_ahead").start()
    return done

  def cancel(self) -> None:
    """Drops the compiles not yet started (their events are set: nobody waits forever)."""
    with self._lock:
      dropped, self._pending = list(self._pending), collections.deque()
    for _, done in dropped:
      done.set()

  def _run(self) -> None:
    while True:
      with self._lock:
        if not self._pending:
          self._running = False
          return
        compile_fn, done = self._pending.popleft()
      try:
        compile_fn()
      except Exception as e:  # pylint: disable=broad-except
        logging.info("Compiling ahead failed (%s: %s); the step compiles when called.",
                     type(e).__name__, e)
      finally:
        done.set()
