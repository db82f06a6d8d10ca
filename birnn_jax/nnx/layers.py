"""NNX layers: `Recurrent`, `Bidirectional` and the stacked `BiRNN`, over `core.layers`.

They hold their cells (`nnx.cells`) and the dropout layers; the recurrence, the merge and
the stacked-layer logic are the pure core's (`core.layers.apply_recurrent`,
`apply_bidirectional`, `stack_layers`), as for the Linen modules.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from birnn_jax import linen
from birnn_jax.core import cells as cells_lib
from birnn_jax.core import layers as bidi
from birnn_jax.core import recurrence
from birnn_jax.nnx import cells
from birnn_jax.nnx.cells import Cell, make_cell

Array = jax.Array
Dtype = Any

# The attributes shared with the Linen `linen.BiRNN` (all of its fields).
ATTRIBUTES = ("cell", "hidden_size", "num_layers", "bidirectional", "merge",
              "backward_cell", "backward_hidden_size", "activation", "proj_size",
              "use_bias", "dropout", "variational_dropout", "residual", "impl", "unroll",
              "remat", "dtype", "param_dtype")


class Recurrent(nnx.Module):
  """One direction over a padded batch, NNX-style.

  The cell is stored as `forward` (or `backward` when `reverse`), as in the Linen
  `Recurrent`, so parameter paths match.

  Args:
    cell: a `birnn_jax.nnx` cell (`SimpleCell`, `GRUCell`, `LSTMCell`).
    reverse: run t = T-1..0, each sequence starting at its own last real step.
    impl: 'reference' or 'scan' ('fused' runs as 'scan': it fuses two directions).
    unroll: the scan's unroll factor.

  Raises:
    TypeError: `cell` is not a `birnn_jax.nnx` cell.
    ValueError: an unknown `impl`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> layer = bnnx.Recurrent(bnnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)))
    >>> outputs, (h, c) = layer(jnp.ones((2, 5, 3)), jnp.array([5, 2]))
    >>> outputs.shape, h.shape
    ((2, 5, 4), (2, 4))
  """

  def __init__(self, cell: Cell, *, reverse: bool = False, impl: str = "scan",
               unroll: int = 1):
    bidi.resolve_impl(impl)
    self.reverse = reverse
    self.impl = impl
    self.unroll = unroll
    setattr(self, "backward" if reverse else "forward", cells.check_cell(cell, "Recurrent"))

  @property
  def cell(self) -> Cell:
    return getattr(self, "backward" if self.reverse else "forward")

  @property
  def output_size(self) -> int:
    return self.cell.output_size

  def __call__(self, x: Array, lengths: Array | None = None, carry=None):
    """Runs the chain.

    Args:
      x: float [batch, time, features].
      lengths: int [batch] in [0, time], or None (every sequence `time` long).
      carry: the initial carry, or None for zeros.

    Returns:
      `(outputs [batch, time, H_out], final carry)`, zeros at padded steps.
    """
    lengths = recurrence.check_inputs(x, lengths, "Recurrent")
    bidi.resolve_impl(self.impl)
    cell = self.cell
    return bidi.apply_recurrent(cell.core, cell.param_dict(), x, lengths, carry,
                                reverse=self.reverse, impl=self.impl, unroll=self.unroll)


class Bidirectional(nnx.Module):
  """One bidirectional layer, NNX-style: both chains, merged per step.

  The directions may differ in cell type and hidden size (with merge 'concat' or 'none').
  The cells are stored as `forward` and `backward`.

  Args:
    forward_cell: the forward chain's cell.
    backward_cell: the backward chain's cell.
    merge: 'concat', 'sum', 'mean', 'mul' or 'none' (the pair).
    impl: any of `birnn_jax.IMPLS`; the default 'fused' is the fastest (benchmarks/) and
      runs two scans, with a log line, where the cells cannot be fused; the same numbers.
    unroll: the scan's unroll factor.
    remat: with impl='fused', recompute gate activations in backprop (less memory).

  Raises:
    TypeError: a cell is not a `birnn_jax.nnx` cell.
    ValueError: an unknown `impl` or `merge`, or sizes the merge cannot combine.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> rngs = nnx.Rngs(0)
    >>> layer = bnnx.Bidirectional(bnnx.GRUCell(3, 4, rngs=rngs),
    ...                            bnnx.GRUCell(3, 4, rngs=rngs), merge="sum")
    >>> outputs, (h_f, h_b) = layer(jnp.ones((2, 5, 3)), jnp.array([5, 2]))
    >>> outputs.shape, layer.output_size
    ((2, 5, 4), 4)
  """

  def __init__(self, forward_cell: Cell, backward_cell: Cell, *, merge: str = "concat",
               impl: str = "fused", unroll: int = 1, remat: bool = False):
    self.forward = cells.check_cell(forward_cell, "Bidirectional")
    self.backward = cells.check_cell(backward_cell, "Bidirectional")
    bidi.resolve_impl(impl)
    bidi.merged_size(merge, forward_cell.output_size, backward_cell.output_size)
    self.merge = merge
    self.impl = impl
    self.unroll = unroll
    self.remat = remat

  @property
  def output_size(self) -> int:
    return bidi.merged_size(self.merge, self.forward.output_size, self.backward.output_size)

  def __call__(self, x: Array, lengths: Array | None = None, carries=None):
    """Runs both chains and merges them.

    Args:
      x: float [batch, time, features].
      lengths: int [batch] in [0, time], or None (every sequence `time` long).
      carries: None (zeros) or the pair (forward carry, backward carry).

    Returns:
      `(outputs [batch, time, H_merged], (forward carry, backward carry))`.
    """
    lengths = recurrence.check_inputs(x, lengths, "Bidirectional")
    bidi.resolve_impl(self.impl)
    return bidi.apply_bidirectional(
        self.forward.core, self.backward.core, self.forward.param_dict(),
        self.backward.param_dict(), x, lengths, carries, merge=self.merge, impl=self.impl,
        unroll=self.unroll, remat=self.remat)


# ------------------------------------------------------------------------------- stack


class BiRNN(nnx.Module):
  """A stack of (bi)directional recurrent layers: the Linen `linen.BiRNN`, NNX-style.

  Args:
    in_features: D, the input features of the first layer.
    hidden_size: H of the forward direction (and the backward one unless set).
    cell: 'rnn' | 'gru' | 'lstm'.
    rngs: `nnx.Rngs`; parameters come from its `params` stream, dropout masks from its
      `dropout` stream (each falls back to `default`).
    **attributes: `num_layers`, `bidirectional`, `merge`, `backward_cell`,
      `backward_hidden_size`, `activation`, `proj_size`, `use_bias`, `dropout`,
      `variational_dropout`, `residual`, `impl`, `unroll`, `remat`, `dtype`,
      `param_dtype`: keyword-only, as in the Linen `birnn_jax.BiRNN` (the same
      attributes, the same meaning, the same defaults).

  Submodules (the Linen parameter tree's names): `layer_{k}` (a `Bidirectional`, or a
  `Recurrent` when not bidirectional) and, with dropout, `dropout_{k}` for k >= 1.

  Call: `model(x [B, T, D], lengths [B] | None, initial_carry=None)` ->
  `(outputs [B, T, H_merged], final)`, zeros at padded steps, `final` in PyTorch's layout
  `[L * num_dirs, B, H]` (LSTM: `(h_n, c_n)`) when every carry has one shape, else a tuple
  of per-(layer, direction) carries. `deterministic=` and `rngs=` override the dropout
  layers' mode and stream for one call. The stack's own attributes (`impl`, `unroll`,
  `remat`, `merge`, `residual`) decide how it runs.

  Raises:
    TypeError: a cell that is not a name ('rnn', 'gru', 'lstm').
    ValueError: naming the attribute, for any impossible setting.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> model = bnnx.BiRNN(3, 4, cell="lstm", num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))
    >>> model.eval()                                       # dropout off
    >>> outputs, (h_n, c_n) = model(jnp.ones((2, 5, 3)), jnp.array([5, 2]))
    >>> outputs.shape, h_n.shape                           # [L * 2, batch, H]
    ((2, 5, 8), (4, 2, 4))
  """

  def __init__(self, in_features: int, hidden_size: int = 128, *, cell: str = "lstm",
               num_layers: int = 1, bidirectional: bool = True, merge: str = "concat",
               backward_cell: str | None = None, backward_hidden_size: int | None = None,
               activation: str = "tanh", proj_size: int | None = None,
               use_bias: bool = True, dropout: float = 0.0,
               variational_dropout: bool = False, residual: bool = False,
               impl: str = "fused", unroll: int = 1, remat: bool = False,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    for name, value in (("cell", cell), ("backward_cell", backward_cell)):
      if value is not None and not isinstance(value, str):
        raise TypeError(f"birnn_jax.nnx.BiRNN: {name} must be 'rnn', 'gru' or 'lstm', got "
                        f"{value!r}; for other NNX cells use nnx.RNN.")
    self.in_features = in_features
    self.cell = cell
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    self.bidirectional = bidirectional
    self.merge = merge
    self.backward_cell = backward_cell
    self.backward_hidden_size = backward_hidden_size
    self.activation = activation
    self.proj_size = proj_size
    self.use_bias = use_bias
    self.dropout = dropout
    self.variational_dropout = variational_dropout
    self.residual = residual
    self.impl = impl
    self.unroll = unroll
    self.remat = remat
    self.dtype = dtype
    self.param_dtype = param_dtype
    options = dict(activation=activation, proj_size=proj_size, use_bias=use_bias,
                   dtype=dtype, param_dtype=param_dtype)
    forward_size = cells_lib.make_cell(cell, hidden_size, **options).output_size
    backward_size = (cells_lib.make_cell(backward_cell or cell,
                                         backward_hidden_size or hidden_size,
                                         **options).output_size if bidirectional else None)
    bidi.check_stack(num_layers=num_layers, dropout=dropout, merge=merge, impl=impl,
                     forward_size=forward_size, backward_size=backward_size,
                     backward_hidden_size=backward_hidden_size)

    def build(name, size, num_inputs):
      return make_cell(name, num_inputs, size, activation=activation, proj_size=proj_size,
                       use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    num_inputs = in_features
    for layer in range(num_layers):
      if layer > 0 and dropout > 0:
        setattr(self, f"dropout_{layer}", nnx.Dropout(
            dropout, broadcast_dims=(1,) if variational_dropout else (), rngs=rngs))
      forward = build(cell, hidden_size, num_inputs)
      if bidirectional:
        backward = build(backward_cell or cell, backward_hidden_size or hidden_size,
                         num_inputs)
        module = Bidirectional(forward, backward, merge=merge, impl=impl, unroll=unroll,
                               remat=remat)
      else:
        module = Recurrent(forward, impl=impl, unroll=unroll)
      setattr(self, f"layer_{layer}", module)
      num_inputs = module.output_size

  def linen_module(self) -> linen.BiRNN:
    """The equivalent (unbound) Linen `birnn_jax.BiRNN`: it takes this model's parameters
    (see `to_linen`)."""
    return linen.BiRNN(**{name: getattr(self, name) for name in ATTRIBUTES})

  def __call__(self, x: Array, lengths: Array | None = None, initial_carry=None, *,
               deterministic: bool | None = None, rngs=None):
    """Runs the stack.

    Args:
      x: float [batch, time, features].
      lengths: int [batch] in [0, time], or None (every sequence `time` long).
      initial_carry: None (zeros), or every (layer, direction)'s carry in PyTorch's
        layout `[L * num_dirs, batch, H]` (LSTM: `(h_0, c_0)`) or a tuple of them.
      deterministic: overrides the dropout layers' mode for this call.
      rngs: overrides the dropout layers' RNG stream for this call.

    Returns:
      `(outputs [batch, time, H_merged], final)`, as the class docstring says.
    """
    lengths = recurrence.check_inputs(x, lengths, "BiRNN")
    bidi.resolve_impl(self.impl)

    def layer_fn(layer, y, carries):
      module = getattr(self, f"layer_{layer}")
      if self.bidirectional:
        return bidi.apply_bidirectional(
            module.forward.core, module.backward.core, module.forward.param_dict(),
            module.backward.param_dict(), y, lengths, carries, merge=self.merge,
            impl=self.impl, unroll=self.unroll, remat=self.remat)
      y, carry = bidi.apply_recurrent(module.forward.core, module.forward.param_dict(), y,
                                      lengths, None if carries is None else carries[0],
                                      impl=self.impl, unroll=self.unroll)
      return y, (carry,)

    def dropout(layer, y):
      return getattr(self, f"dropout_{layer}")(y, deterministic=deterministic, rngs=rngs)

    return bidi.stack_layers(
        layer_fn, x.astype(self.dtype), initial_carry, num_layers=self.num_layers,
        num_directions=2 if self.bidirectional else 1, residual=self.residual,
        dropout=dropout if self.dropout > 0 else None)
