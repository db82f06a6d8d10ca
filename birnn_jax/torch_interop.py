"""PyTorch interop: `torch.nn.RNN/GRU/LSTM` <-> `BiRNN` with the same numbers.

torch is imported only inside these functions; the library never needs it.
PyTorch stores `weight_ih_l{k}[_reverse]: [G*H, D]`; we store `w_ih: [D, G*H]` in the same
gate order, so porting is a transpose (and `weight_hr` <-> `w_hr` for LSTM projections).
"""

import numpy as np

from birnn_jax.linen import BiRNN

_CELL_OF_TORCH = {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
_TORCH_OF_CELL = {v: k for k, v in _CELL_OF_TORCH.items()}
_NAMES = (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"),
          ("bias_hh", "b_hh"), ("weight_hr", "w_hr"))


def _suffix(layer: int, direction: str) -> str:
  return f"_l{layer}" + ("_reverse" if direction == "backward" else "")


def from_torch(rnn, **overrides):
  """A `BiRNN` and its variables computing what a PyTorch RNN computes.

  `module.apply(variables, x, lengths)` with batch-major x float [batch, time, features]
  equals torch's output on `pack_padded_sequence(x, lengths, batch_first=True,
  enforce_sorted=False)` unpacked with `pad_packed_sequence(..., total_length=time)`
  (zeros at padding), and its final state `h_n` (LSTM: `(h_n, c_n)`) in torch's layout
  `[num_layers * num_directions, batch, H]`, whatever `rnn.batch_first` is. torch is
  imported only by this call.

  Args:
    rnn: a `torch.nn.RNN`, `GRU` or `LSTM` (any `num_layers`, `bidirectional`, `bias`,
      `nonlinearity`, `dropout`, `proj_size`).
    **overrides: `BiRNN` attributes to set, e.g. `impl='fused'` or `dtype=jnp.bfloat16`.

  Returns:
    `(module, variables)`: the `BiRNN` and `{'params': ...}` holding torch's weights
    (transposed to `[in, out]`).

  Raises:
    TypeError: `rnn` is not a torch RNN, GRU or LSTM.

  Example:
    >>> import numpy as np, torch
    >>> import birnn_jax
    >>> lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    >>> module, variables = birnn_jax.from_torch(lstm, impl="fused")
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    >>> outputs, (h_n, c_n) = module.apply(variables, x)
    >>> expected, (h_t, _) = lstm(torch.from_numpy(x))
    >>> bool(np.allclose(outputs, expected.detach().numpy(), atol=1e-5))
    True
    >>> h_n.shape == tuple(h_t.shape)
    True
  """
  kind = type(rnn).__name__
  if kind not in _CELL_OF_TORCH:
    raise TypeError(f"from_torch expects torch.nn.RNN, GRU or LSTM, got {kind}.")
  attrs = dict(cell=_CELL_OF_TORCH[kind], hidden_size=rnn.hidden_size,
               num_layers=rnn.num_layers, bidirectional=rnn.bidirectional,
               use_bias=rnn.bias, dropout=float(rnn.dropout))
  if kind == "RNN":
    attrs["activation"] = rnn.nonlinearity
  if getattr(rnn, "proj_size", 0):
    attrs["proj_size"] = rnn.proj_size
  attrs.update(overrides)
  module = BiRNN(**attrs)
  state = {k: v.detach().cpu().float().numpy() for k, v in rnn.state_dict().items()}
  params = {}
  directions = ("forward", "backward") if rnn.bidirectional else ("forward",)
  for layer in range(rnn.num_layers):
    params[f"layer_{layer}"] = {}
    for direction in directions:
      cell = {}
      for torch_name, our_name in _NAMES:
        key = torch_name + _suffix(layer, direction)
        if key in state:
          cell[our_name] = np.ascontiguousarray(state[key].T)
      params[f"layer_{layer}"][direction] = cell
  return module, {"params": params}


def to_torch(module: BiRNN, variables):
  """A PyTorch RNN holding a `BiRNN`'s weights (the inverse of `from_torch`).

  Only stacks that torch can express: one cell type and hidden size in both directions,
  merge='concat', no residual connections. torch is imported only by this call.

  Args:
    module: a `birnn_jax.BiRNN` with cell 'rnn', 'gru' or 'lstm'.
    variables: its variables, `{'params': ...}`.

  Returns:
    A `torch.nn.RNN`, `GRU` or `LSTM` with `batch_first=True`.

  Raises:
    ValueError: the stack is one torch cannot express.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import birnn_jax
    >>> module = birnn_jax.BiRNN(cell="gru", hidden_size=4)
    >>> variables = module.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> gru = birnn_jax.to_torch(module, variables)
    >>> type(gru).__name__, gru.bidirectional, tuple(gru.weight_ih_l0.shape)
    ('GRU', True, (12, 3))
  """
  import torch  # pylint: disable=g-import-not-at-top

  if not isinstance(module.cell, str) or module.cell not in _TORCH_OF_CELL:
    raise ValueError(f"to_torch needs cell in {sorted(_TORCH_OF_CELL)}, got {module.cell!r}.")
  if module.bidirectional and (
      (module.backward_cell not in (None, module.cell))
      or module.backward_hidden_size not in (None, module.hidden_size)
      or module.merge != "concat"):
    raise ValueError("to_torch: torch needs the same cell and hidden size in both "
                     "directions and merge='concat'.")
  if module.residual:
    raise ValueError("to_torch: torch RNNs have no residual connections.")
  kwargs = dict(input_size=None, hidden_size=module.hidden_size,
                num_layers=module.num_layers, bias=module.use_bias, batch_first=True,
                dropout=module.dropout, bidirectional=module.bidirectional)
  if module.cell == "rnn":
    kwargs["nonlinearity"] = module.activation
  if module.cell == "lstm" and module.proj_size:
    kwargs["proj_size"] = module.proj_size
  params = variables["params"]
  kwargs["input_size"] = int(params["layer_0"]["forward"]["w_ih"].shape[0])
  rnn = getattr(torch.nn, _TORCH_OF_CELL[module.cell])(**kwargs)
  state = {}
  for layer in range(module.num_layers):
    for direction, cell in params[f"layer_{layer}"].items():
      for torch_name, our_name in _NAMES:
        if our_name in cell:
          value = np.asarray(cell[our_name], dtype=np.float32).T
          state[torch_name + _suffix(layer, direction)] = torch.from_numpy(value.copy())
  rnn.load_state_dict(state, strict=True)
  return rnn
