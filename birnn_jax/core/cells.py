"""Recurrent cells as pure functions of parameter pytrees, with PyTorch's equations.

Notation: B = batch, T = time, D = input features, H = hidden size, G = gates
(1 simple, 3 GRU, 4 LSTM), P = LSTM projection size.

A cell here is a frozen dataclass of hyper-parameters only (hashable, so it can be a static
argument of `jit` or `custom_vjp`); its parameters are a plain dict passed to each function:

- `param_shapes(D)`: the parameters' names and shapes, in creation order;
- `init(key, D)`: fresh parameters, PyTorch's U(-1/sqrt(H), 1/sqrt(H));
- `project_inputs(params, x)`: the part that does not depend on the carry, so it can run for
  every time step at once, outside the scan, as one matmul;
- `step(params, carry, projected_x)`: the sequential part;
- `zero_carry(input_shape)`, `output(carry)`.

The Linen and NNX front ends (`birnn_jax.linen`, `birnn_jax.nnx`) only hold parameters and
call these. Weights are kept in PyTorch's gate order, transposed for `x @ W`:
`w_ih: [D, G*H]`, `w_hh: [H_out, G*H]`, `b_ih, b_hh: [G*H]` (and `w_hr: [H, P]` for a
projected LSTM), so porting to or from `torch.nn.RNN/GRU/LSTM` is a transpose.
Matmuls run in `dtype`; gates and carries are accumulated in float32.
"""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def dot(a: Array, w: Array, dtype: Dtype) -> Array:
  """`a @ w` computed in `dtype`, accumulated and returned in float32."""
  return jnp.matmul(a.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def uniform_init(scale: float):
  """PyTorch's RNN initialiser: U(-scale, scale) with scale = 1/sqrt(H)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


@dataclasses.dataclass(frozen=True)
class Cell:
  """What every cell shares; subclasses define `step` (and LSTM its carry).

  A cell holds hyper-parameters only; its parameters are a dict passed to each method.
  A new cell subclasses this one, sets `kind` and `num_gates` and writes `step` (see
  :doc:`/design`).

  Attributes:
    features: the hidden size H.
    use_bias: whether the cell has the biases `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls (gates and carries are float32).
    param_dtype: the dtype `init` gives the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax.core import cells
    >>> cell = cells.LSTMCell(features=4)
    >>> cell.param_shapes(3)
    {'w_ih': (3, 16), 'w_hh': (4, 16), 'b_ih': (16,), 'b_hh': (16,)}
    >>> params = cell.init(jax.random.key(0), 3)
    >>> x = jnp.ones((2, 3))                                     # [batch, features]
    >>> carry, y = cell.step(params, cell.zero_carry(x.shape), cell.project_inputs(params, x))
    >>> y.shape
    (2, 4)
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  kind: ClassVar[str] = ""
  num_gates: ClassVar[int] = 1

  def __post_init__(self):
    if not isinstance(self.features, int) or self.features <= 0:
      raise ValueError(f"cell hidden size must be a positive int, got {self.features!r}.")

  @property
  def output_size(self) -> int:
    return self.features

  def param_shapes(self, in_features: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the parameters for `in_features` inputs, in creation order."""
    gh = self.num_gates * self.features
    shapes = {"w_ih": (in_features, gh), "w_hh": (self.output_size, gh)}
    if self.use_bias:
      shapes.update(b_ih=(gh,), b_hh=(gh,))
    return shapes

  @property
  def initializer(self):
    return uniform_init(1.0 / self.features ** 0.5)

  def init(self, key: Array, in_features: int) -> dict[str, Array]:
    """Fresh parameters for `in_features` inputs, one key per parameter."""
    shapes = self.param_shapes(in_features)
    keys = jax.random.split(key, len(shapes))
    return {name: self.initializer(k, shape, self.param_dtype)
            for k, (name, shape) in zip(keys, shapes.items())}

  def project_inputs(self, params: dict, x: Array) -> Array:
    """x: [..., D] -> [..., G*H] float32: x W_ih + b_ih for all steps at once."""
    num_inputs = params["w_ih"].shape[0]
    if x.shape[-1] != num_inputs:
      raise ValueError(
          f"{type(self).__name__}: inputs have {x.shape[-1]} features (x.shape="
          f"{tuple(x.shape)}) but the cell's w_ih expects {num_inputs} "
          f"(w_ih.shape={tuple(params['w_ih'].shape)}).")
    xp = dot(x, params["w_ih"], self.dtype)
    if self.use_bias:
      xp = xp + params["b_ih"].astype(jnp.float32)
    return xp

  def recurrent_projection(self, params: dict, h: Array) -> Array:
    """h: [B, H_out] -> [B, G*H] float32: h W_hh + b_hh."""
    hp = dot(h, params["w_hh"], self.dtype)
    if self.use_bias:
      hp = hp + params["b_hh"].astype(jnp.float32)
    return hp

  def zero_carry(self, input_shape: tuple[int, ...]):
    """The float32 zero carry for inputs of shape [..., D]."""
    return jnp.zeros(tuple(input_shape[:-1]) + (self.output_size,), jnp.float32)

  def output(self, carry) -> Array:
    """The part of the carry that is the step's output."""
    return carry

  def step(self, params: dict, carry, xp: Array):
    """One recurrent step: (carry, xp [..., G*H] from `project_inputs`) -> (carry, y)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SimpleCell(Cell):
  """Elman cell: h' = act(x W_ih + b_ih + h W_hh + b_hh); act = tanh or relu."""
  activation: str = "tanh"
  kind: ClassVar[str] = "rnn"

  def __post_init__(self):
    super().__post_init__()
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"SimpleCell: unknown activation={self.activation!r}; "
                       f"expected one of {sorted(ACTIVATIONS)}.")

  def step(self, params, h, xp):
    h = ACTIVATIONS[self.activation](xp + self.recurrent_projection(params, h))
    return h, h


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
  """GRU with PyTorch/cuDNN "reset-after" gates (order r, z, n)."""
  kind: ClassVar[str] = "gru"
  num_gates: ClassVar[int] = 3

  def step(self, params, h, xp):
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(self.recurrent_projection(params, h), 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
  """LSTM with PyTorch's gates (order i, f, g, o); carry is (h, c).

  With `proj_size` the output is projected, h' = (σ(o) ⊙ tanh(c')) W_hr, as PyTorch's
  `proj_size` does; then h has proj_size features and c has `features`.
  """
  proj_size: int | None = None
  kind: ClassVar[str] = "lstm"
  num_gates: ClassVar[int] = 4

  def __post_init__(self):
    super().__post_init__()
    if self.proj_size and not 0 < self.proj_size < self.features:
      raise ValueError(f"proj_size={self.proj_size} must be in (0, hidden_size="
                       f"{self.features}), as in PyTorch.")

  @property
  def output_size(self) -> int:
    return self.proj_size or self.features

  def param_shapes(self, in_features: int) -> dict[str, tuple[int, ...]]:
    shapes = super().param_shapes(in_features)
    if self.proj_size:
      shapes["w_hr"] = (self.features, self.proj_size)
    return shapes

  def zero_carry(self, input_shape):
    batch = tuple(input_shape[:-1])
    return (jnp.zeros(batch + (self.output_size,), jnp.float32),
            jnp.zeros(batch + (self.features,), jnp.float32))

  def output(self, carry):
    return carry[0]

  def step(self, params, carry, xp):
    h, c = carry
    gates = xp + self.recurrent_projection(params, h)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if self.proj_size:
      h = dot(h, params["w_hr"], self.dtype)
    return (h, c), h


CELLS = {"rnn": SimpleCell, "gru": GRUCell, "lstm": LSTMCell}


def make_cell(name: str, features: int, *, activation: str = "tanh",
              proj_size: int | None = None, use_bias: bool = True,
              dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> Cell:
  """A pure cell by name.

  Args:
    name: 'rnn', 'gru' or 'lstm'.
    features: the hidden size H.
    activation: 'tanh' or 'relu' (for 'rnn').
    proj_size: the LSTM output projection P (0 or None: none; 'lstm' only).
    use_bias: whether the cell has the biases `b_ih` and `b_hh`.
    dtype: the compute dtype of the matmuls.
    param_dtype: the dtype of the parameters.

  Returns:
    A `SimpleCell`, `GRUCell` or `LSTMCell`.

  Raises:
    ValueError: naming the argument, for an unknown name or an impossible size.

  Example:
    >>> from birnn_jax.core import cells
    >>> cell = cells.make_cell("rnn", 8, activation="relu")
    >>> type(cell).__name__, cell.activation, cell.output_size
    ('SimpleCell', 'relu', 8)
  """
  if name not in CELLS:
    raise ValueError(f"unknown cell={name!r}; expected one of {sorted(CELLS)}.")
  kwargs = dict(features=features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)
  if name == "rnn":
    kwargs["activation"] = activation
  if name == "lstm":
    kwargs["proj_size"] = proj_size or None  # 0 or None: no projection (torch)
  elif proj_size:
    raise ValueError(f"proj_size is only defined for 'lstm', not cell={name!r}.")
  return CELLS[name](**kwargs)
