"""Conversions of the NNX `BiRNN`: from and to the Linen `BiRNN`, and from torch."""

from flax import nnx
import jax
import jax.numpy as jnp

from birnn_jax import linen
from birnn_jax import torch_interop  # imports torch only when called
from birnn_jax.nnx.layers import ATTRIBUTES, BiRNN


def _to_pure_dict(state) -> dict:
  """`nnx.to_pure_dict` (flax >= 0.11), else the State method older flax has."""
  convert = getattr(nnx, "to_pure_dict", None)
  return convert(state) if convert is not None else state.to_pure_dict()


def _replace_by_pure_dict(state, values) -> None:
  replace = getattr(nnx, "replace_by_pure_dict", None)
  if replace is not None:
    replace(state, values)
  else:
    state.replace_by_pure_dict(values)


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
  expected, given = _shapes(_to_pure_dict(state)), _shapes(params)
  if expected != given:
    raise ValueError(f"from_linen: the variables do not fit {module}: expected parameter "
                     f"shapes {expected}, got {given}.")
  _replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
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
  return model.linen_module(), {"params": _to_pure_dict(nnx.state(model, nnx.Param))}


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
