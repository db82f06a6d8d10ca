"""BiRNN against PyTorch (float64) with copied weights: the strongest correctness oracle.

Every cell and implementation: padded outputs, final states in torch's [L*dirs, B, H]
layout, and gradients w.r.t. the inputs and every parameter; then the to_torch direction.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax

torch = pytest.importorskip("torch")
from torch.nn.utils import rnn as rnn_utils  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H, P = 4, 6, 3, 4, 2
ATOL, RTOL = 1e-5, 1e-4

# name -> (torch class, torch kwargs)
CELLS = {
    "rnn_tanh": ("RNN", dict(nonlinearity="tanh")),
    "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "gru": ("GRU", {}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=P)),
}
# A few configurations instead of the full product: together with the cell/impl offset
# below, every implementation meets every configuration and every cell meets several.
CONFIGS = [
    dict(num_layers=1, bidirectional=True, bias=True, batch_first=True),
    dict(num_layers=2, bidirectional=False, bias=False, batch_first=False),
    dict(num_layers=3, bidirectional=True, bias=False, batch_first=True),
    dict(num_layers=2, bidirectional=True, bias=True, batch_first=False),
    dict(num_layers=1, bidirectional=False, bias=True, batch_first=True),
]


def _config_id(c):
  return (f"L{c['num_layers']}-{'bi' if c['bidirectional'] else 'uni'}-"
          f"{'bias' if c['bias'] else 'nobias'}-{'bf' if c['batch_first'] else 'tf'}")


def _cases():
  for i, cell in enumerate(CELLS):
    for j, impl in enumerate(birnn_jax.IMPLS):
      config = CONFIGS[(i + j) % len(CONFIGS)]
      # The eager reference loop is slow to differentiate through stacks; it also meets
      # the per-sequence loop and 'scan' (test_recurrence, test_bidirectional).
      slow = impl == "reference" and config["num_layers"] > 1
      yield pytest.param(cell, impl, config, id=f"{cell}-{impl}-{_config_id(config)}",
                         marks=[pytest.mark.slow] if slow else [])


def _slow_for_reference(impls):
  return [pytest.param(i, marks=pytest.mark.slow) if i == "reference" else i for i in impls]


def make_torch(cell, seed=0, **config):
  kind, kwargs = CELLS[cell]
  torch.manual_seed(seed)
  return getattr(torch.nn, kind)(D, H, **kwargs, **config).double()


def random_lengths(rng, batch=B, num_steps=T):
  """Lengths in [1, T] that include 1 and T, in random order."""
  lengths = [num_steps, 1] + list(rng.integers(1, num_steps + 1, batch - 2))
  return rng.permutation(np.asarray(lengths, np.int32))


def run_torch(rnn, x, lengths, initial=None):
  """Torch's padded [B, T, out] outputs and final state for batch-major x."""
  xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  seq = xt if rnn.batch_first else xt.transpose(0, 1)
  packed = rnn_utils.pack_padded_sequence(
      seq, torch.as_tensor(lengths, dtype=torch.int64), batch_first=rnn.batch_first,
      enforce_sorted=False)
  out, final = rnn(packed, initial)
  out, _ = rnn_utils.pad_packed_sequence(out, batch_first=rnn.batch_first,
                                         total_length=x.shape[1])
  if not rnn.batch_first:
    out = out.transpose(0, 1)
  return xt, out, final


def leaves(final):
  """Final state as a list of arrays: [h_n] or [h_n, c_n] (torch or ours)."""
  if isinstance(final, (tuple, list)):
    return list(final)
  return [final]


def to_np(t):
  return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def our_param(params, torch_name):
  """Our parameter (torch layout, i.e. transposed) for a torch name like weight_ih_l1_reverse."""
  match = re.fullmatch(r"(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?", torch_name)
  assert match, torch_name
  kind, which, layer, reverse = match.groups()
  ours = ("w_" if kind == "weight" else "b_") + which
  direction = "backward" if reverse else "forward"
  return np.asarray(params[f"layer_{layer}"][direction][ours]).T


def jit_unless_reference(fn, impl):
  # The reference loop is unrolled Python: cheaper to run eagerly than to compile.
  return fn if impl == "reference" else jax.jit(fn)


