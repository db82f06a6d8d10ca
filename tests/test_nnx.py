"""The NNX front end (`birnn_jax.nnx`): the Linen module's numbers, NNX's ergonomics.

NNX vs Linen (outputs, final states, gradients) for every cell and implementation; dropout
in train/eval mode; split/merge, orbax and nnx.vmap; from_torch; our cells inside flax's
nnx.RNN; the README's example, an nnx.jit + nnx.Optimizer training step.
"""

import os
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import birnn_jax
from birnn_jax import nnx as bnnx
from helpers import assert_trees_close

pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H, P = 4, 5, 3, 4, 2
LENGTHS = np.array([T, 1, 0, 3], np.int32)  # includes 0, 1 and T
TOL = dict(rtol=1e-6, atol=1e-6)

CELLS = {
    "rnn_tanh": dict(cell="rnn"),
    "rnn_relu": dict(cell="rnn", activation="relu"),
    "gru": dict(cell="gru"),
    "lstm": dict(cell="lstm"),
    "lstm_proj": dict(cell="lstm", proj_size=P),
}
# Together with the cell/impl offset below, every implementation meets every configuration.
CONFIGS = [
    dict(num_layers=1, bidirectional=True),
    dict(num_layers=2, bidirectional=False),
    dict(num_layers=3, bidirectional=True, residual=True),
    dict(num_layers=2, bidirectional=True, merge="sum", use_bias=False),
    dict(num_layers=1, bidirectional=True, merge="none"),
]


def _cases():
  for i, cell in enumerate(CELLS):
    for j, impl in enumerate(birnn_jax.IMPLS):
      config = CONFIGS[(i + j) % len(CONFIGS)]
      name = "-".join(f"{k}={v}" for k, v in config.items())
      # The unrolled reference loop is slow to compile through deep bidirectional stacks;
      # it meets the one- and two-chain configurations by default.
      slow = impl == "reference" and config["num_layers"] * (1 + config["bidirectional"]) > 2
      yield pytest.param(cell, impl, config, id=f"{cell}-{impl}-{name}",
                         marks=[pytest.mark.slow] if slow else [])


