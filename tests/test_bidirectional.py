"""The bidirectional layer: every implementation against the reference, the dependency
structure of the outputs (by gradients), final states, merges and asymmetric directions."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax
from birnn_jax import linen
from birnn_jax.core import layers

pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H, P = 4, 6, 3, 4, 2
LENGTHS = np.array([4, T, 0, 1], np.int32)
FAST_IMPLS = [impl for impl in birnn_jax.IMPLS if impl != "reference"]

# name -> (forward cell, backward cell)
PAIRS = {
    "rnn_tanh": (dict(name="rnn", features=H), dict(name="rnn", features=H)),
    "rnn_relu": (dict(name="rnn", features=H, activation="relu"),) * 2,
    "gru": (dict(name="gru", features=H),) * 2,
    "lstm": (dict(name="lstm", features=H),) * 2,
    "lstm_proj": (dict(name="lstm", features=H, proj_size=P),) * 2,
    "gru3_lstm5": (dict(name="gru", features=3), dict(name="lstm", features=5)),
}


def layer(pair, **kwargs):
  forward, backward = PAIRS[pair]
  return birnn_jax.Bidirectional(linen.make_cell(**forward), linen.make_cell(**backward),
                                 **kwargs)


def random_like(tree, rng):
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), tree)


def inputs(seed=0):
  return np.random.default_rng(seed).normal(size=(B, T, D)).astype(np.float32)


def random_carries(module, x, rng):
  zero = (module.forward_cell.initialize_carry(None, x[:, 0].shape),
          module.backward_cell.initialize_carry(None, x[:, 0].shape))
  return random_like(zero, rng)


def jit_unless_reference(fn, impl):
  # The reference loop is unrolled Python: cheaper to run eagerly than to compile.
  return fn if impl == "reference" else jax.jit(fn)


def init_params(module, x):
  """The layer's parameters straight from its cells (no recurrence to compile)."""
  def cell_init(cell, key):
    return cell.init(key, cell.initialize_carry(None, x[:, 0].shape), x[:, 0])["params"]
  return {"forward": cell_init(module.forward_cell, jax.random.key(0)),
          "backward": cell_init(module.backward_cell, jax.random.key(1))}


def outputs_and_gradients(module, params, x, carries, g_out, g_carries):
  """((y_f, y_b), final carries) and the gradients of <outputs, g> w.r.t. params, x, carries."""
  def loss(params, x, carries):
    out = module.apply({"params": params}, x, LENGTHS, carries)
    value = sum(jnp.vdot(a, g) for a, g in zip(jax.tree.leaves(out),
                                               jax.tree.leaves((g_out, g_carries))))
    return value, out

  fn = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)
  (_, out), grads = jit_unless_reference(fn, module.impl)(params, x, carries)
  return out, grads


@functools.lru_cache(maxsize=None)
def expected_case(pair, impl):
  """Inputs, random carries and cotangents, and `impl`'s results, once per pair."""
  rng = np.random.default_rng(0)
  x = inputs()
  module = layer(pair, merge="none", impl=impl)
  carries = random_carries(module, x, rng)
  params = init_params(module, x)
  (y_f, y_b), _ = jax.eval_shape(module.apply, {"params": params}, x, LENGTHS, carries)
  g_out, g_carries = random_like((y_f, y_b), rng), random_like(carries, rng)
  args = (params, x, carries, g_out, g_carries)
  return args, outputs_and_gradients(module, *args)


def assert_same_results(impl, pair, expected_impl):
  args, (out_expected, grads_expected) = expected_case(pair, expected_impl)
  out, grads = outputs_and_gradients(layer(pair, merge="none", impl=impl), *args)
  for name, ours, expected in [("outputs and final carries", out, out_expected),
                               ("gradients", grads, grads_expected)]:
    assert jax.tree.structure(ours) == jax.tree.structure(expected), name
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


# The (eager) reference with gradients is the slow part. Fast: the pair with the most
# structure (projected LSTM carries) against the reference, and one cell of each other gate
# structure (rnn, gru) in every further implementation against 'scan' (whose chains meet
# the reference in test_recurrence and torch in test_torch_interop). The rest is slow.
_REFERENCE_PAIRS = ("lstm_proj",)
_SCAN_PAIRS = tuple(p for p in PAIRS if p not in _REFERENCE_PAIRS)
_FAST_SCAN_PAIRS = ("rnn_relu", "gru")


def _slow_unless(pairs, fast):
  return [p if p in fast else pytest.param(p, marks=pytest.mark.slow) for p in pairs]


@pytest.mark.parametrize("pair", _slow_unless(PAIRS, _REFERENCE_PAIRS))
@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_matches_reference_with_initial_carries_and_gradients(impl, pair):
  assert_same_results(impl, pair, "reference")


