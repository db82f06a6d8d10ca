"""Training batches built and placed on the devices ahead of the loop, on a background thread.

The host builds (and copies to the devices) the batches of the next steps while the devices
run the current one, so host work and device work overlap instead of taking turns. Batches
stay a pure function of the step: the thread makes them for steps first, first + 1, ... in
order, the same calls the loop would make itself, so runs and resumes are unchanged.
"""

import queue
import threading
from typing import Any, Callable

# How often a thread blocked on a full queue looks whether the consumer has gone.
_POLL_S = 0.05


class Prefetcher:
  """`place(make(step))` for step = first .. end - 1, made up to `depth` steps ahead.

      with Prefetcher(task.train_batch, put_on_devices, first, end) as feed:
        for step in range(first, end):
          batch = feed.get(step)

  An exception raised while making a batch is raised again by `get` of that step, with its
  traceback (a data error still names its input). Leaving the `with` block stops the
  thread, which by then has made at most `depth` + 1 batches past the last one taken.
  """

  def __init__(self, make: Callable[[int], Any], place: Callable[[Any], Any], first: int,
               end: int, depth: int = 2):
    if depth < 1:
      raise ValueError(f"depth={depth}: a prefetcher needs room for at least one batch.")
    self._make, self._place, self._steps = make, place, range(first, end)
    self._queue: queue.Queue = queue.Queue(depth)
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="birnn_jax-prefetch", daemon=True)

  def __enter__(self) -> "Prefetcher":
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def get(self, step: int) -> Any:
    """The placed batch of `step`; steps must be taken in order, from `first`."""
    made, batch, error = self._queue.get()
    if made != step:
      raise RuntimeError(f"the prefetcher made step {made}'s batch but step {step}'s was "
                         "asked for: steps must be taken in order.")
    if error is not None:
      raise error
    return batch

  def close(self) -> None:
    self._stopped.set()
    if self._thread.ident is not None:
      self._thread.join()

  def _run(self) -> None:
    for step in self._steps:
      try:
        item = (step, self._place(self._make(step)), None)
      except BaseException as e:  # pylint: disable=broad-exception-caught
        item = (step, None, e)    # raised again in the consumer's thread by get(step)
      if not self._offer(item) or item[2] is not None:
        return

  def _offer(self, item) -> bool:
    """Queues `item` once there is room; False if the consumer has gone meanwhile."""
    while not self._stopped.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False
