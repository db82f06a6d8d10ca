"""Flax NNX front end: `BiRNN`, `Bidirectional`, `Recurrent` and the cells as NNX modules.

The NNX modules only hold parameters (`nnx.Param`) and the dropout layers' RNG streams;
the maths is the pure core (`birnn_jax.core`) that the Linen modules call too: each cell's
parameters, input projection and step (`core.cells`), the recurrences and the fused scan
with its custom VJP, reached through `core.layers.apply_recurrent` / `apply_bidirectional`
and the stack `core.layers.stack_layers`. Neither front end wraps the other. So an NNX
model computes the Linen model's numbers, and its parameters have the Linen model's names
and shapes, `layer_{k}/{forward,backward}/{w_ih, w_hh, b_ih, b_hh, w_hr}`.

Conversions: `from_linen`, `to_linen` and `from_torch`. The cells also follow NNX's cell
protocol (`initialize_carry`, `__call__(carry, x)`, `num_feature_axes`), so they run
inside flax's own `nnx.RNN` / `nnx.Bidirectional`.

Dropout between layers is `nnx.Dropout`: on after construction or `model.train()`, off
after `model.eval()`; its masks come from the `dropout` stream (else `default`) of the
`nnx.Rngs` given at construction, or from a call's `rngs=`.

This module is `birnn_jax.nnx`; it imports flax's as `from flax import nnx` (absolute), so
the two never shadow each other.
"""

__all__ = ["BiRNN", "Bidirectional", "Recurrent", "Cell", "SimpleCell", "GRUCell",
           "LSTMCell", "make_cell", "from_linen", "to_linen", "from_torch"]

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from birnn_jax import linen
from birnn_jax import torch_interop  # imports torch only when called
from birnn_jax.core import cells as cells_lib
from birnn_jax.core import layers as bidi
from birnn_jax.core import recurrence

Array = jax.Array
Dtype = Any

# The attributes shared with the Linen `linen.BiRNN` (all of its fields).
ATTRIBUTES = ("cell", "hidden_size", "num_layers", "bidirectional", "merge",
              "backward_cell", "backward_hidden_size", "activation", "proj_size",
              "use_bias", "dropout", "variational_dropout", "residual", "impl", "unroll",
              "remat", "dtype", "param_dtype")


# ------------------------------------------------------------------------------- cells


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(core: cells_lib.Cell, in_features: int, key: Array) -> dict:
  """The pure cell's `init` for D inputs. Jitted, so it compiles once per cell
  configuration: run eagerly, each random op would compile on its own for every new shape
  (seconds on a small CPU)."""
  return core.init(key, in_features)


