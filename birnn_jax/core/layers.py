"""Layers as pure functions: one direction, both directions merged, and the stack of layers::

    H→_t = cell_f(H→_{t-1}, X_t)        H←_t = cell_b(H←_{t+1}, X_t)
    H_t  = merge(H→_t, H←_t)            (concat by default: D2L eq. 10.4.2)

Layer k of a stack reads layer k-1's merged outputs. Everything here is a function of cells
(`core.cells`, or any object with their protocol) and their parameter dicts; the Linen and
NNX front ends only hold the parameters and call `apply_recurrent`, `apply_bidirectional` and
`stack_layers`, so the maths exists once.

The implementation is chosen here and only here (`Impl`, one `match`):

- 'reference': the plain per-step loop (`recurrence.reference`), for tests and reading;
- 'scan': `jax.lax.scan` per direction, `reverse=True` backwards (`recurrence.scan`);
- 'fused': both directions in one scan with a cuDNN-style custom VJP (`fused`). A request it
  cannot honour (one direction, or two cells it cannot fuse) runs 'scan', the same numbers,
  and says so in the log (`birnn_jax` logger), never silently.
"""

import enum
from typing import Callable

import jax
import jax.numpy as jnp

from birnn_jax.core import fused
from birnn_jax.core import recurrence

Array = jax.Array
Merge = str | Callable[[Array, Array], Array]

MERGES = ("concat", "sum", "mean", "mul", "none")


class Impl(str, enum.Enum):
  """How a layer's recurrence runs; every implementation gives the same numbers.

  The modules take the value as a string (`impl="fused"`); `birnn_jax.IMPLS` lists them.
  REFERENCE is the plain per-step loop (tests, reading), SCAN one `jax.lax.scan` per
  direction, FUSED both directions in one scan with a hand-written backward pass (see
  :doc:`/library/implementations`).

  Example:
    >>> import birnn_jax
    >>> birnn_jax.IMPLS
    ('reference', 'scan', 'fused')
    >>> birnn_jax.Impl("fused") is birnn_jax.Impl.FUSED
    True
  """
  REFERENCE = "reference"
  SCAN = "scan"
  FUSED = "fused"


IMPLS = tuple(impl.value for impl in Impl)


def resolve_impl(impl: str | Impl) -> Impl:
  """The `Impl` named by `impl` (the one place an implementation is chosen).

  Raises:
    ValueError: listing the choices, for any other value.

  Example:
    >>> from birnn_jax.core import layers
    >>> layers.resolve_impl("scan")
    <Impl.SCAN: 'scan'>
  """
  try:
    return Impl(impl)
  except ValueError:
    raise ValueError(f"unknown impl={impl!r}; expected one of {IMPLS}.") from None


# ------------------------------------------------------------------------------- merging


def merged_size(merge: Merge, forward_size: int, backward_size: int) -> int:
  """Output features of `merge`; raises when the merge cannot combine the two sizes.

  A callable merge `(y_f [B, T, H_f], y_b [B, T, H_b]) -> [B, T, F]` is traced on shapes
  only (`jax.eval_shape`) to learn F.
  """
  if callable(merge):
    spec = lambda size: jax.ShapeDtypeStruct((1, 1, size), jnp.float32)
    return int(jax.eval_shape(merge, spec(forward_size), spec(backward_size)).shape[-1])
  if merge not in MERGES:
    raise ValueError(f"unknown merge={merge!r}; expected one of {MERGES} or a function "
                     "(y_f, y_b) -> y.")
  if merge in ("sum", "mean", "mul") and forward_size != backward_size:
    raise ValueError(
        f"merge={merge!r} needs equal hidden sizes in both directions, got forward "
        f"{forward_size} and backward {backward_size}; use 'concat' or 'none'.")
  return forward_size + backward_size if merge == "concat" else forward_size


def merge_directions(merge: Merge, y_f: Array, y_b: Array):
  """Combines the two directions' outputs of one step or sequence.

  Args:
    merge: one of `birnn_jax.MERGES` ('concat', 'sum', 'mean', 'mul', 'none') or a
      function `(y_f, y_b) -> y`.
    y_f: float [batch, time, H_f], the forward chain's outputs.
    y_b: float [batch, time, H_b], the backward chain's outputs.

  Returns:
    float [batch, time, H_f + H_b] for 'concat', [batch, time, H] for 'sum', 'mean' and
    'mul' (which need H_f == H_b), the pair `(y_f, y_b)` for 'none'.

  Raises:
    ValueError: an unknown merge, or unequal sizes for 'sum', 'mean' or 'mul'.

  Example:
    >>> import jax.numpy as jnp
    >>> import birnn_jax
    >>> y_f, y_b = jnp.ones((2, 5, 4)), jnp.ones((2, 5, 3))
    >>> birnn_jax.merge_directions("concat", y_f, y_b).shape
    (2, 5, 7)
    >>> birnn_jax.merge_directions("mean", y_f, 3 * y_f)[0, 0, 0].item()
    2.0
  """
  if callable(merge):
    return merge(y_f, y_b)
  merged_size(merge, y_f.shape[-1], y_b.shape[-1])
  if merge == "concat":
    return jnp.concatenate([y_f, y_b], axis=-1)
  if merge == "sum":
    return y_f + y_b
  if merge == "mean":
    return (y_f + y_b) / 2
  if merge == "mul":
    return y_f * y_b
  return y_f, y_b


