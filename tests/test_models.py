"""The stacked BiRNN: implementations, dropout, residuals, unidirectional mode, jit/grad/vmap,
bfloat16, Flax cells, carries' layout and clear errors."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax
from birnn_jax import linen
from birnn_jax.core import layers
from helpers import assert_trees_close

pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H = 4, 6, 3, 4
LENGTHS = np.array([T, 2, 0, 1], np.int32)
FAST_IMPLS = [impl for impl in birnn_jax.IMPLS if impl != "reference"]
# Every implementation, the (slow to compile) unrolled reference loop marked slow.
IMPLS_SLOW_REFERENCE = [pytest.param(i, marks=pytest.mark.slow) if i == "reference" else i
                        for i in birnn_jax.IMPLS]


def inputs(seed=0, shape=(B, T, D)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _asymmetric_stack(impl):
  return birnn_jax.BiRNN(cell="gru", hidden_size=3, backward_cell="lstm",
                         backward_hidden_size=5, num_layers=2, impl=impl)


@pytest.fixture(scope="module")
def asymmetric_reference(random_variables):
  """Inputs, variables, carries and the reference's results (computed once)."""
  x = inputs()
  rng = np.random.default_rng(1)
  gru, lstm = rng.normal(size=(B, 3)), (rng.normal(size=(B, 5)), rng.normal(size=(B, 5)))
  carries = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), (gru, lstm, gru, lstm))
  module = _asymmetric_stack("reference")
  variables = random_variables(module, x, LENGTHS, carries)
  return x, variables, carries, module.apply(variables, x, LENGTHS, carries)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_asymmetric_stack_matches_reference_with_initial_carries(impl, asymmetric_reference):
  """Two layers, forward GRU H=3 and backward LSTM H=5: outputs [B, T, 8] and a tuple of
  per-(layer, direction) carries, in and out."""
  x, variables, carries, reference = asymmetric_reference
  assert variables["params"]["layer_1"]["forward"]["w_ih"].shape == (8, 9)
  assert variables["params"]["layer_1"]["backward"]["w_ih"].shape == (8, 20)
  y, final = jax.jit(_asymmetric_stack(impl).apply)(variables, x, LENGTHS, carries)
  assert y.shape == (B, T, 8)
  assert isinstance(final, tuple) and len(final) == 4
  assert_trees_close((y, final), reference, atol=1e-5)
  # Length-0 row: zero outputs, the given carries back.
  assert not np.any(np.asarray(y)[2])
  assert_trees_close(jax.tree.map(lambda a: a[2], final),
                     jax.tree.map(lambda a: a[2], carries), rtol=0)


_APPLY_STATIC = ("deterministic", "capture_intermediates")


def _layer_io(state, k):
  """(output of layer k, output of dropout_k or None) from captured intermediates."""
  inter = state["intermediates"]
  y = np.asarray(inter[f"layer_{k}"]["__call__"][0][0])
  drop = inter.get(f"dropout_{k}")
  return y, None if drop is None else np.asarray(drop["__call__"][0])


@pytest.fixture(scope="module")
def dropout_model(random_variables):
  module = birnn_jax.BiRNN(cell="gru", hidden_size=H, num_layers=3, dropout=0.5)
  x = inputs(2)
  variables = random_variables(module, x)
  return module, x, variables


def test_dropout_is_off_when_deterministic(dropout_model):
  module, x, variables = dropout_model
  _, state = jax.jit(module.apply, static_argnames=_APPLY_STATIC)(
      variables, x, capture_intermediates=True)  # deterministic by default
  for k in (1, 2):
    np.testing.assert_array_equal(_layer_io(state, k)[1], _layer_io(state, k - 1)[0])


def test_dropout_needs_a_dropout_rng_when_not_deterministic(dropout_model):
  module, x, variables = dropout_model
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    jax.eval_shape(lambda: module.apply(variables, x, deterministic=False))