class Cell(nnx.RNNCellBase):
  """A PyTorch-compatible cell: NNX parameters around the pure maths of `core.cells`.

  Use `SimpleCell`, `GRUCell`, `LSTMCell` or `make_cell`. One step is
  `cell(carry, x [..., D]) -> (carry, y [..., H_out])`, as for flax's NNX cells.

  Args:
    in_features: D.
    core: the pure cell (`birnn_jax.core.cells`) that does the maths.
    rngs: `nnx.Rngs`; the parameters come from its `params` stream.

  Raises:
    TypeError: `core` is not one of birnn_jax's pure cells.
    ValueError: `in_features` is not a positive int.

  Attributes:
    core: the pure cell (`core.cells.SimpleCell | GRUCell | LSTMCell`) whose functions
      `init`, `project_inputs` and `step` do the maths; it holds no parameters.
    in_features: D.
    param_names: the names of this cell's `nnx.Param`s, those of the Linen cell:
      `w_ih [D, G*H]`, `w_hh [H_out, G*H]`, with `use_bias` `b_ih, b_hh [G*H]`, and for a
      projected LSTM `w_hr [H, P]`.

  Example:
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> from birnn_jax.core import cells
    >>> cell = bnnx.Cell(3, cells.GRUCell(features=4), rngs=nnx.Rngs(0))
    >>> cell.param_names, cell.w_hh.shape
    (('b_hh', 'b_ih', 'w_hh', 'w_ih'), (4, 12))
  """

  def __init__(self, in_features: int, core: cells_lib.Cell, *, rngs: nnx.Rngs):
    if not isinstance(core, cells_lib.Cell):
      raise TypeError(f"Cell needs one of birnn_jax's cells as its core, got {core!r}.")
    if not isinstance(in_features, int) or in_features <= 0:
      raise ValueError(f"in_features must be a positive int, got {in_features!r}.")
    self.core = core
    self.in_features = in_features
    params = _init_params(core, in_features, rngs.params())
    self.param_names = tuple(sorted(params))
    for name in self.param_names:
      setattr(self, name, nnx.Param(params[name]))

  @property
  def hidden_size(self) -> int:
    return self.core.features

  @property
  def output_size(self) -> int:
    return self.core.output_size

  @property
  def num_feature_axes(self) -> int:
    return 1

  def param_dict(self) -> dict[str, Array]:
    """The parameters' current values as the plain dict the pure functions take."""
    return {name: getattr(self, name)[...] for name in self.param_names}

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """The initial carry for inputs of shape [..., D] (NNX's cell protocol).

    Args:
      input_shape: the shape of one step's input, [..., D].
      rngs: an `nnx.Rngs` (its `carry` stream is used) or an RngStream; needed only with
        `carry_init`.
      carry_init: None for zeros, or an initializer `(key, shape, dtype)` for each leaf.

    Returns:
      float32 [..., H_out] (LSTM: the pair h [..., H_out], c [..., H]).

    Raises:
      ValueError: `carry_init` without `rngs`.
    """
    carry = self.core.zero_carry(tuple(input_shape))
    if carry_init is None:
      return carry
    if rngs is None:
      raise ValueError("initialize_carry: carry_init needs rngs to draw its keys from.")
    stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
    return jax.tree.map(lambda c: carry_init(stream(), c.shape, c.dtype), carry)

  def __call__(self, carry, x: Array):
    """One step.

    Args:
      carry: the previous carry (`initialize_carry`).
      x: float [..., D], the step's input.

    Returns:
      `(carry, y)`: the new carry and y [..., H_out] in the cell's compute dtype.
    """
    params = self.param_dict()
    carry, y = self.core.step(params, carry, self.core.project_inputs(params, x))
    return carry, y.astype(self.core.dtype)


class SimpleCell(Cell):
  """Elman cell, `h' = act(x W_ih + b_ih + h W_hh + b_hh)` with act 'tanh' or 'relu'.

  Args:
    in_features: D.
    hidden_size: H.
    activation: 'tanh' or 'relu'.
    use_bias: whether the cell has `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls.
    param_dtype: the dtype of the parameters.
    rngs: `nnx.Rngs` for the parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> cell = bnnx.SimpleCell(3, 4, activation="relu", rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 3))                                    # [batch, features]
    >>> carry, y = cell(cell.initialize_carry(x.shape), x)
    >>> y.shape
    (2, 4)
  """

  def __init__(self, in_features: int, hidden_size: int, *, activation: str = "tanh",
               use_bias: bool = True, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_features, cells_lib.make_cell(
        "rnn", hidden_size, activation=activation, use_bias=use_bias, dtype=dtype,
        param_dtype=param_dtype), rngs=rngs)


