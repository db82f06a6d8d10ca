"""Flax Linen front end: cells, `Recurrent`, `Bidirectional` and the stacked `BiRNN`.

The modules only declare parameters and call the pure core (`birnn_jax.core`): a cell's
maths is its `core` (`core.cells`), a layer's is `core.layers.apply_recurrent` /
`apply_bidirectional`, the stack's is `core.layers.stack_layers`. The NNX front end
(`birnn_jax.nnx`) calls the same functions with parameters of the same names and shapes.
Every public name here is exported at the top: `birnn_jax.BiRNN` is `birnn_jax.linen.BiRNN`.

Parameters: `layer_{k}/{forward,backward}/{w_ih, w_hh, b_ih, b_hh, w_hr}`.
"""

import dataclasses
from typing import Any, Callable, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from birnn_jax.core import cells as core_cells
from birnn_jax.core import layers
from birnn_jax.core import recurrence

Array = jax.Array
Dtype = Any


# ------------------------------------------------------------------------------- cells


class RecurrentCell(nn.Module):
  """A PyTorch-compatible cell as a Flax Linen cell: `cell(carry, x) -> (carry, y)`.

  It declares the parameters that its `core` (the pure cell of `core.cells` with the same
  attributes) names, and calls the core's projection and step. Use `SimpleCell`,
  `GRUCell`, `LSTMCell` or `make_cell`, in `Recurrent`, `Bidirectional` or `BiRNN`.

  Attributes:
    features: the hidden size H.
    use_bias: whether the cell has the biases `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls (gates and carries stay float32).
    param_dtype: the dtype of the parameters.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  core_class: ClassVar[type[core_cells.Cell]] = core_cells.Cell

  def __post_init__(self):
    self.core  # pylint: disable=pointless-statement  (checks the attributes now)
    super().__post_init__()

  @property
  def core(self) -> core_cells.Cell:
    """The pure cell with this module's attributes."""
    return self.core_class(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(self.core_class)})

  @property
  def output_size(self) -> int:
    return self.core.output_size

  @property
  def num_feature_axes(self) -> int:
    """Flax's cell protocol: x has one feature axis (so `nn.RNN(cell)` runs it)."""
    return 1

  @nn.compact
  def __call__(self, carry, x: Array):
    """One time step.

    Args:
      carry: the previous carry (`initialize_carry`; LSTM: the pair (h, c)).
      x: float [batch, features], the step's input.

    Returns:
      `(carry, y)`: the new carry and the output y, float [batch, H_out] in `dtype`.
    """
    core = self.core
    params = {name: self.param(name, core.initializer, shape, self.param_dtype)
              for name, shape in core.param_shapes(x.shape[-1]).items()}
    carry, y = core.step(params, carry, core.project_inputs(params, x))
    return carry, y.astype(self.dtype)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """The float32 zero carry for inputs of shape [batch, features] (Flax's signature).

    Args:
      rng: unused (the carry is zeros); Flax's cell protocol passes one.
      input_shape: the shape of one step's input, [..., features].

    Returns:
      zeros [..., H_out] (LSTM: the pair h [..., H_out], c [..., H]).
    """
    del rng
    return self.core.zero_carry(input_shape)


class SimpleCell(RecurrentCell):
  """Elman cell: `h' = act(x W_ih + b_ih + h W_hh + b_hh)`, as `torch.nn.RNN`.

  Attributes:
    activation: 'tanh' or 'relu'.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> cell = birnn_jax.SimpleCell(features=4, activation="relu")
    >>> x = jnp.ones((2, 3))                                    # [batch, features]
    >>> carry = cell.initialize_carry(jax.random.key(0), x.shape)
    >>> variables = cell.init(jax.random.key(0), carry, x)
    >>> carry, y = cell.apply(variables, carry, x)
    >>> y.shape
    (2, 4)
  """
  activation: str = "tanh"
  core_class: ClassVar[type[core_cells.Cell]] = core_cells.SimpleCell


class GRUCell(RecurrentCell):
  """GRU with PyTorch's and cuDNN's "reset-after" gates, in the order r, z, n.

  `n = tanh(x W_in + b_in + r * (h W_hn + b_hn))`, `h' = (1 - z) * n + z * h`, as
  `torch.nn.GRU`; the parameters are `w_ih [D, 3H]`, `w_hh [H, 3H]`, `b_ih, b_hh [3H]`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> layer = birnn_jax.Recurrent(birnn_jax.GRUCell(features=4))
    >>> x = jnp.ones((2, 5, 3))                            # [batch, time, features]
    >>> variables = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables["params"]["forward"])
    {'b_hh': (12,), 'b_ih': (12,), 'w_hh': (4, 12), 'w_ih': (3, 12)}
  """
  core_class: ClassVar[type[core_cells.Cell]] = core_cells.GRUCell


