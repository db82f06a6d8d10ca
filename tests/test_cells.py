"""Cells: PyTorch's equations, parameter layout, carries and clear errors."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax
from birnn_jax import linen

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("fast_compile")

B, D, H, P = 3, 4, 5, 2

# name -> (make_cell kwargs, torch class, torch kwargs, gates)
CELLS = {
    "rnn_tanh": (dict(name="rnn", activation="tanh"), "RNN", dict(nonlinearity="tanh"), 1),
    "rnn_relu": (dict(name="rnn", activation="relu"), "RNN", dict(nonlinearity="relu"), 1),
    "gru": (dict(name="gru"), "GRU", {}, 3),
    "lstm": (dict(name="lstm"), "LSTM", {}, 4),
    "lstm_proj": (dict(name="lstm", proj_size=P), "LSTM", dict(proj_size=P), 4),
}


def make(cell, **kwargs):
  return linen.make_cell(features=H, **CELLS[cell][0], **kwargs)


def out_size(cell):
  return P if cell == "lstm_proj" else H


def random_carry(cell, rng):
  h = rng.normal(size=(B, out_size(cell))).astype(np.float32)
  if cell.startswith("lstm"):
    return h, rng.normal(size=(B, H)).astype(np.float32)
  return h


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_one_step_matches_torch(cell, use_bias):
  """One step from a random carry equals torch's RNN/GRU/LSTM on a length-1 sequence."""
  _, kind, torch_kwargs, _ = CELLS[cell]
  torch.manual_seed(0)
  rnn = getattr(torch.nn, kind)(D, H, bias=use_bias, batch_first=True,
                                **torch_kwargs).double()
  params = {name[:-len("_l0")].replace("weight_", "w_").replace("bias_", "b_"):
            np.asarray(p.detach().numpy().T, np.float32)
            for name, p in rnn.named_parameters()}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, D)).astype(np.float32)
  carry = random_carry(cell, rng)

  new_carry, y = make(cell, use_bias=use_bias).apply({"params": params}, carry, x)

  carry_t = tuple(torch.tensor(c[None], dtype=torch.float64) for c in jax.tree.leaves(carry))
  with torch.no_grad():
    out_t, final_t = rnn(torch.tensor(x[:, None], dtype=torch.float64),
                         carry_t if len(carry_t) == 2 else carry_t[0])
  np.testing.assert_allclose(y, out_t[:, 0].numpy(), atol=1e-6, rtol=1e-5)
  final_t = final_t if isinstance(final_t, tuple) else (final_t,)
  for ours, theirs in zip(jax.tree.leaves(new_carry), final_t, strict=True):
    np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_project_inputs_then_step_equals_call(cell):
  module = make(cell)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(B, D)).astype(np.float32)
  carry = random_carry(cell, rng)
  params = module.init(jax.random.key(0), carry, x)["params"]
  carry_a, y_a = module.apply({"params": params}, carry, x)
  carry_b, y_b = module.core.step(params, carry, module.core.project_inputs(params, x))
  np.testing.assert_allclose(y_a, y_b, atol=1e-7)
  np.testing.assert_allclose(module.core.output(carry_b), y_b, atol=1e-7)
  for a, b in zip(jax.tree.leaves(carry_a), jax.tree.leaves(carry_b), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_parameters_have_torch_layout_transposed_and_torch_init(cell, use_bias):
  module = make(cell, use_bias=use_bias)
  gh = CELLS[cell][3] * H
  x = jnp.zeros((B, D))
  params = module.init(jax.random.key(0), module.initialize_carry(None, x.shape), x)["params"]
  shapes = {"w_ih": (D, gh), "w_hh": (out_size(cell), gh)}
  if use_bias:
    shapes.update(b_ih=(gh,), b_hh=(gh,))
  if cell == "lstm_proj":
    shapes["w_hr"] = (H, P)
  assert jax.tree.map(jnp.shape, params) == shapes
  bound = 1 / np.sqrt(H)  # PyTorch: U(-1/sqrt(H), 1/sqrt(H)) for every parameter
  for name, p in params.items():
    assert p.dtype == jnp.float32
    assert np.all(np.abs(p) <= bound), name
  values = np.concatenate([np.ravel(p) for p in params.values()])
  assert values.min() < -bound / 2 and values.max() > bound / 2


@pytest.mark.parametrize("cell", list(CELLS))
def test_initialize_carry_is_zero_with_the_right_shapes(cell):
  carry = make(cell).initialize_carry(jax.random.key(0), (2, B, D))
  expected = [(2, B, out_size(cell))] + ([(2, B, H)] if cell.startswith("lstm") else [])
  assert [c.shape for c in jax.tree.leaves(carry)] == expected
  for c in jax.tree.leaves(carry):
    assert c.dtype == jnp.float32 and not np.any(c)


def test_lstm_projection_output_is_h_not_c():
  module = make("lstm_proj")
  rng = np.random.default_rng(2)
  x = rng.normal(size=(B, D)).astype(np.float32)
  carry = random_carry("lstm_proj", rng)
  params = module.init(jax.random.key(0), carry, x)["params"]
  (h, c), y = module.apply({"params": params}, carry, x)
  assert h.shape == (B, P) and c.shape == (B, H) and y.shape == (B, P)
  np.testing.assert_array_equal(y, h)
  # h' = (σ(o) ⊙ tanh(c')) W_hr, with o the last gate block.
  gates = x @ params["w_ih"] + params["b_ih"] + carry[0] @ params["w_hh"] + params["b_hh"]
  o = gates[:, 3 * H:]
  np.testing.assert_allclose(h, (jax.nn.sigmoid(o) * np.tanh(c)) @ params["w_hr"], atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn_relu", "gru", "lstm_proj"])
def test_bfloat16_compute_keeps_float32_carries_and_params(cell):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(B, D)).astype(np.float32)
  carry = random_carry(cell, rng)
  f32 = make(cell)
  params = f32.init(jax.random.key(0), carry, x)["params"]
  bf16 = make(cell, dtype=jnp.bfloat16)
  assert jax.tree.map(lambda p: p.dtype, bf16.init(jax.random.key(0), carry, x)) == \
      jax.tree.map(lambda p: jnp.dtype(jnp.float32), {"params": params})
  carry_16, y_16 = bf16.apply({"params": params}, carry, x)
  carry_32, y_32 = f32.apply({"params": params}, carry, x)
  assert y_16.dtype == jnp.bfloat16
  for a, b in zip(jax.tree.leaves(carry_16), jax.tree.leaves(carry_32)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=5e-2)
  np.testing.assert_allclose(np.asarray(y_16, np.float32), y_32, atol=5e-2)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_proj"])
def test_wrong_number_of_input_features_is_a_clear_error(cell):
  module = make(cell)
  x4 = jnp.zeros((B, D))
  carry = module.initialize_carry(None, x4.shape)
  params = module.init(jax.random.key(0), carry, x4)["params"]
  # The step-wise Flax call is caught by Flax's own shape check; the hoisted projection
  # that the recurrences use says what is wrong.
  with pytest.raises(flax.errors.ScopeParamShapeError, match="w_ih"):
    module.apply({"params": params}, carry, jnp.zeros((B, D + 1)))
  with pytest.raises(ValueError, match=r"inputs have 5 features.*w_ih expects 4"):
    module.core.project_inputs(params, jnp.zeros((B, 7, D + 1)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="lstn"), "cell='lstn'"),
    (dict(name="gru", proj_size=2), "proj_size"),
    (dict(name="rnn", proj_size=2), "proj_size"),
    (dict(name="lstm", proj_size=H), "proj_size"),
    (dict(name="lstm", proj_size=-1), "proj_size"),
    (dict(name="rnn", activation="sigmoid"), "activation"),
    (dict(name="gru", features=0), "hidden size"),
    (dict(name="gru", features=2.5), "hidden size"),
])
def test_make_cell_rejects_bad_settings(kwargs, match):
  kwargs = dict(dict(features=H), **kwargs)
  with pytest.raises(ValueError, match=match):
    linen.make_cell(**kwargs)


