"""Recurrent cells with PyTorch's equations, split into input projection and step.

Notation: B = batch, T = time, D = input features, H = hidden size, G = gates
(1 simple, 3 GRU, 4 LSTM), P = LSTM projection size.

Every cell keeps its weights in PyTorch's gate order, transposed for `x @ W`:
`w_ih: [D, G*H]`, `w_hh: [H_out, G*H]`, `b_ih, b_hh: [G*H]` (and `w_hr: [H, P]` for a
projected LSTM). Porting to or from `torch.nn.RNN/GRU/LSTM` is therefore a transpose.

A cell is a Flax module usable anywhere a Flax cell is (`cell(carry, x) -> (carry, y)`),
but its maths lives in two pure methods that the recurrence calls directly:
- `project_inputs(params, x)`: the part that does not depend on the carry, so it can run
  for every time step at once, outside the scan, as one matmul;
- `step(params, carry, projected_x)`: the sequential part.
Matmuls run in `dtype`; gates and carries are accumulated in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def dot(a: Array, w: Array, dtype: Dtype) -> Array:
  """`a @ w` computed in `dtype`, accumulated and returned in float32."""
  return jnp.matmul(a.astype(dtype), w.astype(dtype),
                    preferred_element_type=jnp.float32)


def uniform_init(scale: float):
  """PyTorch's RNN initialiser: U(-scale, scale) with scale = 1/sqrt(H)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class RecurrentCell(nn.Module):
  """Shared machinery of the PyTorch-compatible cells; subclasses define the step."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  num_gates = 1

  @property
  def output_size(self) -> int:
    return self.features

  def _weights(self, num_inputs: int) -> dict:
    """Creates (or fetches) this cell's parameters for `num_inputs` input features."""
    gh = self.num_gates * self.features
    init = uniform_init(1.0 / self.features ** 0.5)
    params = {
        "w_ih": self.param("w_ih", init, (num_inputs, gh), self.param_dtype),
        "w_hh": self.param("w_hh", init, (self.output_size, gh), self.param_dtype),
    }
    if self.use_bias:
      params["b_ih"] = self.param("b_ih", init, (gh,), self.param_dtype)
      params["b_hh"] = self.param("b_hh", init, (gh,), self.param_dtype)
    return params

  @nn.compact
  def __call__(self, carry, x: Array):
    """One time step, Flax-cell style. x: [..., D] -> (carry, y: [..., H_out])."""
    params = self._weights(x.shape[-1])
    params.update(self._extra_params())
    carry, y = self.step(params, carry, self.project_inputs(params, x))
    return carry, y.astype(self.dtype)

  def _extra_params(self) -> dict:
    return {}

  @nn.nowrap
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

  @nn.nowrap
  def recurrent_projection(self, params: dict, h: Array) -> Array:
    """h: [B, H_out] -> [B, G*H] float32: h W_hh + b_hh."""
    hp = dot(h, params["w_hh"], self.dtype)
    if self.use_bias:
      hp = hp + params["b_hh"].astype(jnp.float32)
    return hp

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zero carry for inputs of shape [..., D] (the Flax cell signature)."""
    del rng
    return jnp.zeros(input_shape[:-1] + (self.output_size,), jnp.float32)

  @nn.nowrap
  def output(self, carry) -> Array:
    """The part of the carry that is the step's output."""
    return carry


class SimpleCell(RecurrentCell):
  """Elman cell: h' = act(x W_ih + b_ih + h W_hh + b_hh); act = tanh or relu."""
  activation: str = "tanh"

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"SimpleCell: unknown activation={self.activation!r}; "
                       f"expected one of {sorted(ACTIVATIONS)}.")
    super().__post_init__()

  @nn.nowrap
  def step(self, params, h, xp):
    h = ACTIVATIONS[self.activation](xp + self.recurrent_projection(params, h))
    return h, h


class GRUCell(RecurrentCell):
  """GRU with PyTorch/cuDNN "reset-after" gates (order r, z, n)."""
  num_gates = 3

  @nn.nowrap
  def step(self, params, h, xp):
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(self.recurrent_projection(params, h), 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


class LSTMCell(RecurrentCell):
  """LSTM with PyTorch's gates (order i, f, g, o); carry is (h, c).

  With `proj_size` the output is projected, h' = (σ(o) ⊙ tanh(c')) W_hr, as PyTorch's
  `proj_size` does; then h has proj_size features and c has `features`.
  """
  num_gates = 4
  proj_size: int | None = None

  @property
  def output_size(self) -> int:
    return self.proj_size or self.features

  def _extra_params(self) -> dict:
    if not self.proj_size:
      return {}
    init = uniform_init(1.0 / self.features ** 0.5)
    return {"w_hr": self.param("w_hr", init, (self.features, self.proj_size),
                               self.param_dtype)}

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    del rng
    batch = input_shape[:-1]
    return (jnp.zeros(batch + (self.output_size,), jnp.float32),
            jnp.zeros(batch + (self.features,), jnp.float32))

  @nn.nowrap
  def output(self, carry):
    return carry[0]

  @nn.nowrap
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
              dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32) -> RecurrentCell:
  """Builds a cell by name: 'rnn' (with activation 'tanh'|'relu'), 'gru' or 'lstm'."""
  if name not in CELLS:
    raise ValueError(f"unknown cell={name!r}; expected one of {sorted(CELLS)}.")
  if not isinstance(features, int) or features <= 0:
    raise ValueError(f"cell hidden size must be a positive int, got {features!r}.")
  kwargs = dict(features=features, use_bias=use_bias, dtype=dtype,
                param_dtype=param_dtype)
  if name == "rnn":
    kwargs["activation"] = activation
  if name == "lstm":
    if proj_size and not 0 < proj_size < features:  # 0 or None: no projection (torch)
      raise ValueError(f"proj_size={proj_size} must be in (0, hidden_size="
                       f"{features}), as in PyTorch.")
    kwargs["proj_size"] = proj_size or None
  elif proj_size:
    raise ValueError(f"proj_size is only defined for 'lstm', not cell={name!r}.")
  return CELLS[name](**kwargs)
