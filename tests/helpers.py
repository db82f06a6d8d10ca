"""Test helpers shared by several test files (imported as `helpers`: pytest puts this folder
on the path of the tests it collects)."""

import jax
import numpy as np


def assert_trees_close(actual, expected, **tolerances):
  """Same tree structure, and every leaf close (compared in float32, so bfloat16 leaves
  compare too); `tolerances` are `np.testing.assert_allclose`'s (atol, rtol)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected), (
      jax.tree.structure(actual), jax.tree.structure(expected))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                               **tolerances)
