"""Flax NNX front end: `BiRNN`, `Bidirectional`, `Recurrent` and the cells as NNX modules.

The NNX modules only hold parameters (`nnx.Param`) and the dropout layers' RNG streams;
the maths is the pure core (`birnn_jax.core`) that the Linen modules call too: each cell's
parameters, input projection and step (`core.cells`), the recurrences and the fused scan
with its custom VJP, reached through `core.layers.apply_recurrent` / `apply_bidirectional`
and the stack `core.layers.stack_layers`. Neither front end wraps the other. So an NNX
model computes the Linen model's numbers, and its parameters have the Linen model's names
and shapes, `layer_{k}/{forward,backward}/{w_ih, w_hh, b_ih, b_hh, w_hr}`:

    model = birnn_jax.nnx.BiRNN(16, 32, num_layers=2, impl="fused", rngs=nnx.Rngs(0))
    outputs, final = model(x, lengths)   # x [B, T, 16], lengths [B] -> [B, T, 64], ...

Conversions: `from_linen`, `to_linen` and `from_torch`. The cells also follow NNX's cell
protocol (`initialize_carry`, `__call__(carry, x)`, `num_feature_axes`), so they run
inside flax's own `nnx.RNN` / `nnx.Bidirectional`.

Dropout between layers is `nnx.Dropout`: on after construction or `model.train()`, off
after `model.eval()`; its masks come from the `dropout` stream (else `default`) of the
`nnx.Rngs` given at construction, or from a call's `rngs=`.

This module is `birnn_jax.nnx`; it imports flax's as `from flax import nnx` (absolute), so
the two never shadow each other.
"""

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

  Attributes:
    core: the pure cell (`core.cells.SimpleCell | GRUCell | LSTMCell`) whose functions
      `init`, `project_inputs` and `step` do the maths; it holds no parameters.
    in_features: D.
    param_names: the names of this cell's `nnx.Param`s, those of the Linen cell:
      `w_ih [D, G*H]`, `w_hh [H_out, G*H]`, with `use_bias` `b_ih, b_hh [G*H]`, and for a
      projected LSTM `w_hr [H, P]`.
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
    """The zero carry for inputs of shape [..., D] (float32; LSTM: (h, c)).

    With `carry_init` (an initializer `(key, shape, dtype)`), each leaf is drawn from it
    with keys of `rngs` (an `nnx.Rngs`, whose `carry` stream is used, or an RngStream).
    """
    carry = self.core.zero_carry(tuple(input_shape))
    if carry_init is None:
      return carry
    if rngs is None:
      raise ValueError("initialize_carry: carry_init needs rngs to draw its keys from.")
    stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
    return jax.tree.map(lambda c: carry_init(stream(), c.shape, c.dtype), carry)

  def __call__(self, carry, x: Array):
    """One step: x [..., D] -> (carry, y [..., H_out] in the cell's compute dtype)."""
    params = self.param_dict()
    carry, y = self.core.step(params, carry, self.core.project_inputs(params, x))
    return carry, y.astype(self.core.dtype)


class SimpleCell(Cell):
  """Elman cell, h' = act(x W_ih + b_ih + h W_hh + b_hh) with act 'tanh' | 'relu'."""

  def __init__(self, in_features: int, hidden_size: int, *, activation: str = "tanh",
               use_bias: bool = True, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_features, cells_lib.make_cell(
        "rnn", hidden_size, activation=activation, use_bias=use_bias, dtype=dtype,
        param_dtype=param_dtype), rngs=rngs)


