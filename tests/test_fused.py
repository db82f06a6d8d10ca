"""The fused implementation gives the reference's numbers: outputs, final states, gradients."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import BiRNN
from birnn_jax import linen
from birnn_jax.core import fused
import helpers
from conftest import random_variables_for

# Tiny arrays: compile time dominates, so compile with few optimisations (conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, D, H = 4, 5, 3, 4
LENGTHS = (0, 1, T, 3)  # Empty, one step, full, and in between.


def inputs(dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (B, T, D)).astype(dtype)
  return x, jnp.array(LENGTHS, jnp.int32)


def weighted_sum(tree) -> jax.Array:
  """A random (fixed) weighted sum of every leaf, so every output gets a gradient."""
  leaves = jax.tree.leaves(tree)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return sum(jnp.sum(leaf.astype(jnp.float32) * jax.random.normal(k, leaf.shape))
             for k, leaf in zip(keys, leaves))


def forward_and_grads(module: nn.Module, params, x, lengths):
  """((outputs, final), (d params, d x)), from one jitted function."""
  def loss(params, x, lengths):
    outputs = module.apply({"params": params}, x, lengths)
    return weighted_sum(outputs), outputs
  (_, outputs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, x, lengths)
  return outputs, grads


class FusedTest(parameterized.TestCase):

  def assert_trees_close(self, actual, expected, atol=1e-5, rtol=1e-5):
    helpers.assert_trees_close(actual, expected, atol=atol, rtol=rtol)

  @parameterized.named_parameters(
      ("rnn_tanh", dict(cell="rnn")),
      ("rnn_relu_nobias", dict(cell="rnn", activation="relu", use_bias=False)),
      ("gru_2layers", dict(cell="gru", num_layers=2)),
      ("gru_nobias", dict(cell="gru", use_bias=False)),
      ("lstm_nobias_2layers", dict(cell="lstm", use_bias=False, num_layers=2)),
      ("lstm_proj", dict(cell="lstm", proj_size=3)),
  )
  def test_matches_reference(self, attrs):
    # Given a stack and the same parameters for both implementations,
    x, lengths = inputs()
    reference = BiRNN(hidden_size=H, impl="reference", **attrs)
    params = random_variables_for(reference, x, lengths, seed=1)["params"]
    # when both run forward and backward,
    expected = forward_and_grads(reference, params, x, lengths)
    actual = forward_and_grads(reference.clone(impl="fused"), params, x, lengths)
    # then outputs, final states and all gradients agree.
    self.assert_trees_close(actual, expected)

  @parameterized.named_parameters(
      ("cell_types_and_sizes", dict(cell="lstm", backward_cell="gru",
                                    backward_hidden_size=3)),
      ("flax_cell", dict(cell=nn.GRUCell(features=H))),
  )
  def test_asymmetric_directions_fall_back(self, attrs):
    x, lengths = inputs()
    reference = BiRNN(hidden_size=H, impl="reference", **attrs)
    forward_cell, backward_cell = map(linen.pure_cell, reference.make_cells())
    self.assertIsNone(fused.fusable_spec(forward_cell, backward_cell))
    self.assertIsNotNone(fused.unfusable_reason(forward_cell, backward_cell))
    params = random_variables_for(reference, x, lengths, seed=1)["params"]
    expected = forward_and_grads(reference, params, x, lengths)
    actual = forward_and_grads(reference.clone(impl="fused"), params, x, lengths)
    self.assert_trees_close(actual, expected)

  def test_a_fallback_is_logged_not_silent(self):
    x, lengths = inputs()
    module = BiRNN(cell="lstm", backward_cell="gru", hidden_size=H, impl="fused")
    params = random_variables_for(module, x, lengths, seed=1)
    fused.log_fallback.cache_clear()
    with self.assertLogs("birnn_jax", level="WARNING") as logs:
      module.apply(params, x, lengths)
    self.assertIn("impl='fused' runs two scans: the directions have different cell types",
                  logs.output[0])
    forward_only = BiRNN(cell="lstm", hidden_size=H, impl="fused", bidirectional=False)
    with self.assertLogs("birnn_jax", level="INFO") as logs:
      forward_only.apply(random_variables_for(forward_only, x, lengths, seed=1), x, lengths)
    self.assertIn("runs a one-direction layer as 'scan'", logs.output[0])

  def test_unroll_gives_same_numbers(self):
    x, lengths = inputs()
    module = BiRNN(cell="lstm", hidden_size=H, impl="fused")
    params = random_variables_for(module, x, lengths, seed=1)["params"]
    expected = forward_and_grads(module, params, x, lengths)
    actual = forward_and_grads(module.clone(unroll=3), params, x, lengths)  # T % 3 != 0.
    self.assert_trees_close(actual, expected, atol=1e-6, rtol=1e-6)

  @parameterized.parameters("gru", "lstm_proj")
  def test_remat_and_autodiff_give_same_numbers(self, cell):
    # Given one bidirectional layer's cells and parameters,
    x, lengths = inputs()
    module = BiRNN(cell=cell[:4], hidden_size=H, proj_size=2 if "proj" in cell else None)
    params = random_variables_for(module, x, lengths, seed=1)["params"]["layer_0"]
    forward_cell, backward_cell = map(linen.pure_cell, module.make_cells())
    carries = tuple(c.zero_carry(x[:, 0].shape) for c in (forward_cell, backward_cell))

    def run(**options):
      def loss(params, x):
        return weighted_sum(fused.fused_bidirectional(
            forward_cell, backward_cell, params["forward"], params["backward"], x,
            lengths, *carries, **options))
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    # when the backward pass saves activations, recomputes them, or is JAX's autodiff,
    expected = run()
    # then the numbers agree.
    self.assert_trees_close(run(remat=True), expected, atol=1e-6, rtol=1e-6)
    self.assert_trees_close(run(custom_vjp=False), expected)

  def test_bfloat16_close_to_float32(self):
    x, lengths = inputs()
    module = BiRNN(cell="lstm", hidden_size=H, impl="fused")
    params = random_variables_for(module, x, lengths, seed=1)["params"]
    expected = forward_and_grads(module, params, x, lengths)
    actual = forward_and_grads(module.clone(dtype=jnp.bfloat16), params,
                               x.astype(jnp.bfloat16), lengths)
    self.assertEqual(actual[0][0].dtype, jnp.bfloat16)
    self.assert_trees_close(actual, expected, atol=5e-2, rtol=5e-2)


def test_birnn_remat_attribute_gives_reference_gradients():
  """`BiRNN(remat=True)` reaches the fused implementation and changes no number."""
  x = jax.random.normal(jax.random.key(3), (3, 5, 4))
  lengths = jnp.array([5, 0, 2])
  ref = BiRNN(cell="lstm", hidden_size=3, impl="reference")
  variables = random_variables_for(ref, x, lengths)

  def grad(model):
    def loss(params):
      y, (h, c) = model.apply({"params": params}, x, lengths)
      return jnp.sum(y ** 2) + jnp.sum(h * c)
    return jax.jit(jax.grad(loss))(variables["params"])

  expected = grad(ref)
  got = grad(ref.clone(impl="fused", remat=True))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, expected)


def test_a_subclass_of_our_cells_is_never_fused():
  """A user's cell (here an LSTM with another step) has no fused gate maths: two scans."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from birnn_jax.core import cells  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True)
  class Peephole(cells.LSTMCell):
    def step(self, params, carry, xp):
      return super().step(params, carry, 2.0 * xp)

  cell = Peephole(features=H)
  assert fused.fusable_spec(cell, cell) is None
  assert "no gate maths for Peephole" in fused.unfusable_reason(cell, cell)
  x, lengths = inputs()
  params = {d: cell.init(jax.random.key(k), x.shape[-1]) for k, d in enumerate(("f", "b"))}
  carry = cell.zero_carry(x[:, 0].shape)
  y_f, y_b, _, _ = fused.fused_bidirectional(cell, cell, params["f"], params["b"], x, lengths,
                                             carry, carry)
  from birnn_jax.core import recurrence  # pylint: disable=g-import-not-at-top
  want, _ = recurrence.reference(cell, params["f"], x, lengths, carry)
  helpers.assert_trees_close(y_f, want, atol=1e-6, rtol=1e-6)