class GRUCell(Cell):
  """GRU with PyTorch's and cuDNN's "reset-after" gates (order r, z, n).

  Args:
    in_features: D.
    hidden_size: H.
    use_bias: whether the cell has `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls.
    param_dtype: the dtype of the parameters.
    rngs: `nnx.Rngs` for the parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> rnn = nnx.RNN(bnnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))   # in flax's own layer
    >>> rnn(jnp.ones((2, 5, 3))).shape                        # [batch, time, features]
    (2, 5, 4)
  """

  def __init__(self, in_features: int, hidden_size: int, *, use_bias: bool = True,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(in_features, cells_lib.make_cell(
        "gru", hidden_size, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype),
                     rngs=rngs)


class LSTMCell(Cell):
  """LSTM with PyTorch's gates (i, f, g, o), carry (h, c), optional `proj_size`.

  Args:
    in_features: D.
    hidden_size: H.
    proj_size: None, or P < H: the output projection `w_hr [H, P]` (PyTorch's).
    use_bias: whether the cell has `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls.
    param_dtype: the dtype of the parameters.
    rngs: `nnx.Rngs` for the parameters.

  Example:
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> cell = bnnx.LSTMCell(3, 4, proj_size=2, rngs=nnx.Rngs(0))
    >>> h, c = cell.initialize_carry((2, 3))
    >>> h.shape, c.shape, cell.w_hr.shape
    ((2, 2), (2, 4), (4, 2))
  """

  def __init__(self, in_features: int, hidden_size: int, *, proj_size: int | None = None,
               use_bias: bool = True, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_features, cells_lib.make_cell(
        "lstm", hidden_size, proj_size=proj_size, use_bias=use_bias, dtype=dtype,
        param_dtype=param_dtype), rngs=rngs)


def make_cell(name: str, in_features: int, hidden_size: int, *, activation: str = "tanh",
              proj_size: int | None = None, use_bias: bool = True,
              dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
              rngs: nnx.Rngs) -> Cell:
  """Builds an NNX cell by name.

  Args:
    name: 'rnn', 'gru' or 'lstm'.
    in_features: D.
    hidden_size: H.
    activation: 'tanh' or 'relu' (for 'rnn').
    proj_size: the LSTM output projection (for 'lstm').
    use_bias: whether the cell has `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls.
    param_dtype: the dtype of the parameters.
    rngs: `nnx.Rngs` for the parameters.

  Returns:
    A `SimpleCell`, `GRUCell` or `LSTMCell`.

  Raises:
    ValueError: naming the argument, for an unknown name or an impossible size.

  Example:
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> type(bnnx.make_cell("gru", 3, 4, rngs=nnx.Rngs(0))).__name__
    'GRUCell'
  """
  core = cells_lib.make_cell(name, hidden_size, activation=activation, proj_size=proj_size,
                             use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)
  common = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if name == "rnn":
    return SimpleCell(in_features, hidden_size, activation=core.activation, **common)
  if name == "gru":
    return GRUCell(in_features, hidden_size, **common)
  return LSTMCell(in_features, hidden_size, proj_size=core.proj_size, **common)


def _check_cell(cell, where: str) -> Cell:
  if not isinstance(cell, Cell):
    raise TypeError(f"{where} takes birnn_jax.nnx cells (SimpleCell, GRUCell, LSTMCell), "
                    f"got {type(cell).__name__}; for flax's own NNX cells use nnx.RNN.")
  return cell


# ------------------------------------------------------------------------------ layers


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
    setattr(self, "backward" if reverse else "forward", _check_cell(cell, "Recurrent"))

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
    impl: any of `birnn_jax.IMPLS`.
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
               impl: str = "scan", unroll: int = 1, remat: bool = False):
    self.forward = _check_cell(forward_cell, "Bidirectional")
    self.backward = _check_cell(backward_cell, "Bidirectional")
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
               impl: str = "scan", unroll: int = 1, remat: bool = False,
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


# ------------------------------------------------------------------------- conversions


