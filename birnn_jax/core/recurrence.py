"""One recurrent chain over a padded batch: the contract every implementation meets.

x: [B, T, D], lengths: [B] int in [0, T]. Step t of sequence b is real when t < lengths[b].
On real steps the cell advances; on padded steps the carry is frozen and the output is 0.

- forward (reverse=False): t = 0..T-1, so the final carry is the one after step lengths-1;
- backward (reverse=True): t = T-1..0; while t >= lengths the carry keeps its initial
  value, so each sequence's backward chain starts at its own last real token and its final
  carry is the one after step 0.

A length-0 sequence returns its initial carry and all-zero outputs.

A cell is any object with `project_inputs(params, x)`, `step(params, carry, xp)` and
`zero_carry(input_shape)`: the pure cells of `core.cells`, or a front end's adapter of
another framework's cell (e.g. `birnn_jax.linen.FlaxCell` for any Flax Linen cell).

Implementations (all return `(outputs [B, T, H_out], final_carry)` with equal numbers):

- `reference`: D2L's "from scratch" loop in plain Python, one step at a time; the backward
  chain flips each sequence within its length (`flip_within_lengths`), runs forward, flips back.
- `scan`: the input projection for all steps hoisted out as one matmul, then
  `jax.lax.scan` over time, with `reverse=True` for the backward chain.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Carry = Any


def flip_within_lengths(x_BxTxF: Array, lengths_B: Array) -> Array:
  """Each row's first lengths[b] steps in reverse order, padding left where it is (what
  flax's `flip_sequences` does); its own inverse.

  Example:
    >>> import jax.numpy as jnp
    >>> from birnn_jax.core import recurrence
    >>> x = jnp.arange(8).reshape(2, 4)[:, :, None]            # [batch, time, 1]
    >>> recurrence.flip_within_lengths(x, jnp.array([4, 2]))[:, :, 0]
    Array([[3, 2, 1, 0],
           [5, 4, 6, 7]], dtype=int32)
  """
  num_steps = x_BxTxF.shape[1]
  t_T = jnp.arange(num_steps)
  source_BxT = jnp.where(t_T < lengths_B[:, None], lengths_B[:, None] - 1 - t_T, t_T)
  source_BxT = source_BxT.reshape(source_BxT.shape + (1,) * (x_BxTxF.ndim - 2))
  return jnp.take_along_axis(x_BxTxF, source_BxT, axis=1)


def _select(real_B: Array, new, old):
  """Per sequence: `new` where the step is real, else `old` (a pytree of [B, ...])."""
  def pick(n, o):
    return jnp.where(real_B.reshape(real_B.shape + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def masked_step(step: Callable, params, carry, xp_BxG: Array, real_B: Array):
  """One step that freezes the carry and zeroes the output where `real_B` is False."""
  new_carry, y_BxH = step(params, carry, xp_BxG)
  carry = _select(real_B, new_carry, carry)
  return carry, _select(real_B, y_BxH, jnp.zeros_like(y_BxH))


def reference(cell, params, x_BxTxD: Array, lengths_B: Array,
              carry: Carry, reverse: bool = False) -> tuple[Array, Carry]:
  """The plain per-step loop (for tests and for reading, not for speed).

  Args:
    cell: a pure cell (`core.cells`) or any object with its protocol.
    params: the cell's parameter dict.
    x_BxTxD: float [batch, time, features].
    lengths_B: int [batch] in [0, time].
    carry: the initial carry (e.g. `cell.zero_carry(x_BxTxD[:, 0].shape)`).
    reverse: the backward chain: flip each sequence within its length, run, flip back.

  Returns:
    `(outputs [batch, time, H_out], final carry)`, zeros at padded steps.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax.core import cells, recurrence
    >>> cell = cells.SimpleCell(features=4)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> x, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
    >>> carry = cell.zero_carry((2, 3))
    >>> y, h = recurrence.reference(cell, params, x, lengths, carry, reverse=True)
    >>> y_scan, h_scan = recurrence.scan(cell, params, x, lengths, carry, reverse=True)
    >>> bool(jnp.allclose(y, y_scan, atol=1e-6)), bool(jnp.allclose(h, h_scan, atol=1e-6))
    (True, True)
  """
  num_steps = x_BxTxD.shape[1]
  if reverse:
    x_BxTxD = flip_within_lengths(x_BxTxD, lengths_B)
  outputs = []
  for t in range(num_steps):
    xp_BxG = cell.project_inputs(params, x_BxTxD[:, t])
    carry, y_BxH = masked_step(cell.step, params, carry, xp_BxG, t < lengths_B)
    outputs.append(y_BxH)
  y_BxTxH = jnp.stack(outputs, axis=1)
  if reverse:
    y_BxTxH = flip_within_lengths(y_BxTxH, lengths_B)
  return y_BxTxH, carry


def scan(cell, params, x_BxTxD: Array, lengths_B: Array,
         carry: Carry, reverse: bool = False, unroll: int = 1) -> tuple[Array, Carry]:
  """`jax.lax.scan` over time with the input projection hoisted out of the loop.

  Args as `reference`, plus `unroll`, the scan's unroll factor; the backward chain is
  `jax.lax.scan(..., reverse=True)`, whose carry stays at its initial value while
  t >= lengths[b]. Returns what `reference` returns.
  """
  xp_TxBxG = jnp.swapaxes(cell.project_inputs(params, x_BxTxD), 0, 1)
  steps_T = jnp.arange(x_BxTxD.shape[1])

  def body(carry, inputs):
    xp_BxG, t = inputs
    return masked_step(cell.step, params, carry, xp_BxG, t < lengths_B)

  carry, y_TxBxH = jax.lax.scan(body, carry, (xp_TxBxG, steps_T),
                                reverse=reverse, unroll=unroll)
  return jnp.swapaxes(y_TxBxH, 0, 1), carry


def check_inputs(x: Array, lengths: Array | None, where: str) -> Array:
  """Validates the inputs of a recurrence, naming `where` in the error.

  Args:
    x: float [batch, time, features].
    lengths: int [batch] in [0, time], or None.
    where: the caller's name for the messages.

  Returns:
    `lengths`, or every sequence `time` long when None.

  Raises:
    ValueError: x is not of rank 3, lengths has the wrong shape, or (outside jit) a
      length lies outside [0, time].
    TypeError: lengths are not integers.

  Example:
    >>> import jax.numpy as jnp
    >>> from birnn_jax.core import recurrence
    >>> recurrence.check_inputs(jnp.ones((2, 5, 3)), None, "example")
    Array([5, 5], dtype=int32)
  """
  if x.ndim != 3:
    raise ValueError(f"{where}: x must be [batch, time, features] (rank 3), got "
                     f"x.shape={tuple(x.shape)}.")
  batch, num_steps, _ = x.shape
  if lengths is None:
    return jnp.full((batch,), num_steps, jnp.int32)
  lengths = jnp.asarray(lengths) if not isinstance(lengths, jax.Array) else lengths
  if lengths.shape != (batch,):
    raise ValueError(f"{where}: lengths must have shape [batch]=({batch},) for "
                     f"x.shape={tuple(x.shape)}, got lengths.shape={tuple(lengths.shape)}.")
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"{where}: lengths must be integers, got dtype {lengths.dtype}.")
  if not isinstance(lengths, jax.core.Tracer):  # Values are only known outside jit.
    values = np.asarray(lengths)  # numpy, so a concrete array closed over by jit stays concrete
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > num_steps:
      raise ValueError(f"{where}: lengths must lie in [0, T={num_steps}], got values "
                       f"from {low} to {high}.")
  return lengths