@pytest.mark.parametrize("pair", _slow_unless(_SCAN_PAIRS, _FAST_SCAN_PAIRS))
@pytest.mark.parametrize("impl", [i for i in FAST_IMPLS if i != "scan"])
def test_matches_scan_with_initial_carries_and_gradients(impl, pair):
  assert_same_results(impl, pair, "scan")


@pytest.mark.parametrize("impl", [
    pytest.param(i, marks=pytest.mark.slow) if i == "reference" else i for i in birnn_jax.IMPLS])
def test_outputs_depend_only_on_the_right_inputs(impl, random_variables):
  """Forward output at t reads x[:t+1], backward output at t reads x[t:len]; nothing reads
  padding or another sequence (Jacobians w.r.t. x)."""
  x = inputs(1)
  module = layer("lstm_proj", merge="none", impl=impl)
  variables = random_variables(module, x, LENGTHS)
  jac = jax.jacrev(lambda x: module.apply(variables, x, LENGTHS))
  (j_f, j_b), ((j_hf, j_cf), (j_hb, j_cb)) = jax.tree.map(
      lambda j: np.abs(np.asarray(j)).sum(-1), jit_unless_reference(jac, impl)(x))
  # j_f[b, t, o, b2, s] = |d y_f[b, t, o] / d x[b2, s, :]|; finals: j_hf[b, o, b2, s].
  for b, length in enumerate(LENGTHS):
    others = np.arange(B) != b
    for j in (j_f, j_b, j_hf, j_cf, j_hb, j_cb):
      assert not np.any(j[b][..., others, :]), "depends on another sequence"
      assert not np.any(j[b][..., b, length:]), "depends on padding"
    assert not np.any(j_f[b, length:]) and not np.any(j_b[b, length:])  # zero outputs
    for t in range(length):
      reads_f = j_f[b, t, :, b].sum(0) > 0
      reads_b = j_b[b, t, :, b].sum(0) > 0
      np.testing.assert_array_equal(reads_f, np.arange(T) <= t, err_msg=f"fwd b={b} t={t}")
      np.testing.assert_array_equal(reads_b, (np.arange(T) >= t) & (np.arange(T) < length),
                                    err_msg=f"bwd b={b} t={t}")
    for j in (j_hf, j_cf, j_hb, j_cb):  # final states read the whole real sequence
      np.testing.assert_array_equal(j[b, :, b].sum(0) > 0, np.arange(T) < length)


@pytest.mark.parametrize("impl", birnn_jax.IMPLS)
def test_final_states_are_the_outputs_at_the_last_real_step(impl, random_variables):
  rng = np.random.default_rng(2)
  x = inputs(2)
  module = layer("lstm_proj", merge="none", impl=impl)
  carries = random_carries(module, x, rng)
  variables = random_variables(module, x, LENGTHS, carries)
  (y_f, y_b), (final_f, final_b) = jax.jit(module.apply)(variables, x, LENGTHS, carries)
  h_f, h_b = jax.tree.leaves(final_f)[0], jax.tree.leaves(final_b)[0]
  for b, length in enumerate(LENGTHS):
    if length == 0:  # the initial carries come back; outputs are zero
      for a, c in zip(jax.tree.leaves((final_f, final_b)), jax.tree.leaves(carries)):
        np.testing.assert_array_equal(a[b], c[b])
    else:
      np.testing.assert_allclose(h_f[b], y_f[b, length - 1], atol=1e-6)
      np.testing.assert_allclose(h_b[b], y_b[b, 0], atol=1e-6)
    assert not np.any(y_f[b, length:]) and not np.any(y_b[b, length:])


def test_lengths_none_equals_full_lengths(random_variables):
  x = inputs(3)
  module = layer("gru")
  variables = random_variables(module, x)
  apply = jax.jit(module.apply)
  y_none, c_none = apply(variables, x)
  y_full, c_full = apply(variables, x, np.full(B, T, np.int32))
  np.testing.assert_array_equal(y_none, y_full)
  for a, b in zip(jax.tree.leaves(c_none), jax.tree.leaves(c_full)):
    np.testing.assert_array_equal(a, b)


def test_asymmetric_directions_concat_and_none():
  """D2L 10.4 exercise 1: forward GRU with H=3, backward LSTM with H=5."""
  x = inputs()
  concat = layer("gru3_lstm5")
  (y, (carry_f, carry_b)), variables = jax.eval_shape(
      lambda: concat.init_with_output(jax.random.key(0), x, LENGTHS))
  assert y.shape == (B, T, 8)
  assert carry_f.shape == (B, 3)
  assert [c.shape for c in carry_b] == [(B, 5), (B, 5)]
  params = variables["params"]
  assert params["forward"]["w_hh"].shape == (3, 9)
  assert params["backward"]["w_hh"].shape == (5, 20)
  (y_f, y_b), _ = jax.eval_shape(layer("gru3_lstm5", merge="none").apply, variables, x)
  assert (y_f.shape, y_b.shape) == ((B, T, 3), (B, T, 5))