@pytest.mark.parametrize("cell,impl,config", list(_cases()))
def test_outputs_final_states_and_gradients_match_torch(cell, impl, config):
  """Torch sees the rows with lengths in [1, T]; ours also gets a length-0 row, which must
  give zero outputs, the initial (zero) final states and zero input gradients."""
  rng = np.random.default_rng(0)
  rnn = make_torch(cell, **config)
  module, variables = birnn_jax.from_torch(rnn, impl=impl)
  x_real = rng.normal(size=(B - 1, T, D)).astype(np.float32)
  lengths_real = random_lengths(rng, batch=B - 1)

  xt, out_t, final_t = run_torch(rnn, x_real, lengths_real)
  g_out = rng.normal(size=out_t.shape)
  g_final = [rng.normal(size=f.shape) for f in leaves(final_t)]
  loss_t = (out_t * torch.tensor(g_out)).sum() + sum(
      (f * torch.tensor(g)).sum() for f, g in zip(leaves(final_t), g_final))
  loss_t.backward()

  # Our batch: the same rows plus a length-0 row (non-zero inputs) at a random position.
  empty = int(rng.integers(0, B))
  real = np.arange(B) != empty
  x = np.insert(x_real, empty, rng.normal(size=(T, D)), axis=0).astype(np.float32)
  lengths = np.insert(lengths_real, empty, 0).astype(np.int32)
  g_out = np.insert(g_out, empty, rng.normal(size=g_out.shape[1:]), axis=0)
  g_final = [np.insert(g, empty, rng.normal(size=g[:, 0].shape), axis=1) for g in g_final]

  def loss(params, x):
    y, final = module.apply({"params": params}, x, lengths)
    value = jnp.sum(y * g_out) + sum(jnp.sum(f * g) for f, g in zip(leaves(final), g_final))
    return value, (y, final)

  grad_fn = jit_unless_reference(jax.value_and_grad(loss, (0, 1), has_aux=True), impl)
  (_, (y, final)), (g_params, g_x) = grad_fn(variables["params"], x)
  y, g_x, final = np.asarray(y), np.asarray(g_x), [np.asarray(f) for f in leaves(final)]

  directions = 2 if config["bidirectional"] else 1
  out_size = P if cell == "lstm_proj" else H
  assert y.shape == (B, T, directions * out_size)
  np.testing.assert_allclose(y[real], to_np(out_t), atol=ATOL, rtol=RTOL)
  assert len(final) == len(leaves(final_t))
  for ours, theirs in zip(final, leaves(final_t)):
    assert ours[:, real].shape == tuple(theirs.shape)  # [L * dirs, B, H]
    np.testing.assert_allclose(ours[:, real], to_np(theirs), atol=ATOL, rtol=RTOL)
  np.testing.assert_allclose(g_x[real], to_np(xt.grad), atol=ATOL, rtol=RTOL)
  named = dict(rnn.named_parameters())
  assert len(jax.tree.leaves(g_params)) == len(named)
  for name, p in named.items():
    np.testing.assert_allclose(our_param(g_params, name), to_np(p.grad), atol=ATOL,
                               rtol=RTOL, err_msg=name)
  # The length-0 row.
  assert np.all(y[empty] == 0)
  for f in final:
    assert np.all(f[:, empty] == 0)
  assert np.all(g_x[empty] == 0)