def test_dropout_is_only_between_layers():
  x = jnp.zeros((B, T, D))
  for num_layers, expected in [(1, []), (3, ["dropout_1", "dropout_2"])]:
    module = birnn_jax.BiRNN(cell="gru", hidden_size=H, num_layers=num_layers, dropout=0.5)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    _, state = jax.eval_shape(lambda v: module.apply(
        v, x, deterministic=False, rngs={"dropout": jax.random.key(1)},
        capture_intermediates=True), variables)
    assert sorted(k for k in state["intermediates"] if k.startswith("dropout")) == expected


@pytest.mark.parametrize("variational", [False, True])
def test_dropout_masks_layer_inputs_and_variational_keeps_the_mask_over_time(
    dropout_model, variational):
  module, x, variables = dropout_model
  module = module.clone(variational_dropout=variational)
  apply = jax.jit(module.apply, static_argnames=_APPLY_STATIC)
  (y, _), state = apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(3)},
                        capture_intermediates=True)
  (y_other, _), _ = apply(variables, x, deterministic=False, capture_intermediates=True,
                          rngs={"dropout": jax.random.key(4)})
  assert not np.allclose(y, y_other)  # the rng matters
  assert np.all(np.asarray(y) != 0)  # no dropout after the last layer
  for k in (1, 2):
    layer_in, dropped = _layer_io(state, k - 1)[0], _layer_io(state, k)[1]
    assert np.all(layer_in != 0)
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], layer_in[kept] / 0.5, rtol=1e-6)
    assert 0.2 < kept.mean() < 0.8
    same_over_time = np.all(kept == kept[:, :1], axis=1)  # [B, 2H]
    assert np.all(same_over_time) == variational


@pytest.mark.parametrize("residual", [False, True])
def test_residual_adds_each_layer_input_from_the_second_layer_on(residual, random_variables):
  module = birnn_jax.BiRNN(cell="rnn", hidden_size=H, num_layers=3, residual=residual)
  x = inputs(4)
  variables = random_variables(module, x, LENGTHS)
  (y, _), state = jax.jit(module.apply, static_argnames=_APPLY_STATIC)(
      variables, x, LENGTHS, capture_intermediates=True)
  raw = [_layer_io(state, k)[0] for k in range(3)]
  expected = raw[0]
  for k in (1, 2):
    expected = raw[k] + expected if residual else raw[k]
  np.testing.assert_allclose(y, expected, atol=1e-6)
  assert not np.any(np.asarray(y)[LENGTHS == 0])


def test_unidirectional_stack_has_no_backward_and_equals_the_forward_half():
  uni = birnn_jax.BiRNN(cell="lstm", hidden_size=H, num_layers=2, bidirectional=False)
  x = inputs(5)
  (y, (h_n, c_n)), variables = jax.eval_shape(
      lambda: uni.init_with_output(jax.random.key(0), x, LENGTHS))
  for k in range(2):
    assert list(variables["params"][f"layer_{k}"]) == ["forward"]
  assert y.shape == (B, T, H) and h_n.shape == c_n.shape == (2, B, H)

  # One layer: the forward half of a bidirectional layer with the same forward weights.
  cell = linen.make_cell("lstm", H)
  forward = cell.init(jax.random.key(1), cell.initialize_carry(None, (B, D)), x[:, 0])
  backward = jax.tree.map(jnp.zeros_like, forward)
  y_uni, (h_uni, c_uni) = jax.jit(uni.clone(num_layers=1).apply)(
      {"params": {"layer_0": {"forward": forward["params"]}}}, x, LENGTHS)
  bi = birnn_jax.BiRNN(cell="lstm", hidden_size=H, merge="none")
  (y_f, _), (h_bi, c_bi) = jax.jit(bi.apply)(
      {"params": {"layer_0": {"forward": forward["params"],
                              "backward": backward["params"]}}}, x, LENGTHS)
  np.testing.assert_allclose(y_uni, y_f, atol=1e-6)
  np.testing.assert_allclose(h_uni[0], h_bi[0], atol=1e-6)
  np.testing.assert_allclose(c_uni[0], c_bi[0], atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS_SLOW_REFERENCE)