def inputs(seed=0, shape=(B, T, D)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def assert_states_equal(a, b):
  """Exact equality of two NNX states (RNG keys compared through their key data)."""
  def data(v):
    return jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
  a, b = nnx.to_pure_dict(a), nnx.to_pure_dict(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(data(x), data(y))


def weighted_sum(y, final):
  """A loss that reaches every output and every final state, with distinct weights."""
  total = 0.0
  for leaf in jax.tree.leaves((y, final)):
    leaf = leaf.astype(jnp.float32)
    total = total + jnp.sum(leaf * jnp.cos(jnp.arange(leaf.size).reshape(leaf.shape)))
  return total


def linen_and_nnx(module, variables, model, x, lengths, initial_carry=None):
  """Both (loss, (y, final)), (d params, dx) from one compiled program."""
  def loss_linen(params, x):
    y, final = module.apply({"params": params}, x, lengths, initial_carry)
    return weighted_sum(y, final), (y, final)

  def loss_nnx(model, x):
    y, final = model(x, lengths, initial_carry)
    return weighted_sum(y, final), (y, final)

  @nnx.jit
  def both(model, params, x):
    ours = nnx.value_and_grad(loss_nnx, argnums=(0, 1), has_aux=True)(model, x)
    theirs = jax.value_and_grad(loss_linen, argnums=(0, 1), has_aux=True)(params, x)
    return ours, theirs

  (ours, (d_model, dx)), theirs = both(model, variables["params"], x)
  return (ours, (nnx.to_pure_dict(d_model), dx)), theirs


# ------------------------------------------------------------------- NNX == Linen


@pytest.mark.parametrize("cell,impl,config", list(_cases()))
def test_outputs_final_states_and_gradients_equal_linen(cell, impl, config, random_variables):
  module = birnn_jax.BiRNN(hidden_size=H, impl=impl, **CELLS[cell], **config)
  x = inputs()
  variables = random_variables(module, x, LENGTHS)
  model = bnnx.from_linen(module, variables)
  ours, theirs = linen_and_nnx(module, variables, model, x, LENGTHS)
  assert_trees_close(ours, theirs, **TOL)
  (_, (y, _)), (_, dx) = ours
  assert not np.any(np.asarray(dx)[LENGTHS == 0])
  for y in jax.tree.leaves(y):  # merge='none' returns the pair
    assert not np.any(np.asarray(y)[LENGTHS == 0]) and not np.any(np.asarray(y)[1, 1:])


def test_a_default_model_computes_the_linen_references_numbers():
  """impl left at its default in NNX ('fused', Linen's default too) against the Linen
  reference loop on the same parameters: outputs, final states and gradients, at padded
  lengths (T, 1, 0, 3)."""
  model = bnnx.BiRNN(D, H, cell="lstm", num_layers=2, rngs=nnx.Rngs(0))
  assert model.impl == birnn_jax.BiRNN().impl == "fused"
  module, variables = bnnx.to_linen(model)
  ours, reference = linen_and_nnx(module.clone(impl="reference"), variables, model, inputs(),
                                  LENGTHS)
  assert_trees_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_asymmetric_directions_with_initial_carries_equal_linen(random_variables):
  """Forward GRU H=3, backward LSTM H=5: carries are a tuple in and out. (Such cells do
  not fuse: 'fused' runs them as two scans, the code path of 'scan'.)"""
  kwargs = dict(cell="gru", hidden_size=3, backward_cell="lstm", backward_hidden_size=5,
                impl="fused")
  module = birnn_jax.BiRNN(**kwargs)
  rng = np.random.default_rng(1)
  carries = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), (
      rng.normal(size=(B, 3)), (rng.normal(size=(B, 5)), rng.normal(size=(B, 5)))))
  x = inputs(2)
  variables = random_variables(module, x, LENGTHS, carries)
  model = bnnx.from_linen(module, variables)
  assert isinstance(model.layer_0.forward, bnnx.GRUCell)
  assert isinstance(model.layer_0.backward, bnnx.LSTMCell)
  assert_trees_close(*linen_and_nnx(module, variables, model, x, LENGTHS, carries), **TOL)
  deeper = nnx.eval_shape(lambda: bnnx.BiRNN(D, num_layers=2, rngs=nnx.Rngs(0), **kwargs))
  assert deeper.layer_1.backward.w_ih.shape == (8, 20)


def test_bfloat16_and_torch_layout_initial_carry_equal_linen(random_variables):
  module = birnn_jax.BiRNN(cell="lstm", hidden_size=H, num_layers=2, impl="fused",
                           dtype=jnp.bfloat16)
  x = inputs(3)
  carry = tuple(jnp.asarray(np.random.default_rng(s).normal(size=(4, B, H)), jnp.float32)
                for s in (4, 5))  # (h_0, c_0) as [L * 2, B, H]
  variables = random_variables(module, x, LENGTHS, carry)
  model = bnnx.from_linen(module, variables)
  ours, theirs = linen_and_nnx(module, variables, model, x, LENGTHS, carry)
  (_, (y, final)), _ = ours
  assert y.dtype == jnp.bfloat16 and final[0].shape == (4, B, H)
  assert_trees_close(ours, theirs, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("cell", list(CELLS))
def test_parameters_have_the_linen_names_and_shapes(cell):
  kwargs = dict(hidden_size=H, num_layers=2, backward_hidden_size=H + 1, **CELLS[cell])
  if cell == "lstm_proj":
    kwargs["backward_hidden_size"] = H  # proj_size fixes the output size of both
  x = jnp.zeros((B, T, D))
  linen = jax.eval_shape(birnn_jax.BiRNN(**kwargs).init, jax.random.key(0), x)["params"]
  model = nnx.eval_shape(lambda: bnnx.BiRNN(D, rngs=nnx.Rngs(0), **kwargs))
  ours = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), linen)
  assert model.linen_module() == birnn_jax.BiRNN(**kwargs)