# ---------------------------------------------------------------------------- one layer


def output_size(cell) -> int | None:
  """Features of a cell's output, when the cell says (ours do; Flax cells have features)."""
  size = getattr(cell, "output_size", None)
  return size if size is not None else getattr(cell, "features", None)


def compute_dtype(cell, x: Array):
  """The cell's compute dtype; a cell with dtype None computes in x's dtype."""
  return getattr(cell, "dtype", None) or x.dtype


def initial_carry(cell, x_BxTxD: Array, carry=None):
  """The given carry, or the cell's zero carry for a batch of x."""
  return carry if carry is not None else cell.zero_carry(x_BxTxD[:, 0].shape)


def run_chain(impl: Impl, cell, params, x, lengths, carry, reverse: bool, unroll: int):
  """One direction with `impl` ('reference' or 'scan'): -> (outputs, final carry)."""
  if impl == Impl.REFERENCE:
    return recurrence.reference(cell, params, x, lengths, carry, reverse)
  return recurrence.scan(cell, params, x, lengths, carry, reverse, unroll=unroll)


def apply_recurrent(cell, params, x_BxTxD: Array, lengths_B: Array, carry=None, *,
                    reverse: bool = False, impl: str = "scan", unroll: int = 1):
  """One direction of a layer, the maths of both front ends' `Recurrent`.

  Args:
    cell: a pure cell (`core.cells`) or any object with its protocol.
    params: the cell's parameter dict.
    x_BxTxD: float [batch, time, features].
    lengths_B: int [batch], already checked (`recurrence.check_inputs`).
    carry: the initial carry; None starts from the cell's zero carry.
    reverse: run the backward chain (t = T-1..0, from each sequence's last real step).
    impl: one of `birnn_jax.IMPLS`; 'fused' runs as 'scan' here (it fuses two
      directions) and says so in the `birnn_jax` log.
    unroll: the scan's unroll factor.

  Returns:
    `(outputs [batch, time, H_out] in the cell's compute dtype, final carry)`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax.core import cells, layers
    >>> cell = cells.GRUCell(features=4)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> y, h = layers.apply_recurrent(cell, params, jnp.ones((2, 5, 3)), jnp.array([5, 2]))
    >>> y.shape, h.shape
    ((2, 5, 4), (2, 4))
  """
  impl = resolve_impl(impl)
  if impl == Impl.FUSED:
    fused.log_fallback("impl='fused' runs a one-direction layer as 'scan' (it fuses two "
                       "directions; the numbers are the same).", info=True)
    impl = Impl.SCAN
  y, carry = run_chain(impl, cell, params, x_BxTxD, lengths_B,
                       initial_carry(cell, x_BxTxD, carry), reverse, unroll)
  return y.astype(compute_dtype(cell, x_BxTxD)), carry


def apply_bidirectional(forward_cell, backward_cell, params_f, params_b, x_BxTxD: Array,
                        lengths_B: Array, carries=None, *, merge: Merge = "concat",
                        impl: str = "scan", unroll: int = 1, remat: bool = False):
  """Both directions of a layer, merged: the maths of both front ends' `Bidirectional`.

  Args:
    forward_cell: the forward chain's pure cell.
    backward_cell: the backward chain's pure cell.
    params_f: the forward cell's parameter dict.
    params_b: the backward cell's parameter dict.
    x_BxTxD: float [batch, time, features].
    lengths_B: int [batch], already checked (`recurrence.check_inputs`).
    carries: None (zero carries) or the pair (forward carry, backward carry).
    merge: one of `birnn_jax.MERGES` or a function `(y_f, y_b) -> y`.
    impl: one of `birnn_jax.IMPLS`.
    unroll: the scan's unroll factor.
    remat: with impl='fused', recompute the gate activations in backprop instead of
      saving them.

  Returns:
    `(merged outputs [batch, time, H_merged], (forward carry, backward carry))`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax.core import cells, layers
    >>> cell = cells.SimpleCell(features=4)
    >>> p_f, p_b = cell.init(jax.random.key(0), 3), cell.init(jax.random.key(1), 3)
    >>> x, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
    >>> y, _ = layers.apply_bidirectional(cell, cell, p_f, p_b, x, lengths, impl="fused")
    >>> y_ref, _ = layers.apply_bidirectional(cell, cell, p_f, p_b, x, lengths,
    ...                                       impl="reference")
    >>> y.shape, bool(jnp.allclose(y, y_ref, atol=1e-6))
    ((2, 5, 8), True)
  """
  impl = resolve_impl(impl)
  carry_f, carry_b = carries if carries is not None else (None, None)
  carry_f = initial_carry(forward_cell, x_BxTxD, carry_f)
  carry_b = initial_carry(backward_cell, x_BxTxD, carry_b)
  if impl == Impl.FUSED:
    y_f, y_b, carry_f, carry_b = fused.fused_bidirectional(
        forward_cell, backward_cell, params_f, params_b, x_BxTxD, lengths_B,
        carry_f, carry_b, unroll=unroll, remat=remat)
  else:
    y_f, carry_f = run_chain(impl, forward_cell, params_f, x_BxTxD, lengths_B, carry_f,
                             False, unroll)
    y_b, carry_b = run_chain(impl, backward_cell, params_b, x_BxTxD, lengths_B, carry_b,
                             True, unroll)
  dtype = compute_dtype(forward_cell, x_BxTxD)
  y = merge_directions(merge, y_f.astype(dtype), y_b.astype(dtype))
  return y, (carry_f, carry_b)