class LSTMCell(RecurrentCell):
  """LSTM with PyTorch's gates (order i, f, g, o); the carry is the pair (h, c).

  Attributes:
    proj_size: None, or P < features: project the output, `h' = (o * tanh(c')) W_hr`, as
      PyTorch's `proj_size` (h then has P features, c keeps `features`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> cell = birnn_jax.LSTMCell(features=4, proj_size=2)
    >>> x = jnp.ones((2, 3))                                    # [batch, features]
    >>> (h, c) = cell.initialize_carry(jax.random.key(0), x.shape)
    >>> h.shape, c.shape
    ((2, 2), (2, 4))
  """
  proj_size: int | None = None
  core_class: ClassVar[type[core_cells.Cell]] = core_cells.LSTMCell


CELLS = {"rnn": SimpleCell, "gru": GRUCell, "lstm": LSTMCell}


def make_cell(name: str, features: int, **kwargs) -> RecurrentCell:
  """A Linen cell by name.

  Args:
    name: 'rnn', 'gru' or 'lstm' (the keys of `CELLS`).
    features: the hidden size H.
    **kwargs: `activation` ('rnn'), `proj_size` ('lstm'), `use_bias`, `dtype`,
      `param_dtype`, as `birnn_jax.core.cells.make_cell`.

  Returns:
    A `SimpleCell`, `GRUCell` or `LSTMCell`.

  Raises:
    ValueError: an unknown name, an impossible size, or an option the cell lacks.

  Example:
    >>> import birnn_jax
    >>> birnn_jax.make_cell("lstm", 8, proj_size=4)
    LSTMCell(
        # attributes
        features = 8
        use_bias = True
        dtype = float32
        param_dtype = float32
        proj_size = 4
    )
  """
  core = core_cells.make_cell(name, features, **kwargs)  # checks names and sizes
  return CELLS[name](**dataclasses.asdict(core))


@dataclasses.dataclass(frozen=True, eq=False)
class FlaxCell:
  """Any Flax Linen cell `(carry, x) -> (carry, y)` in the core's cell protocol: applied
  whole at each step, so its input projection stays inside the scan."""
  module: nn.Module

  def project_inputs(self, params, x):
    del params
    return x

  def step(self, params, carry, x):
    return self.module.apply({"params": params}, carry, x)

  def zero_carry(self, input_shape):
    return self.module.initialize_carry(jax.random.key(0), input_shape)

  @property
  def dtype(self):
    return getattr(self.module, "dtype", None)

  @property
  def output_size(self):
    return layers.output_size(self.module)


def pure_cell(cell: nn.Module):
  """The core cell that computes what the Linen `cell` does."""
  return cell.core if isinstance(cell, RecurrentCell) else FlaxCell(cell)


def cell_params(module: nn.Module, name: str, cell: nn.Module, x_BxTxD: Array):
  """Declares `name` in `module` holding the parameters `cell.init` makes for x."""
  def init(key):
    x_BxD = x_BxTxD[:, 0]
    carry = cell.initialize_carry(key, x_BxD.shape)
    return cell.init(key, carry, x_BxD)["params"]
  try:
    return module.param(name, init)
  except flax.errors.ScopeParamShapeError as e:  # Flax checks shapes before any cell runs.
    raise ValueError(
        f"{type(module).__name__}: the '{name}' parameters do not fit x with "
        f"{x_BxTxD.shape[-1]} features (x.shape={tuple(x_BxTxD.shape)}); were they made "
        f"for other input features or cell sizes? {e}") from e


# ------------------------------------------------------------------------------ layers


class Recurrent(nn.Module):
  """One direction of a recurrence over a padded batch.

  Parameters live under 'forward' (or 'backward' when reverse), as in `Bidirectional`, so a
  unidirectional stack has the same parameter names as the forward half of a bidirectional
  one. Call: `(x [batch, time, features], lengths [batch] | None, carry=None) ->
  (outputs [batch, time, H_out], final carry)`, zeros at padded steps; see
  :doc:`/library/lengths` for what the final carry is.

  Attributes:
    cell: a cell module (`SimpleCell`, `GRUCell`, `LSTMCell`, or any Flax cell).
    reverse: run t = T-1..0, each sequence starting at its own last real step.
    impl: one of `birnn_jax.IMPLS` ('fused' runs a single direction as 'scan').
    unroll: the scan's unroll factor.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> layer = birnn_jax.Recurrent(birnn_jax.LSTMCell(4), reverse=True)
    >>> x, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
    >>> variables = layer.init(jax.random.key(0), x, lengths)
    >>> outputs, (h, c) = layer.apply(variables, x, lengths)
    >>> outputs.shape, h.shape
    ((2, 5, 4), (2, 4))
    >>> bool((outputs[1, 2:] == 0).all())                  # padding stays zero
    True
  """
  cell: nn.Module
  reverse: bool = False
  impl: str = "scan"
  unroll: int = 1

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, carry=None):
    lengths = recurrence.check_inputs(x, lengths, type(self).__name__)
    params = cell_params(self, "backward" if self.reverse else "forward", self.cell, x)
    return layers.apply_recurrent(pure_cell(self.cell), params, x, lengths, carry,
                                  reverse=self.reverse, impl=self.impl, unroll=self.unroll)


