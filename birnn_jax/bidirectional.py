"""Bidirectional layer: two chains over the same input, merged per time step.

    H→_t = cell_f(H→_{t-1}, X_t)        H←_t = cell_b(H←_{t+1}, X_t)
    H_t  = merge(H→_t, H←_t)            (concat by default: D2L eq. 10.4.2)

Cells are unbound Flax modules (ours from `cells`, or any Flax cell); their parameters are
created with the cell's own `init` and then used through pure functions, so the chains are
plain `jax.lax.scan`s (see `recurrence`).
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from birnn_jax import recurrence

Array = jax.Array

MERGES = ("concat", "sum", "mean", "mul", "none")

# Implementations that run both directions in one loop (filled by the fused module).
FUSED: dict[str, Any] = {}


def impl_names() -> tuple[str, ...]:
  return tuple(recurrence.IMPLEMENTATIONS) + tuple(FUSED)


def output_size(cell: nn.Module) -> int | None:
  """Features of a cell's output, when the cell says (ours do; Flax cells have features)."""
  size = getattr(cell, "output_size", None)
  return size if size is not None else getattr(cell, "features", None)


def merged_size(merge: str, forward_size: int, backward_size: int) -> int:
  """Output features of `merge`; raises when the merge cannot combine the two sizes."""
  if merge not in MERGES:
    raise ValueError(f"unknown merge={merge!r}; expected one of {MERGES}.")
  if merge in ("sum", "mean", "mul") and forward_size != backward_size:
    raise ValueError(
        f"merge={merge!r} needs equal hidden sizes in both directions, got forward "
        f"{forward_size} and backward {backward_size}; use 'concat' or 'none'.")
  return forward_size + backward_size if merge == "concat" else forward_size


def merge_directions(merge: str, y_f: Array, y_b: Array):
  """[B, T, H_f], [B, T, H_b] -> [B, T, H_f + H_b] (concat) or [B, T, H] or the pair."""
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


def check_impl(impl: str) -> None:
  names = impl_names()
  if impl not in names:
    raise ValueError(f"unknown impl={impl!r}; expected one of {names}.")


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


def initial_carry(cell: nn.Module, x_BxTxD: Array, carry=None):
  """The given carry, or the cell's zero carry for a batch of x."""
  if carry is not None:
    return carry
  return cell.initialize_carry(jax.random.key(0), x_BxTxD[:, 0].shape)


def compute_dtype(cell: nn.Module, x: Array):
  """The cell's compute dtype; a Flax cell with dtype None computes in x's dtype."""
  return getattr(cell, "dtype", None) or x.dtype


def run_chain(impl: str, cell, params, x, lengths, carry, reverse: bool, unroll: int):
  if impl == "scan":
    return recurrence.scan(cell, params, x, lengths, carry, reverse, unroll=unroll)
  return recurrence.IMPLEMENTATIONS[impl](cell, params, x, lengths, carry, reverse)


# The layers as pure functions of their cells' parameters: the Linen layers below and the
# NNX ones (`birnn_jax.nnx`) both call these, so there is one implementation of the maths.


def apply_recurrent(cell: nn.Module, params, x_BxTxD: Array, lengths_B: Array, carry=None,
                    *, reverse: bool = False, impl: str = "scan", unroll: int = 1):
  """One direction: -> (outputs [B, T, H_out] in the cell's compute dtype, final carry).

  `lengths_B` must already be checked (`recurrence.check_inputs`); `carry` None starts
  from the cell's zero carry.
  """
  # A fused implementation only differs from the scan when there are two directions.
  impl = impl if impl in recurrence.IMPLEMENTATIONS else "scan"
  y, carry = run_chain(impl, cell, params, x_BxTxD, lengths_B,
                       initial_carry(cell, x_BxTxD, carry), reverse, unroll)
  return y.astype(compute_dtype(cell, x_BxTxD)), carry


def apply_bidirectional(forward_cell: nn.Module, backward_cell: nn.Module, params_f,
                        params_b, x_BxTxD: Array, lengths_B: Array, carries=None, *,
                        merge: str = "concat", impl: str = "scan", unroll: int = 1,
                        remat: bool = False):
  """Both directions: -> (merged outputs [B, T, H_merged], (forward carry, backward carry)).

  `lengths_B` must already be checked; `carries` None starts both from zero carries.
  """
  carry_f, carry_b = carries if carries is not None else (None, None)
  carry_f = initial_carry(forward_cell, x_BxTxD, carry_f)
  carry_b = initial_carry(backward_cell, x_BxTxD, carry_b)
  if impl in FUSED:
    y_f, y_b, carry_f, carry_b = FUSED[impl](
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


class Recurrent(nn.Module):
  """One direction over [B, T, D] -> (outputs [B, T, H_out], final carry).

  Parameters live under 'forward' (or 'backward' when reverse), as in `Bidirectional`, so a
  unidirectional stack has the same parameter names as the forward half of a bidirectional one.
  """
  cell: nn.Module
  reverse: bool = False
  impl: str = "scan"
  unroll: int = 1

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, carry=None):
    lengths = recurrence.check_inputs(x, lengths, type(self).__name__)
    check_impl(self.impl)
    params = cell_params(self, "backward" if self.reverse else "forward", self.cell, x)
    return apply_recurrent(self.cell, params, x, lengths, carry, reverse=self.reverse,
                           impl=self.impl, unroll=self.unroll)


class Bidirectional(nn.Module):
  """Both directions over [B, T, D] -> (merged outputs, (forward carry, backward carry)).

  The directions may differ in cell type and hidden size (with merge 'concat' or 'none').
  """
  forward_cell: nn.Module
  backward_cell: nn.Module
  merge: str = "concat"
  impl: str = "scan"
  unroll: int = 1
  remat: bool = False  # fused: recompute gate activations in backprop (less memory)

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, carries=None):
    lengths = recurrence.check_inputs(x, lengths, type(self).__name__)
    check_impl(self.impl)
    merged_size(self.merge, output_size(self.forward_cell), output_size(self.backward_cell))
    params_f = cell_params(self, "forward", self.forward_cell, x)
    params_b = cell_params(self, "backward", self.backward_cell, x)
    return apply_bidirectional(self.forward_cell, self.backward_cell, params_f, params_b, x,
                               lengths, carries, merge=self.merge, impl=self.impl,
                               unroll=self.unroll, remat=self.remat)