@pytest.mark.parametrize("merge", ["sum", "mean", "mul"])
def test_merges_that_need_equal_sizes_reject_asymmetric_directions(merge):
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match=f"merge='{merge}'.*forward 3 and backward 5"):
    layer("gru3_lstm5", merge=merge).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=f"merge='{merge}'"):
    birnn_jax.merge_directions(merge, jnp.zeros((B, T, 3)), jnp.zeros((B, T, 5)))


@pytest.mark.parametrize("merge", birnn_jax.MERGES)
def test_merge_directions_computes_what_it_says(merge):
  rng = np.random.default_rng(4)
  y_f, y_b = rng.normal(size=(2, B, T, H)).astype(np.float32)
  expected = {"concat": np.concatenate([y_f, y_b], -1), "sum": y_f + y_b,
              "mean": (y_f + y_b) / 2, "mul": y_f * y_b, "none": (y_f, y_b)}[merge]
  out = birnn_jax.merge_directions(merge, y_f, y_b)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_layer_merges_are_computed_from_the_two_directions(random_variables):
  x = inputs(5)
  module = layer("rnn_tanh", merge="none")
  variables = random_variables(module, x, LENGTHS)
  (y_f, y_b), _ = jax.jit(module.apply)(variables, x, LENGTHS)
  y_f, y_b = np.asarray(y_f), np.asarray(y_b)
  for merge, expected in [("mean", (y_f + y_b) / 2), ("mul", y_f * y_b)]:
    y, _ = jax.jit(module.clone(merge=merge).apply)(variables, x, LENGTHS)
    np.testing.assert_allclose(y, expected, atol=1e-6, err_msg=merge)


def test_any_flax_cells_give_the_same_numbers_in_scan_and_reference(random_variables):
  """Different Flax cells in the two directions."""
  x = inputs(6)
  module = birnn_jax.Bidirectional(nn.OptimizedLSTMCell(features=4), nn.GRUCell(features=3))
  variables = random_variables(module, x, LENGTHS)
  y, (carry_f, carry_b) = jax.jit(module.apply)(variables, x, LENGTHS)
  assert y.shape == (B, T, 7)
  assert [c.shape for c in carry_f] == [(B, 4), (B, 4)] and carry_b.shape == (B, 3)
  reference = jax.jit(module.clone(impl="reference").apply)(variables, x, LENGTHS)
  for a, b in zip(jax.tree.leaves((y, (carry_f, carry_b))), jax.tree.leaves(reference),
                  strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  y = np.asarray(y)
  assert not np.any(y[2]) and np.all(np.any(y[3, :1] != 0, -1))  # lengths 0 and 1
  assert not np.any(y[3, 1:])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(merge="avg"), ValueError, "unknown merge='avg'"),
    (dict(impl="cudnn"), ValueError, "unknown impl='cudnn'"),
])
def test_bad_attributes_are_clear_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    layer("gru", **kwargs).init(jax.random.key(0), jnp.zeros((B, T, D)))


def test_bad_inputs_are_clear_errors(random_variables):
  module = layer("gru")
  x = jnp.zeros((B, T, D))
  variables = random_variables(module, x)
  with pytest.raises(ValueError, match="x must be"):
    module.apply(variables, x[0])
  with pytest.raises(ValueError, match="lengths must have shape"):
    module.apply(variables, x, LENGTHS[:2])
  with pytest.raises(ValueError, match="lengths must lie in"):
    module.apply(variables, x, LENGTHS + T)
  with pytest.raises(ValueError, match=r"x with 4 features \(x.shape=\(4, 6, 4\)\)"):
    module.apply(variables, jnp.zeros((B, T, D + 1)))


def test_implementations_are_chosen_in_one_place():
  assert birnn_jax.IMPLS == layers.IMPLS == ("reference", "scan", "fused")
  assert layers.resolve_impl("fused") is layers.Impl.FUSED
  with pytest.raises(ValueError, match=r"unknown impl='fast'; expected one of \('reference'"):
    layers.resolve_impl("fast")


def test_a_merge_function_is_taken_where_flax_takes_one(random_variables):
  x, lengths = np.ones((2, 3, 4), np.float32), np.array([3, 1], np.int32)
  weighted = lambda y_f, y_b: 2.0 * y_f - y_b
  module = birnn_jax.BiRNN(cell="gru", hidden_size=3, merge=weighted)
  variables = random_variables(module, x, lengths)
  y, _ = module.apply(variables, x, lengths)
  y_f, y_b = module.clone(merge="none").apply(variables, x, lengths)[0]
  np.testing.assert_allclose(y, 2.0 * y_f - y_b, rtol=1e-6)
  assert layers.merged_size(weighted, 3, 3) == 3
  assert layers.merged_size(lambda a, b: jnp.concatenate([a, b, a], -1), 3, 2) == 8