def test_to_linen_round_trips_the_parameters():
  model = bnnx.BiRNN(D, H, cell="gru", num_layers=2, rngs=nnx.Rngs(3))
  module, variables = bnnx.to_linen(model)
  assert module == birnn_jax.BiRNN(cell="gru", hidden_size=H, num_layers=2)
  back = bnnx.from_linen(module, variables)
  assert_states_equal(nnx.state(back, nnx.Param), nnx.state(model, nnx.Param))


def test_clear_errors():
  with pytest.raises(TypeError, match="'rnn', 'gru' or 'lstm'"):
    bnnx.BiRNN(D, H, cell=birnn_jax.LSTMCell(H), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_layers"):
    bnnx.BiRNN(D, H, num_layers=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="merge='sum' needs equal hidden sizes"):
    bnnx.BiRNN(D, H, merge="sum", backward_hidden_size=H + 1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown impl"):
    bnnx.BiRNN(D, H, impl="cudnn", rngs=nnx.Rngs(0))
  module, variables = bnnx.to_linen(bnnx.BiRNN(D, H, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="do not fit"):
    bnnx.from_linen(module.clone(hidden_size=H + 1), variables)
  with pytest.raises(TypeError, match="birnn_jax.nnx cells"):
    bnnx.Recurrent(nnx.GRUCell(D, H, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="rank 3"):
    bnnx.BiRNN(D, H, rngs=nnx.Rngs(0))(jnp.zeros((T, D)))


# --------------------------------------------------------------------------- dropout


def _dropout_model(seed, variational=False):
  return bnnx.BiRNN(D, H, cell="gru", num_layers=3, dropout=0.5, impl="fused",
                    variational_dropout=variational,
                    rngs=nnx.Rngs(params=0, dropout=seed))


@nnx.jit
def _forward(model, x):
  return model(x, LENGTHS)[0]


@nnx.jit
def _apply(model, x, lengths):
  return model(x, lengths)


def test_dropout_is_deterministic_per_seed_in_train_mode_and_off_in_eval_mode():
  x = inputs(4)
  a, b, c = _dropout_model(1), _dropout_model(1), _dropout_model(2)
  assert a.dropout_1.deterministic is False  # NNX modules start in train mode
  assert sorted(k for k in vars(a) if k.startswith("dropout_")) == ["dropout_1", "dropout_2"]
  first_a, first_b, first_c = (_forward(m, x) for m in (a, b, c))
  np.testing.assert_array_equal(first_a, first_b)  # same nnx.Rngs seed, same masks
  assert not np.allclose(first_a, first_c)  # another seed, other masks (same params)
  second_a, second_b = _forward(a, x), _forward(b, x)
  assert not np.allclose(first_a, second_a)  # the stream advances with each call
  np.testing.assert_array_equal(second_a, second_b)

  a.eval()
  assert a.dropout_1.deterministic is True
  module, variables = bnnx.to_linen(a)
  expected = jax.jit(module.apply)(variables, x, LENGTHS)[0]  # Linen's default: deterministic
  np.testing.assert_allclose(_forward(a, x), expected, **TOL)
  assert not np.allclose(first_a, expected)
  a.train()
  assert not np.allclose(_forward(a, x), expected)
  # A call's own deterministic= wins over the mode.
  run_deterministic = nnx.jit(lambda m, x: m(x, LENGTHS, deterministic=True)[0])
  np.testing.assert_allclose(run_deterministic(a, x), expected, **TOL)


def test_variational_dropout_shares_the_mask_over_time():
  model = _dropout_model(1, variational=True)
  assert model.dropout_1.broadcast_dims == (1,)
  kept = np.asarray(model.dropout_1(jnp.ones((B, T, 2 * H)))) != 0
  assert np.all(kept == kept[:, :1]) and 0.2 < kept.mean() < 0.8
  assert _dropout_model(1).dropout_1.broadcast_dims == ()


# ---------------------------------------------------------------- NNX transformations


def test_split_merge_and_orbax_round_trip_exactly(tmp_path):
  model = _dropout_model(1)
  x = inputs(6)
  _forward(model, x)  # advance the dropout streams, so their state is not the initial one
  graphdef, state = nnx.split(model)
  # New Variables over the same arrays: nnx.merge adopts the Variables it is given, so
  # merging `state` itself would give a model that shares its RNG counters with `model`.
  merged = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
  assert nnx.graphdef(merged) == graphdef
  assert_states_equal(nnx.state(merged), nnx.state(model))
  np.testing.assert_array_equal(_forward(merged, x), _forward(model, x))
  assert_states_equal(nnx.state(merged), nnx.state(model))  # both streams advanced once

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", nnx.state(model))
  checkpointer.wait_until_finished()
  fresh = nnx.eval_shape(lambda: _dropout_model(7))  # other params and dropout seed
  restored = checkpointer.restore(tmp_path / "state", nnx.state(fresh))
  nnx.update(fresh, restored)
  assert_states_equal(nnx.state(fresh), nnx.state(model))
  np.testing.assert_array_equal(_forward(fresh, x), _forward(model, x))  # same masks too


def test_nnx_vmap_over_inputs_and_over_an_ensemble():
  x_NxBxTxD = jnp.asarray(inputs(7, (3, B, T, D)))
  lengths_NxB = jnp.asarray(np.stack([LENGTHS, LENGTHS[::-1], np.full(B, T, np.int32)]))
  model = bnnx.BiRNN(D, H, impl="fused", rngs=nnx.Rngs(0))
  run = nnx.jit(nnx.vmap(lambda m, x, lengths: m(x, lengths), in_axes=(None, 0, 0)))
  y, (h_n, c_n) = run(model, x_NxBxTxD, lengths_NxB)
  assert y.shape == (3, B, T, 2 * H) and h_n.shape == (3, 2, B, H)
  for n in range(3):
    expected = _apply(model, x_NxBxTxD[n], lengths_NxB[n])
    assert_trees_close((y[n], (h_n[n], c_n[n])), expected, **TOL)

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def ensemble(rngs):
    return bnnx.BiRNN(D, H, cell="gru", impl="fused", rngs=rngs)

  members = ensemble(nnx.Rngs(0))
  assert members.layer_0.forward.w_ih.shape == (3, D, 3 * H)
  y = nnx.jit(nnx.vmap(lambda m, x: m(x, LENGTHS)[0], in_axes=(0, 0)))(members, x_NxBxTxD)
  graphdef, state = nnx.split(members)
  for n in range(3):
    member = nnx.merge(graphdef, jax.tree.map(lambda a, n=n: a[n], state))
    np.testing.assert_allclose(y[n], _forward(member, x_NxBxTxD[n]), **TOL)
  assert not np.allclose(y[0], y[1])


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("kind,config,impl", [
    ("LSTM", dict(num_layers=2, bidirectional=True), "fused"),
    ("GRU", dict(num_layers=1, bidirectional=False, bias=False), "scan"),
    ("LSTM", dict(num_layers=1, bidirectional=True, proj_size=P), "scan"),
])
def test_from_torch_matches_torch_on_packed_sequences(kind, config, impl):
  torch = pytest.importorskip("torch")
  from torch.nn.utils import rnn as rnn_utils  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  rnn = getattr(torch.nn, kind)(D, H, batch_first=True, **config).double()
  lengths = np.array([T, 1, 3, 2], np.int32)
  x = inputs(8)
  packed = rnn_utils.pack_padded_sequence(torch.tensor(x, dtype=torch.float64),
                                          torch.as_tensor(lengths), batch_first=True,
                                          enforce_sorted=False)
  out, final = rnn(packed)
  out, _ = rnn_utils.pad_packed_sequence(out, batch_first=True, total_length=T)
  model = bnnx.from_torch(rnn, impl=impl)
  assert model.impl == impl
  y, ours = nnx.jit(lambda m, x: m(x, lengths))(model, x)
  np.testing.assert_allclose(y, out.detach().numpy(), atol=1e-5)
  final = final if isinstance(final, tuple) else (final,)
  ours = ours if isinstance(ours, tuple) else (ours,)
  assert_trees_close(ours, tuple(f.detach().numpy() for f in final), atol=1e-5)


def test_from_torch_follows_the_torch_module_mode():
  torch = pytest.importorskip("torch")
  rnn = torch.nn.GRU(D, H, num_layers=2, dropout=0.3)
  assert bnnx.from_torch(rnn).dropout_1.deterministic is False
  assert bnnx.from_torch(rnn.eval()).dropout_1.deterministic is True


def test_importing_the_nnx_front_end_does_not_import_torch():
  code = ("import sys, birnn_jax; assert 'flax.nnx' not in sys.modules; "
          "import birnn_jax.nnx; assert 'torch' not in sys.modules; "
          "assert birnn_jax.nnx is sys.modules['birnn_jax.nnx']")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})


# ------------------------------------------------------------- inside flax's nnx.RNN


@pytest.mark.parametrize("cell", ["gru", "lstm_proj"])
def test_our_cell_inside_nnx_rnn_matches_our_recurrent(cell):
  kwargs = dict(CELLS[cell])
  name = kwargs.pop("cell")
  rngs = nnx.Rngs(0)
  forward = bnnx.make_cell(name, D, H, **kwargs, rngs=rngs)
  backward = bnnx.make_cell(name, D, H, **kwargs, rngs=rngs)
  x = jnp.asarray(inputs(9))
  lengths = np.array([T, 1, 3, 2], np.int32)  # nnx.RNN's final carry needs lengths >= 1
  real = (np.arange(T)[None, :] < lengths[:, None])[..., None]

  @nnx.jit
  def run(forward, backward, x):
    flax_f = nnx.RNN(forward, return_carry=True)(x, seq_lengths=lengths)
    flax_b = nnx.RNN(backward, return_carry=True, reverse=True, keep_order=True)(
        x, seq_lengths=lengths)
    ours_f = bnnx.Recurrent(forward)(x, lengths)
    ours_b = bnnx.Recurrent(backward, reverse=True)(x, lengths)
    flax_bi = nnx.Bidirectional(nnx.RNN(forward), nnx.RNN(backward))(x)  # all T steps
    ours_bi = bnnx.Bidirectional(forward, backward, impl="fused")(x)[0]
    return flax_f, flax_b, ours_f, ours_b, flax_bi, ours_bi

  flax_f, flax_b, ours_f, ours_b, flax_bi, ours_bi = run(forward, backward, x)
  for (carry, y), (ours_y, ours_carry) in ((flax_f, ours_f), (flax_b, ours_b)):
    np.testing.assert_allclose(np.where(real, y, 0.0), ours_y, **TOL)  # flax: no masking
    assert_trees_close(carry, ours_carry, **TOL)
  np.testing.assert_allclose(flax_bi, ours_bi, **TOL)
  assert forward.num_feature_axes == 1
  carry = forward.initialize_carry((B, D), nnx.Rngs(1), nnx.initializers.ones)
  assert all(np.all(np.asarray(c) == 1) for c in jax.tree.leaves(carry))


# ---------------------------------------------------------------------------- README


def test_docs_nnx_training_step_runs_as_written_and_lowers_the_loss():
  """docs/library/modules.md's "A complete training step with NNX": nnx.jit +
  nnx.Optimizer(optax.adam) training a tagger with dropout (train mode, RNG streams inside
  jit), then eval-mode predictions."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs", "library", "modules.md"), encoding="utf-8") as f:
    page = f.read()
  section = page.split("## A complete training step with NNX", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "docs/library/modules.md (NNX training step)", "exec"), namespace)  # pylint: disable=exec-used
  losses = namespace["losses"]
  assert losses[-1] < 0.8 * losses[0], losses
  model = namespace["model"]
  assert model.encoder.dropout_1.deterministic is True  # after model.eval()
  assert namespace["predicted"].shape == (8, 20)
  assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