class Bidirectional(nn.Module):
  """One bidirectional layer: a forward and a backward chain, merged per step.

  Call: `(x [batch, time, features], lengths [batch] | None, carries=None) ->
  (outputs [batch, time, H_merged], (forward carry, backward carry))`, zeros at padded
  steps. The directions may differ in cell type and hidden size (with merge 'concat' or
  'none').

  Attributes:
    forward_cell: the cell of the left-to-right chain.
    backward_cell: the cell of the right-to-left chain.
    merge: one of `birnn_jax.MERGES` or a function `(y_f, y_b) -> y`, as flax's
      `nn.Bidirectional(merge_fn=...)`.
    impl: one of `birnn_jax.IMPLS`; the default 'fused' (both directions in one scan, the
      fastest in benchmarks/) runs two scans, with a log line, where the cells cannot be
      fused (e.g. of different kinds); every implementation gives the same numbers.
    unroll: the scan's unroll factor.
    remat: with impl='fused', recompute the gate activations in backprop (less memory).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> layer = birnn_jax.Bidirectional(birnn_jax.GRUCell(4), birnn_jax.SimpleCell(2))
    >>> x = jnp.ones((2, 5, 3))
    >>> variables = layer.init(jax.random.key(0), x, jnp.array([5, 2]))
    >>> outputs, (h_f, h_b) = layer.apply(variables, x, jnp.array([5, 2]))
    >>> outputs.shape, h_f.shape, h_b.shape                # concat: 4 + 2 features
    ((2, 5, 6), (2, 4), (2, 2))
  """
  forward_cell: nn.Module
  backward_cell: nn.Module
  merge: str | Callable = "concat"
  impl: str = "fused"
  unroll: int = 1
  remat: bool = False  # fused: recompute gate activations in backprop (less memory)

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, carries=None):
    lengths = recurrence.check_inputs(x, lengths, type(self).__name__)
    layers.resolve_impl(self.impl)
    forward, backward = pure_cell(self.forward_cell), pure_cell(self.backward_cell)
    layers.merged_size(self.merge, forward.output_size, backward.output_size)
    params_f = cell_params(self, "forward", self.forward_cell, x)
    params_b = cell_params(self, "backward", self.backward_cell, x)
    return layers.apply_bidirectional(forward, backward, params_f, params_b, x, lengths,
                                      carries, merge=self.merge, impl=self.impl,
                                      unroll=self.unroll, remat=self.remat)


# ------------------------------------------------------------------------------- stack


