"""NNX cells: `nnx.Param`s around the pure maths of `core.cells` (PyTorch's equations).

The cells follow NNX's cell protocol (`initialize_carry`, `__call__(carry, x)`,
`num_feature_axes`), so they also run inside flax's own `nnx.RNN` / `nnx.Bidirectional`.
"""

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from birnn_jax.core import cells as cells_lib

Array = jax.Array
Dtype = Any


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


def check_cell(cell, where: str) -> Cell:
  if not isinstance(cell, Cell):
    raise TypeError(f"{where} takes birnn_jax.nnx cells (SimpleCell, GRUCell, LSTMCell), "
                    f"got {type(cell).__name__}; for flax's own NNX cells use nnx.RNN.")
  return cell