def test_jit_grad_and_vmap(impl, random_variables):
  """vmap over an extra leading axis of x and lengths (of jitted grads) equals one call on
  the flattened batch; every gradient is finite and non-zero."""
  # Two layers, but one for the unrolled reference loop (slow to compile under vmap).
  module = birnn_jax.BiRNN(cell="gru", hidden_size=H, impl=impl,
                           num_layers=1 if impl == "reference" else 2)
  x = inputs(6, (2, B, T, D))
  lengths = np.stack([LENGTHS, LENGTHS[::-1]])
  variables = random_variables(module, x[0], lengths[0])

  def loss(params, x, lengths):
    y, final = module.apply({"params": params}, x, lengths)
    return jnp.sum(y ** 2) + jnp.sum(final ** 2), (y, final)

  per_slice = jax.jit(jax.vmap(jax.grad(loss, has_aux=True), in_axes=(None, 0, 0)))
  grads, (y, final) = per_slice(variables["params"], x, lengths)
  y_flat, final_flat = jax.jit(module.apply)(variables, x.reshape(2 * B, T, D),
                                             lengths.reshape(2 * B))
  np.testing.assert_allclose(y.reshape(2 * B, T, -1), y_flat, atol=1e-6)
  np.testing.assert_allclose(jnp.concatenate(list(final), axis=1), final_flat, atol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert g.shape[0] == 2
    assert np.all(np.isfinite(g)) and np.all(np.any(g != 0, axis=tuple(range(1, g.ndim)))), \
        jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def float32_lstm(random_variables):
  """A float32 stacked LSTM: (its attributes, variables, x, outputs) for the bfloat16 test."""
  attrs = dict(cell="lstm", hidden_size=H, num_layers=2)
  x = inputs(7)
  module = birnn_jax.BiRNN(**attrs)
  variables = random_variables(module, x, LENGTHS)
  return attrs, variables, x, jax.jit(module.apply)(variables, x, LENGTHS)


@pytest.mark.parametrize("impl", IMPLS_SLOW_REFERENCE)
def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params(impl, float32_lstm):
  attrs, variables, x, (y_32, final_32) = float32_lstm
  bf16 = birnn_jax.BiRNN(dtype=jnp.bfloat16, param_dtype=jnp.float32, impl=impl, **attrs)
  for p in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(0), x, LENGTHS)):
    assert p.dtype == jnp.float32
  y_16, final_16 = jax.jit(bf16.apply)(variables, x, LENGTHS)
  assert y_16.dtype == jnp.bfloat16
  assert all(f.dtype == jnp.float32 for f in final_16)
  np.testing.assert_allclose(np.asarray(y_16, np.float32), y_32, atol=5e-2)
  assert_trees_close(final_16, final_32, atol=5e-2)
  assert not np.allclose(np.asarray(y_16, np.float32), y_32, atol=1e-6)  # really bfloat16


def test_any_flax_cell_stacks_with_scan_and_reference(random_variables):
  """BiRNN(cell=<Flax cell>): the same numbers in both (gradients: test_bidirectional)."""
  module = birnn_jax.BiRNN(cell=nn.GRUCell(features=H), num_layers=2)
  x = inputs(8)
  variables = random_variables(module, x, LENGTHS)
  y, final = jax.jit(module.apply)(variables, x, LENGTHS)
  y_ref, final_ref = jax.jit(module.clone(impl="reference").apply)(variables, x, LENGTHS)
  assert y.shape == (B, T, 2 * H)
  assert final.shape == (4, B, H)  # torch layout: [L * dirs, B, H]
  assert_trees_close((y, final), (y_ref, final_ref), atol=1e-5)
  assert not np.any(np.asarray(y)[LENGTHS == 0])


def test_merge_none_returns_the_pair_and_asymmetric_concat_the_tuple_of_carries():
  x = inputs(9)
  none = birnn_jax.BiRNN(cell="gru", hidden_size=3, backward_cell="lstm",
                         backward_hidden_size=5, merge="none")
  ((y_f, y_b), (carry_f, carry_b)), _ = jax.eval_shape(
      lambda: none.init_with_output(jax.random.key(0), x, LENGTHS))
  assert (y_f.shape, y_b.shape) == ((B, T, 3), (B, T, 5))
  assert carry_f.shape == (B, 3) and [c.shape for c in carry_b] == [(B, 5), (B, 5)]
  (y, _), _ = jax.eval_shape(
      lambda: none.clone(merge="concat").init_with_output(jax.random.key(0), x, LENGTHS))
  assert y.shape == (B, T, 8)