def test_make_cell_builds_the_named_cell():
  assert set(birnn_jax.CELLS) == {"rnn", "gru", "lstm"}
  rnn = linen.make_cell("rnn", 3, activation="relu", use_bias=False)
  assert isinstance(rnn, birnn_jax.SimpleCell)
  assert (rnn.features, rnn.activation, rnn.use_bias) == (3, "relu", False)
  assert isinstance(linen.make_cell("gru", 3), birnn_jax.GRUCell)
  lstm = linen.make_cell("lstm", 3, proj_size=0)
  assert isinstance(lstm, birnn_jax.LSTMCell) and lstm.proj_size is None
  assert lstm.output_size == 3
  assert linen.make_cell("lstm", 3, proj_size=2).output_size == 2


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_pure_cell_initialises_what_the_linen_cell_declares(cell):
  module = make(cell)
  x = jnp.zeros((B, D))
  linen_params = module.init(jax.random.key(0), module.initialize_carry(None, x.shape),
                             x)["params"]
  pure_params = module.core.init(jax.random.key(0), D)
  assert list(pure_params) == list(module.core.param_shapes(D)) == list(linen_params)
  assert jax.tree.map(jnp.shape, pure_params) == jax.tree.map(jnp.shape, linen_params)
  bound = 1 / np.sqrt(H)
  values = np.concatenate([np.ravel(p) for p in pure_params.values()])
  assert np.all(np.abs(values) <= bound) and values.std() > bound / 3
  # One key per parameter: no two parameters share their draws.
  firsts = [float(np.ravel(p)[0]) for p in pure_params.values()]
  assert len(set(firsts)) == len(firsts)


@pytest.mark.parametrize("cell", ["gru", "lstm_proj"])
def test_our_linen_cell_runs_inside_flax_nn_rnn_as_in_recurrent(cell):
  module = make(cell)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(B, 6, D)), jnp.float32)
  rnn = flax.linen.RNN(module)
  variables = rnn.init(jax.random.key(0), x)
  ours = birnn_jax.Recurrent(module)
  y_ours, _ = ours.apply({"params": {"forward": variables["params"]["cell"]}}, x)
  np.testing.assert_allclose(rnn.apply(variables, x), y_ours, atol=1e-6)