class GRUCell(Cell):
  """GRU with PyTorch/cuDNN "reset-after" gates (order r, z, n)."""

  def __init__(self, in_features: int, hidden_size: int, *, use_bias: bool = True,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(in_features, cells_lib.make_cell(
        "gru", hidden_size, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype),
                     rngs=rngs)


class LSTMCell(Cell):
  """LSTM with PyTorch's gates (i, f, g, o), carry (h, c), optional `proj_size`."""

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
  """Builds a cell by name, 'rnn' | 'gru' | 'lstm' (as `cells.make_cell`, which checks)."""
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
  """One direction over [B, T, D] -> (outputs [B, T, H_out], final carry).

  The cell is stored as `forward` (or `backward` when `reverse`), as in the Linen
  `Recurrent`, so parameter paths match.

  Attributes:
    reverse: run t = T-1..0, each sequence starting at its own last real step.
    impl: 'reference' | 'scan' (a fused impl runs as 'scan': it fuses two directions).
    unroll: scan unroll factor.
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
    """x [B, T, D], lengths [B] | None (all T) -> (outputs [B, T, H_out], final carry)."""
    lengths = recurrence.check_inputs(x, lengths, "Recurrent")
    bidi.resolve_impl(self.impl)
    cell = self.cell
    return bidi.apply_recurrent(cell.core, cell.param_dict(), x, lengths, carry,
                                reverse=self.reverse, impl=self.impl, unroll=self.unroll)


class Bidirectional(nnx.Module):
  """Both directions over [B, T, D] -> (merged outputs, (forward carry, backward carry)).

  The directions may differ in cell type and hidden size (with merge 'concat' or 'none').

  Attributes:
    forward, backward: the two cells.
    merge: 'concat' | 'sum' | 'mean' | 'mul' | 'none' (the pair).
    impl: any of `birnn_jax.IMPLS`.
    unroll: scan unroll factor.
    remat: with impl='fused', recompute gate activations in backprop (less memory).
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
    """x [B, T, D], lengths [B] | None -> (outputs [B, T, H_merged], (carry_f, carry_b))."""
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
    num_layers, bidirectional, merge, backward_cell, backward_hidden_size, activation,
      proj_size, use_bias, dropout, variational_dropout, residual, impl, unroll, remat,
      dtype, param_dtype: as in `linen.BiRNN` (the same attributes, the same meaning).
    rngs: `nnx.Rngs`; parameters come from its `params` stream, dropout masks from its
      `dropout` stream (each falls back to `default`).

  Submodules (the Linen parameter tree's names): `layer_{k}` (a `Bidirectional`, or a
  `Recurrent` when not bidirectional) and, with dropout, `dropout_{k}` for k >= 1.

  Call: `model(x [B, T, D], lengths [B] | None, initial_carry=None)` ->
  `(outputs [B, T, H_merged], final)`, zeros at padded steps, `final` in PyTorch's layout
  `[L * num_dirs, B, H]` (LSTM: `(h_n, c_n)`) when every carry has one shape, else a tuple
  of per-(layer, direction) carries. `deterministic=` and `rngs=` override the dropout
  layers' mode and stream for one call. The stack's own attributes (`impl`, `unroll`,
  `remat`, `merge`, `residual`) decide how it runs.
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
    """The equivalent (unbound) Linen `BiRNN`: it takes this model's parameters."""
    return linen.BiRNN(**{name: getattr(self, name) for name in ATTRIBUTES})

  def __call__(self, x: Array, lengths: Array | None = None, initial_carry=None, *,
               deterministic: bool | None = None, rngs=None):
    """x [B, T, D], lengths [B] | None -> (outputs [B, T, H_merged], final); see class."""
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
  """The NNX `BiRNN` holding a Linen `BiRNN`'s variables (`{'params': ...}`).

  `model(x, lengths)` then equals `module.apply(variables, x, lengths)`. `rngs` seeds the
  dropout streams (default `nnx.Rngs(0)`); like every NNX module the model starts in
  training mode (dropout on, if any): call `model.eval()` for `module.apply`'s default.
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
  """`(module, variables)`: the Linen `BiRNN` and its variables computing what `model` does.

  The variables are `{'params': ...}` with the same arrays (dropout streams are NNX-only).
  """
  if not isinstance(model, BiRNN):
    raise TypeError(f"to_linen expects a birnn_jax.nnx.BiRNN, got {type(model).__name__}.")
  return model.linen_module(), {"params": nnx.state(model, nnx.Param).to_pure_dict()}


def from_torch(rnn, *, rngs: nnx.Rngs | None = None, **overrides) -> BiRNN:
  """The NNX `BiRNN` computing what a `torch.nn.RNN/GRU/LSTM` computes.

  As `birnn_jax.from_torch` (whose `(module, variables)` it converts): `model(x, lengths)`
  with batch-major x equals torch's output on the packed sequence (zeros at padding) and
  its `h_n` (LSTM: `(h_n, c_n)`). `overrides` set attributes (e.g. `impl='fused'`). The
  model's mode follows `rnn.training` (it matters only when `rnn.dropout` > 0).
  """
  model = from_linen(*torch_interop.from_torch(rnn, **overrides), rngs=rngs)
  if not rnn.training:
    model.eval()
  return model