def _shapes(tree) -> dict:
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def from_linen(module: linen.BiRNN, variables, *, rngs: nnx.Rngs | None = None) -> BiRNN:
  """The NNX `BiRNN` holding a Linen `birnn_jax.BiRNN`'s variables.

  `model(x, lengths)` then equals `module.apply(variables, x, lengths)`. Like every NNX
  module the model starts in training mode (dropout on, if any): call `model.eval()` for
  `module.apply`'s default.

  Args:
    module: a Linen `birnn_jax.BiRNN`.
    variables: its variables, `{'params': ...}` (or the params alone).
    rngs: seeds the dropout streams (default `nnx.Rngs(0)`).

  Returns:
    The `birnn_jax.nnx.BiRNN`.

  Raises:
    TypeError: `module` is not a `birnn_jax.BiRNN`.
    ValueError: the variables do not fit the module.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> from birnn_jax import nnx as bnnx
    >>> module = birnn_jax.BiRNN(cell="gru", hidden_size=4)
    >>> x = jnp.ones((2, 5, 3))
    >>> variables = module.init(jax.random.key(0), x)
    >>> model = bnnx.from_linen(module, variables)
    >>> bool(jnp.allclose(model(x)[0], module.apply(variables, x)[0]))
    True
  """
  if not isinstance(module, linen.BiRNN):
    raise TypeError(f"from_linen expects a birnn_jax.BiRNN, got {type(module).__name__}.")
  params = variables["params"] if "params" in variables else variables
  try:
    in_features = int(params["layer_0"]["forward"]["w_ih"].shape[0])
  except (KeyError, TypeError) as e:
    raise ValueError("from_linen: variables have no params['layer_0']['forward']['w_ih'];"
                     " are they a birnn_jax.BiRNN's?") from e
  attrs = {name: getattr(module, name) for name in ATTRIBUTES}
  model = BiRNN(in_features, rngs=rngs if rngs is not None else nnx.Rngs(0), **attrs)
  state = nnx.state(model, nnx.Param)
  expected, given = _shapes(state.to_pure_dict()), _shapes(params)
  if expected != given:
    raise ValueError(f"from_linen: the variables do not fit {module}: expected parameter "
                     f"shapes {expected}, got {given}.")
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
  nnx.update(model, state)
  return model


def to_linen(model: BiRNN):
  """The Linen `birnn_jax.BiRNN` and its variables computing what `model` does.

  Args:
    model: a `birnn_jax.nnx.BiRNN`.

  Returns:
    `(module, variables)`; the variables are `{'params': ...}` with the same arrays
    (dropout streams are NNX-only).

  Raises:
    TypeError: `model` is not a `birnn_jax.nnx.BiRNN`.

  Example:
    >>> from flax import nnx
    >>> from birnn_jax import nnx as bnnx
    >>> module, variables = bnnx.to_linen(bnnx.BiRNN(3, 4, rngs=nnx.Rngs(0)))
    >>> module.hidden_size, variables["params"]["layer_0"]["backward"]["w_ih"].shape
    (4, (3, 16))
  """
  if not isinstance(model, BiRNN):
    raise TypeError(f"to_linen expects a birnn_jax.nnx.BiRNN, got {type(model).__name__}.")
  return model.linen_module(), {"params": nnx.state(model, nnx.Param).to_pure_dict()}


def from_torch(rnn, *, rngs: nnx.Rngs | None = None, **overrides) -> BiRNN:
  """The NNX `BiRNN` computing what a `torch.nn.RNN`, `GRU` or `LSTM` computes.

  As `birnn_jax.from_torch` (whose `(module, variables)` it converts): `model(x, lengths)`
  with batch-major x equals torch's output on the packed sequence (zeros at padding) and
  its `h_n` (LSTM: `(h_n, c_n)`). The model's mode follows `rnn.training` (it matters
  only when `rnn.dropout` > 0).

  Args:
    rnn: the torch module.
    rngs: seeds the dropout streams (default `nnx.Rngs(0)`).
    **overrides: attributes to set, e.g. `impl='fused'`.

  Returns:
    The `birnn_jax.nnx.BiRNN`.

  Example:
    >>> import numpy as np, torch
    >>> from birnn_jax import nnx as bnnx
    >>> gru = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True)
    >>> model = bnnx.from_torch(gru, impl="fused")
    >>> x = np.ones((2, 5, 3), np.float32)
    >>> bool(np.allclose(model(x)[0], gru(torch.from_numpy(x))[0].detach(), atol=1e-5))
    True
  """
  model = from_linen(*torch_interop.from_torch(rnn, **overrides), rngs=rngs)
  if not rnn.training:
    model.eval()
  return model
