"""One recurrent chain over a padded batch (design.md §2), for every implementation.

The oracle is a loop over each sequence on its own (no padding at all): forward reads
x[b, 0..len-1], backward reads x[b, len-1..0]; outputs at padded steps must be zero.
"""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax
from birnn_jax.core import cells, recurrence

pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H, P = 4, 6, 3, 4, 2
CHAINS = ("reference", "scan")  # one-direction implementations
LENGTHS = np.array([T, 0, 1, 4], np.int32)

CELLS = {
    "rnn_tanh": dict(name="rnn", activation="tanh"),
    "rnn_relu": dict(name="rnn", activation="relu"),
    "gru": dict(name="gru"),
    "lstm": dict(name="lstm"),
    "lstm_proj": dict(name="lstm", proj_size=P),
}


def make(cell):
  return cells.make_cell(features=H, **CELLS[cell])


def make_case(cell, seed=0):
  """(cell module, params, x, random initial carry)."""
  module = make(cell)
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  carry = jax.tree.map(lambda c: jnp.asarray(rng.normal(size=c.shape), jnp.float32),
                       module.zero_carry((B, D)))
  params = module.init(jax.random.key(seed), D)
  return module, params, x, carry


def per_sequence_loop(module, params, x, lengths, carry, reverse):
  """Each sequence alone, step by step, in its own order; zeros at padded steps."""
  outputs = np.zeros((B, T, module.output_size), np.float32)
  finals = []
  for b in range(B):
    c = jax.tree.map(lambda a, b=b: a[b:b + 1], carry)
    steps = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
    for t in steps:
      c, y = module.step(params, c, module.project_inputs(params, x[b:b + 1, t]))
      outputs[b, t] = y[0]
    finals.append(c)
  return outputs, jax.tree.map(lambda *a: jnp.concatenate(a), *finals)


def run(impl, module, params, x, lengths, carry, reverse):
  fn = functools.partial(getattr(recurrence, impl), module, reverse=reverse)
  return fn(params, x, lengths, carry)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_every_chain_matches_the_per_sequence_loop(cell, reverse):
  module, params, x, carry = make_case(cell)
  expected_y, expected_carry = per_sequence_loop(module, params, x, LENGTHS, carry, reverse)
  for impl in CHAINS:
    y, final = run(impl, module, params, x, LENGTHS, carry, reverse)
    assert y.shape == (B, T, module.output_size), impl
    np.testing.assert_allclose(y, expected_y, atol=1e-6, err_msg=impl)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected_carry), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-6, err_msg=impl)
    # Length 0: zero outputs, the initial carry back.
    assert not np.any(np.asarray(y)[1])
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
      np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("cell", [
    "lstm_proj", pytest.param("rnn_relu", marks=pytest.mark.slow),
    pytest.param("gru", marks=pytest.mark.slow)])
def test_every_chain_has_the_reference_gradients(cell, reverse):
  module, params, x, carry = make_case(cell, seed=1)
  rng = np.random.default_rng(2)
  g_y = rng.normal(size=(B, T, module.output_size)).astype(np.float32)
  g_carry = jax.tree.map(lambda c: rng.normal(size=c.shape).astype(np.float32), carry)

  def loss(impl, params, x, carry):
    y, final = run(impl, module, params, x, LENGTHS, carry, reverse)
    return jnp.sum(y * g_y) + sum(
        jnp.sum(f * g) for f, g in zip(jax.tree.leaves(final), jax.tree.leaves(g_carry)))

  def grad_fn(impl):
    fn = jax.grad(functools.partial(loss, impl), (0, 1, 2))
    return fn if impl == "reference" else jax.jit(fn)  # the unrolled loop runs eagerly

  grads = {impl: grad_fn(impl)(params, x, carry) for impl in CHAINS}
  for impl in CHAINS:
    for a, b in zip(jax.tree.leaves(grads[impl]), jax.tree.leaves(grads["reference"]),
                    strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=impl)
  # Padded inputs get no gradient.
  g_x = np.asarray(grads["reference"][1])
  for b, length in enumerate(LENGTHS):
    assert not np.any(g_x[b, length:])
    assert np.all(np.any(g_x[b, :length] != 0, axis=-1))


