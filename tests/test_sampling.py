"""birnn_jax.data.sampling: the two step-indexed training orders."""

import numpy as np
import pytest

from birnn_jax.data import sampling


def test_stream_is_a_function_of_seed_and_step():
  for step in [0, 3, 57, 10_000]:
    a = sampling.Stream(100, 8, seed=3).indices(step)
    assert a.shape == (8,) and np.array_equal(a, sampling.Stream(100, 8, seed=3).indices(step))
  a[:] = -1  # mutating a returned batch does not change later batches
  assert np.array_equal(sampling.Stream(100, 8, 3).indices(10_000),
                        sampling.Stream(100, 8, 3).indices(10_000))
  assert not np.array_equal(sampling.Stream(100, 8, 3).indices(0),
                            sampling.Stream(100, 8, 4).indices(0))
  # Step 57 of 100 examples, batch 8: stream positions 456..463 = epoch 4, offsets 56..63.
  assert np.array_equal(sampling.Stream(100, 8, 3).indices(57),
                        np.random.default_rng((3, 4)).permutation(100)[56:64])


@pytest.mark.parametrize("n,batch_size", [(100, 10), (97, 10), (5, 8)])
def test_every_window_once_per_epoch_and_epochs_differ(n, batch_size):
  epochs = 3
  steps = -(-epochs * n // batch_size)
  sampler = sampling.Stream(n, batch_size, 11)
  stream = np.concatenate([sampler.indices(s) for s in range(steps)])
  orders = [stream[e * n:(e + 1) * n] for e in range(epochs)]
  for e, order in enumerate(orders):
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, np.random.default_rng((11, e)).permutation(n))
  assert not np.array_equal(orders[0], orders[1])
  assert sampler.steps_per_epoch == -(-n // batch_size)


def test_batch_argument_errors():
  with pytest.raises(ValueError):
    sampling.Stream(0, 4, 0)
  with pytest.raises(ValueError, match="seed"):
    sampling.Stream(10, 4, -1)
  with pytest.raises(ValueError, match="step"):
    sampling.Stream(10, 4, 0).indices(-2)