class BiRNN(nn.Module):
  """A stack of (bi)directional recurrent layers: layer k reads layer k-1's merged outputs.

  The one recurrent encoder every experiment and `from_torch` use; with
  `bidirectional=False` it is a forward-only baseline.

  Call: `module.apply(variables, x, lengths=None, initial_carry=None,
  deterministic=True, rngs=None)` with x float [batch, time, features] and lengths int
  [batch] in [0, time] (None: every sequence is `time` long) returns `(outputs, final)`:
  outputs float [batch, time, H_merged], zeros at padded steps; final in PyTorch's layout
  `[num_layers * num_directions, batch, H]` (LSTM: the pair `(h_n, c_n)`) when every
  layer and direction has the same carry shape, else a tuple of per-(layer, direction)
  carries in that order. `initial_carry` takes the same layout. Dropout needs
  `deterministic=False` and a 'dropout' rng.

  Attributes:
    cell: 'rnn' | 'gru' | 'lstm' (or a Flax cell module, used for every layer).
    hidden_size: H of the forward direction (and the backward one unless set).
    num_layers: number of stacked layers.
    bidirectional: False gives a forward-only stack (same parameters' names, no 'backward').
    merge: how the two directions combine: 'concat' | 'sum' | 'mean' | 'mul' | 'none'
      ('none' returns the (forward, backward) pair and is only valid for one layer), or a
      function `(y_f, y_b) -> y`.
    backward_cell: the backward direction's cell name, if it differs.
    backward_hidden_size: the backward direction's H, if it differs.
    activation: 'tanh' | 'relu' for the 'rnn' cell.
    proj_size: LSTM output projection (PyTorch's proj_size); None for none.
    use_bias: biases b_ih and b_hh.
    dropout: rate between layers (not after the last), only when not deterministic.
    variational_dropout: the same dropout mask at every time step.
    residual: add each layer's input to its output from the second layer on.
    impl: one of `birnn_jax.IMPLS`; every implementation gives the same numbers. The
      default 'fused' is the fastest (benchmarks/); a forward-only stack runs it as
      'scan', and cells that cannot be fused run two scans, each said once in the log.
      Forward-mode autodiff (`jax.jvp`, `jax.jacfwd`) needs 'scan': fused's backward
      pass is a `jax.custom_vjp`.
    unroll: scan unroll factor.
    remat: with impl='fused', recompute gate activations in backprop instead of storing
      them, so memory for long sequences stays bounded.
    dtype: the compute dtype (carries stay float32).
    param_dtype: the parameters' dtype.

  Raises:
    ValueError: naming the attribute, for an impossible setting (at init or apply).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> model = birnn_jax.BiRNN(cell="lstm", hidden_size=4, num_layers=2)
    >>> x = jnp.ones((2, 5, 3))                            # [batch, time, features]
    >>> lengths = jnp.array([5, 2])
    >>> variables = model.init(jax.random.key(0), x, lengths)
    >>> outputs, (h_n, c_n) = model.apply(variables, x, lengths)
    >>> outputs.shape, h_n.shape                           # [L * 2, batch, H]
    ((2, 5, 8), (4, 2, 4))
    >>> bool((outputs[1, 2:] == 0).all())                  # zeros at padding
    True
  """
  cell: str | nn.Module = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = True
  merge: str | Callable = "concat"
  backward_cell: str | None = None
  backward_hidden_size: int | None = None
  activation: str = "tanh"
  proj_size: int | None = None
  use_bias: bool = True
  dropout: float = 0.0
  variational_dropout: bool = False
  residual: bool = False
  impl: str = "fused"
  unroll: int = 1
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.nowrap
  def make_cells(self) -> tuple[nn.Module, nn.Module | None]:
    """The (forward, backward) cell modules of every layer.

    Returns:
      The pair; backward is None when `bidirectional` is False.
    """
    def build(name, size):
      if isinstance(name, nn.Module):
        return name
      return make_cell(name, size, activation=self.activation, proj_size=self.proj_size,
                       use_bias=self.use_bias, dtype=self.dtype,
                       param_dtype=self.param_dtype)
    forward = build(self.cell, self.hidden_size)
    if not self.bidirectional:
      return forward, None
    backward = build(self.backward_cell or self.cell,
                     self.backward_hidden_size or self.hidden_size)
    return forward, backward

  @nn.nowrap
  def validate(self) -> None:
    """Checks the attributes without running anything.

    Raises:
      ValueError: naming the attribute, for any impossible setting.
    """
    forward, backward = self.make_cells()
    layers.check_stack(
        num_layers=self.num_layers, dropout=self.dropout, merge=self.merge, impl=self.impl,
        forward_size=layers.output_size(forward),
        backward_size=None if backward is None else layers.output_size(backward),
        backward_hidden_size=self.backward_hidden_size)

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, initial_carry=None,
               deterministic: bool = True):
    self.validate()
    lengths = recurrence.check_inputs(x, lengths, "BiRNN")
    forward, backward = self.make_cells()

    def layer_fn(layer, y, carries):
      if backward is None:
        carry = None if carries is None else carries[0]
        y, carry = Recurrent(forward, impl=self.impl, unroll=self.unroll,
                             name=f"layer_{layer}")(y, lengths, carry)
        return y, (carry,)
      return Bidirectional(forward, backward, merge=self.merge, impl=self.impl,
                           unroll=self.unroll, remat=self.remat,
                           name=f"layer_{layer}")(y, lengths, carries)

    def dropout(layer, y):
      return nn.Dropout(self.dropout, broadcast_dims=(1,) if self.variational_dropout else (),
                        name=f"dropout_{layer}")(y, deterministic=deterministic)

    return layers.stack_layers(
        layer_fn, x.astype(self.dtype), initial_carry, num_layers=self.num_layers,
        num_directions=1 if backward is None else 2, residual=self.residual,
        dropout=dropout if self.dropout > 0 else None)