def test_scan_unroll_gives_the_same_numbers():
  module, params, x, carry = make_case("gru")
  for reverse in (False, True):
    y1, c1 = recurrence.scan(module, params, x, LENGTHS, carry, reverse)
    y3, c3 = recurrence.scan(module, params, x, LENGTHS, carry, reverse, unroll=3)
    np.testing.assert_allclose(y1, y3, atol=1e-6)
    np.testing.assert_allclose(c1, c3, atol=1e-6)


_GRU = make_case("gru", seed=3)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_chain(impl, reverse, lengths):
  module, params, x, carry = _GRU
  return run(impl, module, params, x, lengths, carry, reverse)


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True, database=None)
@hypothesis.given(lengths=st.lists(st.integers(0, T), min_size=B, max_size=B),
                  reverse=st.booleans())
def test_scan_matches_reference_for_any_lengths(lengths, reverse):
  """Traced lengths (under jit) of any pattern: the same numbers in every chain."""
  lengths = jnp.asarray(lengths, jnp.int32)
  y_ref, c_ref = _jitted_chain("reference", reverse, lengths)
  for impl in CHAINS:
    y, c = _jitted_chain(impl, reverse, lengths)
    np.testing.assert_allclose(y, y_ref, atol=1e-6, err_msg=impl)
    np.testing.assert_allclose(c, c_ref, atol=1e-6, err_msg=impl)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("impl", birnn_jax.IMPLS)
def test_recurrent_module_runs_one_direction_like_the_reference(impl, reverse,
                                                               random_variables):
  module = make("lstm_proj")
  rng = np.random.default_rng(4)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  carry = (rng.normal(size=(B, P)).astype(np.float32),
           rng.normal(size=(B, H)).astype(np.float32))
  layer = birnn_jax.Recurrent(birnn_jax.make_cell(**CELLS["lstm_proj"], features=H),
                              reverse=reverse, impl=impl)
  variables = random_variables(layer, x, LENGTHS, carry)
  name = "backward" if reverse else "forward"
  assert list(variables["params"]) == [name]
  y, final = jax.jit(layer.apply)(variables, x, LENGTHS, carry)
  y_ref, final_ref = recurrence.reference(module, variables["params"][name], x, LENGTHS,
                                          carry, reverse)
  np.testing.assert_allclose(y, y_ref, atol=1e-6)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final_ref), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lengths_none_means_every_step_is_real():
  x = jnp.zeros((B, T, D))
  lengths = recurrence.check_inputs(x, None, "here")
  assert lengths.shape == (B,) and jnp.issubdtype(lengths.dtype, jnp.integer)
  assert np.all(np.asarray(lengths) == T)
  np.testing.assert_array_equal(recurrence.check_inputs(x, [T, 0, 1, 2], "here"),
                                [T, 0, 1, 2])


@pytest.mark.parametrize("x_shape,lengths,error,match", [
    ((B, T), None, ValueError, r"x must be \[batch, time, features\].*\(4, 6\)"),
    ((B, T, D, 1), None, ValueError, "x must be"),
    ((B, T, D), np.ones(B + 1, np.int32), ValueError, r"lengths must have shape.*\(5,\)"),
    ((B, T, D), np.ones((B, 1), np.int32), ValueError, "lengths must have shape"),
    ((B, T, D), np.ones(B, np.float32), TypeError, "lengths must be integers.*float32"),
    ((B, T, D), np.array([1, 2, -1, 3]), ValueError, r"lengths must lie in \[0, T=6\]"),
    ((B, T, D), np.array([1, 2, T + 1, 3]), ValueError, r"lengths must lie in \[0, T=6\]"),
])
def test_check_inputs_names_the_bad_argument(x_shape, lengths, error, match):
  with pytest.raises(error, match=match):
    recurrence.check_inputs(jnp.zeros(x_shape), lengths, "Where")
  with pytest.raises(error, match="^Where: "):
    recurrence.check_inputs(jnp.zeros(x_shape), lengths, "Where")