# -------------------------------------------------------------------------------- stacks


def stack_carries(carries: list):
  """Per-(layer, direction) carries -> PyTorch layout [L * num_dirs, B, H] when they all
  have one shape (LSTM: the pair (h_n, c_n)); otherwise the tuple itself."""
  leaves = [jax.tree.leaves(c) for c in carries]
  same_tree = all(jax.tree.structure(c) == jax.tree.structure(carries[0]) for c in carries)
  if same_tree and all([a.shape for a in l] == [a.shape for a in leaves[0]] for l in leaves):
    return jax.tree.map(lambda *a: jnp.stack(a), *carries)
  return tuple(carries)


def unstack_carries(carry, count: int) -> list:
  """Inverse of `stack_carries`: `count` carries whose leaves are [B, H]."""
  leaves = jax.tree.leaves(carry)
  if leaves and all(a.ndim == 3 and a.shape[0] == count for a in leaves):
    return [jax.tree.map(lambda a, i=i: a[i], carry) for i in range(count)]
  if isinstance(carry, (tuple, list)) and len(carry) == count:
    return list(carry)
  raise ValueError(f"initial_carry must hold {count} carries (one per layer and "
                   f"direction) as [{count}, B, H] arrays or a tuple of {count}; got "
                   f"shapes {jax.tree.map(jnp.shape, carry)}.")


def check_stack(*, num_layers, dropout, merge: Merge, impl, forward_size: int | None,
                backward_size: int | None, backward_hidden_size: int | None = None) -> None:
  """Raises ValueError naming the attribute for any impossible stack setting (both front
  ends' BiRNN check with it); `backward_size` None means a forward-only stack."""
  if not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"num_layers must be a positive int, got {num_layers!r}.")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
  if backward_hidden_size is not None and backward_hidden_size <= 0:
    raise ValueError(f"backward_hidden_size must be positive, got {backward_hidden_size!r}.")
  resolve_impl(impl)
  if backward_size is not None:
    merged_size(merge, forward_size, backward_size)
    if isinstance(merge, str) and merge == "none" and num_layers > 1:
      raise ValueError("merge='none' returns a pair and cannot feed a next layer; "
                       f"use it with num_layers=1 (got {num_layers}).")


def stack_layers(layer_fn: Callable, x_BxTxD: Array, initial_carry_=None, *,
                 num_layers: int, num_directions: int, residual: bool = False,
                 dropout: Callable[[int, Array], Array] | None = None):
  """The stacked-layer logic for both front ends: -> (outputs [B, T, H_merged], final).

  Args:
    layer_fn: `(layer, y [B, T, F], carries | None) -> (y', carries')`, layer `layer`'s
      recurrence; carries are a tuple with one carry per direction.
    x_BxTxD: the first layer's input.
    initial_carry_: None (zeros), or every (layer, direction)'s carry, in PyTorch's layout
      [L * num_dirs, B, H] (LSTM: (h_0, c_0)) or a tuple of L * num_dirs carries.
    num_layers, num_directions: L, and 2 (bidirectional) or 1.
    residual: add each layer's input to its output from the second layer on.
    dropout: `(layer, y) -> y` applied to the input of every layer after the first
      (never after the last); None for none. The front end owns its random state.

  Returns:
    The last layer's outputs and the final carries in PyTorch's layout when they all have
    one shape, else a tuple of per-(layer, direction) carries (`stack_carries`).
  """
  count = num_layers * num_directions
  carries_in = (unstack_carries(initial_carry_, count) if initial_carry_ is not None
                else [None] * count)
  carries_out = []
  y = x_BxTxD
  for layer in range(num_layers):
    if layer > 0 and dropout is not None:
      y = dropout(layer, y)
    layer_in = y
    given = carries_in[num_directions * layer: num_directions * (layer + 1)]
    y, carries = layer_fn(layer, y, None if given[0] is None else tuple(given))
    carries_out.extend(carries)
    if residual and layer > 0:  # Layers after the first map H_merged -> H_merged.
      y = y + layer_in
  return y, stack_carries(carries_out)