def test_stack_and_unstack_carries_use_torch_layout():
  carries = [(jnp.full((B, 2), i), jnp.full((B, 3), -i)) for i in range(4)]
  h, c = layers.stack_carries(carries)
  assert h.shape == (4, B, 2) and c.shape == (4, B, 3)
  np.testing.assert_array_equal(h[:, 0, 0], [0, 1, 2, 3])
  assert_trees_close(layers.unstack_carries((h, c), 4), carries, rtol=0)
  mixed = [jnp.zeros((B, 2)), (jnp.zeros((B, 3)), jnp.zeros((B, 3)))]
  assert layers.stack_carries(mixed) == tuple(mixed)
  assert layers.unstack_carries(tuple(mixed), 2) == mixed
  with pytest.raises(ValueError, match="initial_carry must hold 4 carries"):
    layers.unstack_carries(jnp.zeros((2, B, 2)), 4)


@pytest.mark.parametrize("impl", birnn_jax.IMPLS)
def test_params_for_other_input_features_are_a_clear_error(impl):
  module = birnn_jax.BiRNN(cell="lstm", hidden_size=H, impl=impl)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((B, T, 4)))
  with pytest.raises(ValueError, match=r"x with 5 features"):
    jax.eval_shape(module.apply, variables, jnp.zeros((B, T, 5)))


@pytest.mark.parametrize("x_shape,lengths,error,match", [
    ((B, T), None, ValueError, r"BiRNN: x must be \[batch, time, features\]"),
    ((B, T, D), np.ones(B + 1, np.int32), ValueError, "lengths must have shape"),
    ((B, T, D), np.ones(B, np.float32), TypeError, "lengths must be integers"),
    ((B, T, D), np.array([1, 2, -1, 3]), ValueError, r"lengths must lie in \[0, T=6\]"),
    ((B, T, D), np.array([1, 2, T + 1, 3]), ValueError, r"lengths must lie in \[0, T=6\]"),
], ids=["x_rank", "lengths_shape", "lengths_dtype", "lengths_negative", "lengths_too_long"])
def test_bad_inputs_are_clear_errors(x_shape, lengths, error, match):
  module = birnn_jax.BiRNN(cell="gru", hidden_size=H)
  with pytest.raises(error, match=match):  # raised before anything is computed
    module.init(jax.random.key(0), jnp.zeros(x_shape), lengths)


@pytest.mark.parametrize("attrs,match", [
    (dict(cell="lstn"), "unknown cell='lstn'"),
    (dict(backward_cell="lstn"), "unknown cell='lstn'"),
    (dict(merge="avg"), "unknown merge='avg'"),
    (dict(impl="cudnn"), "unknown impl='cudnn'"),
    (dict(cell="gru", proj_size=2), "proj_size"),
    (dict(cell="lstm", proj_size=H), "proj_size"),
    (dict(activation="sigmoid", cell="rnn"), "activation"),
    (dict(backward_hidden_size=5, merge="sum"), "merge='sum'"),
    (dict(backward_cell="gru", backward_hidden_size=3, merge="mul"), "merge='mul'"),
    (dict(num_layers=2, merge="none"), "merge='none'"),
    (dict(num_layers=0), "num_layers"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(backward_hidden_size=0), "backward_hidden_size"),
    (dict(hidden_size=0), "hidden size"),
])
def test_bad_attributes_are_clear_errors(attrs, match):
  module = birnn_jax.BiRNN(**dict(dict(cell="lstm", hidden_size=H), **attrs))
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((B, T, D)))


def test_initial_carry_with_the_wrong_count_is_a_clear_error():
  module = birnn_jax.BiRNN(cell="gru", hidden_size=H, num_layers=2)
  with pytest.raises(ValueError, match="initial_carry must hold 4 carries"):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((B, T, D)), None,
                   jnp.zeros((2, B, H)))
