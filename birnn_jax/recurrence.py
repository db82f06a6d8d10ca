"""One recurrent chain over a padded batch: the contract every implementation meets.

x: [B, T, D], lengths: [B] int in [0, T]. Step t of sequence b is real when t < lengths[b].
On real steps the cell advances; on padded steps the carry is frozen and the output is 0.
- forward (reverse=False): t = 0..T-1, so the final carry is the one after step lengths-1;
- backward (reverse=True): t = T-1..0; while t >= lengths the carry keeps its initial
  value, so each sequence's backward chain starts at its own last real token and its final
  carry is the one after step 0.
A length-0 sequence returns its initial carry and all-zero outputs.

Implementations (all return `(outputs [B, T, H_out], final_carry)` with equal numbers):
- `reference`: D2L's "from scratch" loop in plain Python, one step at a time; the backward
  chain flips each sequence within its length (`flip_sequences`), runs forward, flips back.
- `scan`: the input projection for all steps hoisted out as one matmul, then
  `jax.lax.scan` over time, with `reverse=True` for the backward chain.
"""

from typing import Any, Callable

import flax.linen as nn
from flax.linen.recurrent import flip_sequences
import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax import cells as cells_lib

Array = jax.Array
Carry = Any


def step_functions(cell: nn.Module) -> tuple[Callable, Callable, Callable]:
  """(project, step, output) pure functions of `params` for any cell.

  Our cells split the input projection from the step. Any other Flax cell with the usual
  `cell(carry, x) -> (carry, y)` is applied whole at each step (its projection stays inside).
  """
  if isinstance(cell, cells_lib.RecurrentCell):
    return cell.project_inputs, cell.step, cell.output
  project = lambda params, x: x
  step = lambda params, carry, x: cell.apply({"params": params}, carry, x)
  return project, step, None


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


def reference(cell: nn.Module, params, x_BxTxD: Array, lengths_B: Array,
              carry: Carry, reverse: bool = False) -> tuple[Array, Carry]:
  """The plain per-step loop (for tests and for reading, not for speed)."""
  project, step, _ = step_functions(cell)
  num_steps = x_BxTxD.shape[1]
  if reverse:
    x_BxTxD = flip_sequences(x_BxTxD, lengths_B, num_batch_dims=1, time_major=False)
  outputs = []
  for t in range(num_steps):
    xp_BxG = project(params, x_BxTxD[:, t])
    carry, y_BxH = masked_step(step, params, carry, xp_BxG, t < lengths_B)
    outputs.append(y_BxH)
  y_BxTxH = jnp.stack(outputs, axis=1)
  if reverse:
    y_BxTxH = flip_sequences(y_BxTxH, lengths_B, num_batch_dims=1, time_major=False)
  return y_BxTxH, carry


def scan(cell: nn.Module, params, x_BxTxD: Array, lengths_B: Array,
         carry: Carry, reverse: bool = False, unroll: int = 1) -> tuple[Array, Carry]:
  """`jax.lax.scan` over time with the input projection hoisted out of the loop."""
  project, step, _ = step_functions(cell)
  xp_TxBxG = jnp.swapaxes(project(params, x_BxTxD), 0, 1)
  steps_T = jnp.arange(x_BxTxD.shape[1])

  def body(carry, inputs):
    xp_BxG, t = inputs
    return masked_step(step, params, carry, xp_BxG, t < lengths_B)

  carry, y_TxBxH = jax.lax.scan(body, carry, (xp_TxBxG, steps_T),
                                reverse=reverse, unroll=unroll)
  return jnp.swapaxes(y_TxBxH, 0, 1), carry


# The implementation switch. Each entry runs one direction; `bidirectional.FUSED` lists
# implementations that advance both directions in one loop instead.
IMPLEMENTATIONS = {"reference": reference, "scan": scan}


def check_inputs(x: Array, lengths: Array | None, where: str) -> Array:
  """Validates x: [B, T, D] and lengths: [B] int; returns lengths (all T if None)."""
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