# The library's default ------------------------------------------------------------------------


def test_the_front_ends_default_to_fused():
  """A user who sets nothing gets the fastest implementation (benchmarks/), in both front
  ends; a one-direction layer defaults to 'scan', which is what 'fused' would run."""
  from birnn_jax import nnx as bnnx  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  assert BiRNN().impl == "fused"
  assert linen.Bidirectional(linen.GRUCell(2), linen.GRUCell(2)).impl == "fused"
  assert linen.Recurrent(linen.GRUCell(2)).impl == "scan"
  assert bnnx.BiRNN(3, 2, rngs=nnx.Rngs(0)).impl == "fused"
  cells = lambda: bnnx.GRUCell(3, 2, rngs=nnx.Rngs(0))
  assert bnnx.Bidirectional(cells(), cells()).impl == "fused"


@pytest.mark.parametrize("attrs", [dict(cell="lstm", num_layers=2), dict(cell="gru"),
                                   dict(cell="lstm", bidirectional=False)])
def test_a_default_model_computes_the_references_numbers(attrs):
  """Outputs, final states and gradients at padded lengths (0, 1, T, 3), as impl='reference'."""
  x, lengths = inputs()
  default = BiRNN(hidden_size=H, **attrs)
  params = random_variables_for(default, x, lengths, seed=1)["params"]
  helpers.assert_trees_close(
      forward_and_grads(default, params, x, lengths),
      forward_and_grads(default.clone(impl="reference"), params, x, lengths),
      atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attrs,reason", [
    (dict(cell="lstm", backward_cell="gru"), "the directions have different cell types"),
    (dict(cell=nn.GRUCell(features=H)), "the fused scan has no gate maths for FlaxCell"),
], ids=["mixed_cells", "flax_cell"])
def test_a_default_model_that_cannot_fuse_falls_back_and_says_so(attrs, reason, caplog):
  x, lengths = inputs()
  model = BiRNN(hidden_size=H, **attrs)   # impl left at its default
  params = random_variables_for(model, x, lengths, seed=1)["params"]
  fused.log_fallback.cache_clear()
  with caplog.at_level("INFO", logger="birnn_jax"):
    actual = forward_and_grads(model, params, x, lengths)
  assert any(f"impl='fused' runs two scans: {reason}" in r.getMessage()
             for r in caplog.records), caplog.text
  helpers.assert_trees_close(actual, forward_and_grads(model.clone(impl="reference"), params,
                                                       x, lengths), atol=1e-5, rtol=1e-5)


def test_forward_mode_autodiff_needs_scan():
  """As docs/library/implementations.md says: `jax.jvp` through the default 'fused' (a
  custom VJP) raises JAX's TypeError; with impl='scan' it gives the reference's tangents,
  and reverse mode over the default (forward over reverse: `jax.hessian`) runs."""
  x, lengths = inputs()
  default = BiRNN(cell="gru", hidden_size=H)
  params = random_variables_for(default, x, lengths, seed=1)["params"]
  tangent = jax.random.normal(jax.random.key(2), x.shape)

  def jvp(module):
    f = lambda x: module.apply({"params": params}, x, lengths)[0]
    return jax.jit(lambda x: jax.jvp(f, (x,), (tangent,)))(x)

  with pytest.raises(TypeError, match="forward-mode autodiff"):
    jvp(default)
  helpers.assert_trees_close(jvp(default.clone(impl="scan")),
                             jvp(default.clone(impl="reference")), atol=1e-5, rtol=1e-5)
  loss = lambda x: weighted_sum(default.apply({"params": params}, x[None], lengths[2:3]))
  assert jax.jit(jax.hessian(loss))(x[2]).shape == x.shape[1:] * 2


if __name__ == "__main__":
  absltest.main()
