"""Step-indexed sampling: which examples the training batch of step `s` holds.

The batch of a step is a pure function of (seed, step), so a run resumed at step s sees
exactly the batches an uninterrupted run would. Two orders share one interface,
`sampler.indices(step) -> int64 [<= batch_size]` and `sampler.steps_per_epoch`
(ceil(N / batch_size), the steps of one pass over the N examples):

- `BucketedEpochs` (sentences of varied length, e.g. POS): each epoch sorts the examples into
  length buckets with a random order inside each, cuts consecutive batches (the last may be
  short) and shuffles their order; few padded positions, every example once per epoch.
- `Stream` (equal-length windows of a text): one endless stream of per-epoch permutations,
  step s taking positions [s*B, (s+1)*B); every batch is full and may straddle two epochs.

Both draw from `np.random.default_rng((seed, epoch))`.
"""

import functools
import operator
from typing import Sequence

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """ceil(num_examples / batch_size): the steps of one pass over the examples."""
  check_positive(batch_size=batch_size)
  if num_examples < 1:
    raise ValueError("there are no examples to batch.")
  return -(-num_examples // batch_size)


def check_positive(**values: int) -> None:
  for name, value in values.items():
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}.")


def _non_negative(name: str, value: int) -> int:
  value = operator.index(value)
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}.")
  return value


def epoch_plan(lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int, epoch: int,
               pad_to: int = 8) -> list[np.ndarray]:
  """The example indices of each batch of one bucketed epoch (a pure function of its args).

  Examples are sorted by length bucket (ceil(length / pad_to)) with a random order inside
  each bucket, cut into consecutive batches of `batch_size` (the last may be short), and the
  batches are shuffled; both draws come from `np.random.default_rng((seed, epoch))`.

  Args:
    lengths: int [N], the length of each example.

  Returns:
    steps_per_epoch(N, batch_size) int64 arrays of indices; together each index exactly once.
  """
  check_positive(pad_to=pad_to)
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}.")
  lengths = np.asarray(lengths)
  num_batches = steps_per_epoch(len(lengths), batch_size)
  rng = np.random.default_rng((seed, epoch))
  buckets = -(-lengths.astype(np.int64) // pad_to)
  order = np.argsort(buckets * len(lengths) + rng.permutation(len(lengths)))
  batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]
  return [batches[i] for i in rng.permutation(num_batches)]


class BucketedEpochs:
  """Length-bucketed epochs (`epoch_plan`); step s is batch s % steps_per_epoch of epoch
  s // steps_per_epoch. Keeps the current epoch's plan between calls."""

  def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int,
               pad_to: int = 8):
    self.lengths = np.asarray(lengths)
    self.batch_size, self.seed, self.pad_to = batch_size, seed, pad_to
    self.steps_per_epoch = steps_per_epoch(len(self.lengths), batch_size)
    self._epoch, self._plan = None, []

  def epoch_and_index(self, step: int) -> tuple[int, int]:
    """(epoch, index of the batch within that epoch) of global training step `step`."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    return divmod(step, self.steps_per_epoch)

  def indices(self, step: int) -> np.ndarray:
    """The example indices of step `step`'s batch (its real rows, in order)."""
    epoch, index = self.epoch_and_index(step)
    if epoch != self._epoch:
      self._plan = epoch_plan(self.lengths, self.batch_size, self.seed, epoch, self.pad_to)
      self._epoch = epoch
    return self._plan[index]


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  order = np.random.default_rng((seed, epoch)).permutation(n)
  order.flags.writeable = False
  return order


class Stream:
  """Epoch 0's permutation of the n examples, then epoch 1's, ...; step s takes stream
  positions [s*B, (s+1)*B), so every batch is full and every example is seen once per epoch."""

  def __init__(self, n: int, batch_size: int, seed: int):
    self.n, self.batch_size, self.seed = (_non_negative(k, v) for k, v in
                                          (("n", n), ("batch_size", batch_size), ("seed", seed)))
    if self.n < 1 or self.batch_size < 1:
      raise ValueError(f"need n >= 1 examples and batch_size >= 1, got {n} and {batch_size}.")
    self.steps_per_epoch = steps_per_epoch(self.n, self.batch_size)

  def indices(self, step: int) -> np.ndarray:
    """Example indices int64 [batch_size] of training step `step` (0-based)."""
    positions = _non_negative("step", step) * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty(self.batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = _permutation(self.n, self.seed, int(epoch))[offsets[here]]
    return out