@pytest.mark.parametrize("impl", _slow_for_reference(birnn_jax.IMPLS))
def test_initial_state_and_its_gradient_match_torch(impl):
  rng = np.random.default_rng(2)
  rnn = make_torch("lstm_proj", num_layers=2, bidirectional=True)
  module, variables = birnn_jax.from_torch(rnn, impl=impl)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  lengths = random_lengths(rng)
  initial = (rng.normal(size=(4, B, P)).astype(np.float32),
             rng.normal(size=(4, B, H)).astype(np.float32))
  initial_t = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True)
                    for a in initial)
  _, out_t, final_t = run_torch(rnn, x, lengths, initial_t)
  g_out = rng.normal(size=out_t.shape)
  (out_t * torch.tensor(g_out)).sum().backward()

  def loss(carry):
    y, final = module.apply(variables, x, lengths, carry)
    return jnp.sum(y * g_out), (y, final)

  grad_fn = jit_unless_reference(jax.grad(loss, has_aux=True), impl)
  g_carry, (y, final) = grad_fn(initial)
  np.testing.assert_allclose(y, to_np(out_t), atol=ATOL, rtol=RTOL)
  for ours, theirs in zip(leaves(final), leaves(final_t)):
    np.testing.assert_allclose(ours, to_np(theirs), atol=ATOL, rtol=RTOL)
  for ours, theirs in zip(leaves(g_carry), initial_t):
    np.testing.assert_allclose(ours, to_np(theirs.grad), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("impl,batch_first", [
    (impl, j % 2 == 0) for j, impl in enumerate(birnn_jax.IMPLS)])
def test_unpacked_full_length_input_matches_torch(impl, batch_first):
  """Without lengths, torch reads x in its own layout; ours always takes [B, T, D]."""
  rng = np.random.default_rng(3)
  rnn = make_torch("gru", num_layers=2, bidirectional=True, batch_first=batch_first)
  module, variables = birnn_jax.from_torch(rnn, impl=impl)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  with torch.no_grad():
    xt = torch.tensor(x, dtype=torch.float64)
    out_t, h_n = rnn(xt if batch_first else xt.transpose(0, 1))
  if not batch_first:
    out_t = out_t.transpose(0, 1)
  y, final = jax.jit(module.apply)(variables, x)
  np.testing.assert_allclose(y, to_np(out_t), atol=ATOL, rtol=RTOL)
  np.testing.assert_allclose(final, to_np(h_n), atol=ATOL, rtol=RTOL)


def test_from_torch_builds_the_stacked_birnn_with_overrides():
  rnn = make_torch("rnn_relu", num_layers=2, bidirectional=True, bias=False, dropout=0.25)
  module, variables = birnn_jax.from_torch(rnn, impl="reference", unroll=2)
  assert isinstance(module, birnn_jax.BiRNN)
  assert (module.cell, module.hidden_size, module.num_layers) == ("rnn", H, 2)
  assert module.activation == "relu" and module.bidirectional and not module.use_bias
  assert module.dropout == 0.25
  assert (module.impl, module.unroll) == ("reference", 2)
  assert set(variables["params"]) == {"layer_0", "layer_1"}
  assert set(variables["params"]["layer_1"]) == {"forward", "backward"}
  assert set(variables["params"]["layer_1"]["forward"]) == {"w_ih", "w_hh"}
  assert variables["params"]["layer_1"]["forward"]["w_ih"].shape == (2 * H, H)


def test_from_torch_rejects_other_modules():
  with pytest.raises(TypeError, match="RNN, GRU or LSTM"):
    birnn_jax.from_torch(torch.nn.Linear(3, 4))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_from_torch_to_torch_round_trip_keeps_the_state_dict(cell, bidirectional):
  rnn = make_torch(cell, num_layers=2, bidirectional=bidirectional, bias=cell != "gru")
  module, variables = birnn_jax.from_torch(rnn)
  back = birnn_jax.to_torch(module, variables)
  assert type(back) is type(rnn)
  original, exported = rnn.state_dict(), back.state_dict()
  assert set(exported) == set(original)
  for name, value in original.items():
    np.testing.assert_allclose(exported[name].numpy(), value.numpy(), rtol=0, atol=1e-7,
                               err_msg=name)
  if cell.startswith("lstm"):
    assert back.proj_size == rnn.proj_size
  if cell.startswith("rnn"):
    assert back.nonlinearity == rnn.nonlinearity


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm_proj"])
def test_birnn_initialised_in_jax_runs_the_same_in_torch(cell):
  kind, kwargs = CELLS[cell]
  module = birnn_jax.BiRNN(cell=kind.lower(), hidden_size=H, num_layers=2,
                           activation=kwargs.get("nonlinearity", "tanh"),
                           proj_size=kwargs.get("proj_size"))
  rng = np.random.default_rng(4)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  lengths = random_lengths(rng)
  variables = jax.jit(module.init)(jax.random.key(0), x, lengths)
  y, final = jax.jit(module.apply)(variables, x, lengths)
  rnn = birnn_jax.to_torch(module, variables).double()
  assert rnn.batch_first
  with torch.no_grad():
    _, out_t, final_t = run_torch(rnn, x, lengths)
  np.testing.assert_allclose(y, to_np(out_t), atol=ATOL, rtol=RTOL)
  for ours, theirs in zip(leaves(final), leaves(final_t)):
    np.testing.assert_allclose(ours, to_np(theirs), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("attrs,match", [
    (dict(cell="gru", backward_cell="lstm"), "both directions"),
    (dict(cell="gru", backward_hidden_size=3), "both directions"),
    (dict(cell="gru", merge="sum"), "merge"),
    (dict(cell="gru", num_layers=2, residual=True), "residual"),
])
def test_to_torch_rejects_what_torch_cannot_express(attrs, match):
  module = birnn_jax.BiRNN(hidden_size=H, **attrs)
  x = np.zeros((B, T, D), np.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=match):
    birnn_jax.to_torch(module, variables)


def test_to_torch_rejects_flax_cells():
  module = birnn_jax.BiRNN(cell=nn.GRUCell(features=H))
  with pytest.raises(ValueError, match="cell"):
    birnn_jax.to_torch(module, {"params": {}})

