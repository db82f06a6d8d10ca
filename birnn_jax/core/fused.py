"""Fused bidirectional recurrence: both directions advance in one `jax.lax.scan`.

(One module of a little over 500 lines, on purpose: the forward scan and its hand-written
backward pass, a `jax.custom_vjp`, must agree step for step on the layout below; side by
side, a change to one is read against the other.)

The implementation `impl='fused'` of `core.layers` (so `Bidirectional(..., impl='fused')` and
`BiRNN(impl='fused')` use it). It computes exactly the contract of `recurrence` (design.md §2).

Notation: T = time, B = batch, D = input features, H = hidden size, G = gates (1 simple,
3 GRU, 4 LSTM), O = output size of a step (H, or P for a projected LSTM).

Layout. Inside the scan body the carries are stacked on a leading direction axis
([2, B, O] for h, [2, B, H] for c; index 0 forward, 1 backward) and the recurrent matmul is
one einsum batched over directions, `h [2, B, O] @ W_hh [2, O, G*H]` (stacked W_hh built
once, outside the loop): on XLA:CPU that is faster than two 2-D dots. Every per-step array
(projections, activations, outputs, gradients) is instead kept as a pair of arrays, one
per direction, *time-major in time order* [T, B, ...]: scan step s is time s for the forward
direction and T-1-s for the backward one. Each step reads its two rows (dynamic slices of
contiguous [B, ...] blocks, stacked into one [2, B, ...] block) and writes them back
separately. So nothing is reversed or transposed around the loop, only [2, B, ...] blocks
are stacked per step, and the matmuls after the loop see contiguous [T*B, ...] operands.

Forward pass:
- the input projections of every step are one matmul per direction,
  `x [T, B, D] @ W_ih [D, G*H]` (b_ih, and b_hh where it is additive, are added per step
  inside the gate fusion); when the activations are saved, step t writes them over its
  own row of this projection, so they need no buffer of their own. (One matmul for both
  directions, x @ [W_ih_f | W_ih_b] into one [T, B, 2, G*H] buffer, was measured too:
  its forward pass is ~4% faster, but the backward pass then reads the activations with a
  stride, and the training step was 4-8% slower at B=64, T=128, D=H=256 on CPU.)
- the scan body is the direction-batched recurrent matmul, the gate non-linearities and
  the padding select (carry frozen where the step is not real), all on [2, B, ...] blocks.

Backward pass (a `jax.custom_vjp`, as cuDNN does it):
- a reverse scan carries only the sequential part (dh, dc) and writes the per-step gate
  gradients dxp [T, B, G*H] per direction; its carries are stacked [2, B, ...] as in the
  forward pass, and each step does one direction-batched recurrent matmul
  `dgates [2, B, G*H] @ W_hh^T [2, G*H, O]` (the stacked W_hh^T made once before the loop);
- after it, every weight gradient and the input gradient are 2-D matmuls over all steps
  at once: dW_hh = h_prev^T @ dgates, dW_ih = x^T @ dxp, dx = sum over directions of
  dxp @ W_ih^T, biases are sums, dW_hr = hr^T @ d_out for a projected LSTM.
- saved for it: the carries of every step (the outputs themselves) and, unless `remat`, the
  gate activations. With `remat=True` only the carries are kept between the forward and the
  backward pass; the activations are recomputed at the start of the backward pass from the
  known previous carries as two big matmuls (x W_ih and h_prev W_hh), so the memory held
  per layer until its backward pass is O(T·B·(O + H)) instead of O(T·B·(G + 2)·H).

The custom VJP covers our own cells ('rnn' tanh/relu, 'gru', 'lstm' with or without
`proj_size`) when both directions have the same type, sizes, bias setting and dtype.
Otherwise (different cells or sizes, or a cell that is not one of ours) it falls back to two
`recurrence.scan` calls, differentiated by JAX's autodiff, and logs a warning saying why.
'fused' is the default of `BiRNN` and `Bidirectional`, so that fallback is what a model of
such cells that names no impl runs. A custom VJP has no forward mode: `jax.jvp`,
`jax.jacfwd` and `jax.linearize` through this scan raise JAX's TypeError ("can't apply
forward-mode autodiff (jvp) to a custom_vjp function"); they need impl='scan'.

Carries and gate maths are float32; matmuls run in the cell's `dtype` (e.g. bfloat16) with
float32 accumulation, as `cells.dot` does.

One module of about 500 lines because it is one idea: the fused forward scan and its
hand-written backward pass share every gate formula and saved residual, and are read
together (the backward pass keeps its written reason for its length).
"""

import functools
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from birnn_jax.core import cells as cells_lib
from birnn_jax.core import recurrence

Array = jax.Array
logger = logging.getLogger("birnn_jax")
_FUSED_CELLS = (cells_lib.SimpleCell, cells_lib.GRUCell, cells_lib.LSTMCell)


class Spec(NamedTuple):
  """The static description of a fusable pair of cells (hashable: a custom_vjp nondiff arg)."""
  kind: str            # 'rnn' | 'gru' | 'lstm'
  activation: str      # 'tanh' | 'relu' (rnn only)
  features: int        # H
  out_features: int    # O (= proj_size or H)
  use_bias: bool
  proj: bool
  dtype: Any
  unroll: int
  remat: bool


def unfusable_reason(forward_cell, backward_cell) -> str | None:
  """Why the two cells cannot run fused, or None when they can. The fused gate maths and
  its backward pass are written for exactly birnn_jax's three cells: a subclass (a new
  cell, an overridden step) runs two scans."""
  if type(forward_cell) not in _FUSED_CELLS:
    return (f"the fused scan has no gate maths for {type(forward_cell).__name__} (only "
            "birnn_jax's SimpleCell, GRUCell and LSTMCell)")
  f, b = forward_cell, backward_cell
  if type(b) is not type(f):
    return (f"the directions have different cell types ({type(f).__name__}, "
            f"{type(b).__name__})")
  same = (f.features == b.features and f.use_bias == b.use_bias
          and jnp.dtype(f.dtype) == jnp.dtype(b.dtype)
          and getattr(f, "activation", None) == getattr(b, "activation", None)
          and getattr(f, "proj_size", None) == getattr(b, "proj_size", None))
  if not same:
    return f"the directions' cells differ ({f} vs {b})"
  return None


def fusable_spec(forward_cell, backward_cell, unroll: int = 1,
                 remat: bool = False) -> Spec | None:
  """The `Spec` when the two cells can run fused, else None (then use two scans)."""
  if unfusable_reason(forward_cell, backward_cell) is not None:
    return None
  f = forward_cell
  return Spec(kind=f.kind, activation=getattr(f, "activation", "tanh"), features=f.features,
              out_features=f.output_size, use_bias=f.use_bias,
              proj=bool(getattr(f, "proj_size", None)), dtype=jnp.dtype(f.dtype),
              unroll=int(unroll), remat=bool(remat))


# ----------------------------------------------------------------------------- helpers

_PARAM_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
_DIRECTIONS = (0, 1)  # forward, backward


def _mm(spec: Spec, subscripts: str, a: Array, b: Array) -> Array:
  """einsum in the compute dtype, accumulated and returned in float32 (as `cells.dot`)."""
  return jnp.einsum(subscripts, a.astype(spec.dtype), b.astype(spec.dtype),
                    preferred_element_type=jnp.float32)


def _row(a_TxX: Array, t: Array) -> Array:
  """a[t] for a traced t: one contiguous [B, ...] block of a time-major array."""
  return jax.lax.dynamic_index_in_dim(a_TxX, t, keepdims=False)


def _set_row(a_TxX: Array, t: Array, row: Array) -> Array:
  """a.at[t].set(row) for a traced t (in place on a loop carry)."""
  return jax.lax.dynamic_update_index_in_dim(a_TxX, row.astype(a_TxX.dtype), t, 0)


def _project(spec: Spec, p: dict, x_TxBxD: Array) -> Array:
  """One direction's input projections of all steps, without bias: -> [T, B, G*H] float32."""
  return _mm(spec, "tbd,dg->tbg", x_TxBxD, p["w_ih"])


def _in_bias(spec: Spec, p: dict) -> Array | float:
  """b_ih plus the part of b_hh that adds to the gates directly (all but GRU's n gate).

  Added per step inside the gate fusion rather than to the projection: adding it there
  would be one more pass over a [T, B, G*H] array.
  """
  if not spec.use_bias:
    return 0.0
  b_hh = p["b_hh"].astype(jnp.float32)
  if spec.kind == "gru":
    b_hh = b_hh.at[2 * spec.features:].set(0.0)
  return p["b_ih"].astype(jnp.float32) + b_hh


def _prev(direction: int, first_BxX: Array, all_TxBxX: Array) -> Array:
  """The carry before each time step, in time order: [T, B, ...].

  Forward: [first, all[0], ..., all[T-2]]; backward: [all[1], ..., all[T-1], first].
  """
  if direction == 0:
    return jnp.concatenate([first_BxX[None], all_TxBxX[:-1]], axis=0)
  return jnp.concatenate([all_TxBxX[1:], first_BxX[None]], axis=0)


def _act(spec: Spec, a: Array) -> Array:
  return cells_lib.ACTIVATIONS[spec.activation](a)


def _times(s: Array, num_steps: int) -> tuple:
  """The time index that scan step s processes in each direction: (s, T-1-s)."""
  return (s, num_steps - 1 - s)


def _rows(pair: tuple, ts: tuple) -> Array:
  """Row ts[k] of direction k's [T, B, X] array, both directions stacked: -> [2, B, X].

  A stack of two dynamic slices: keeping one [2, T, B, X] array instead and gathering a
  different row per direction is ~2x slower on XLA:CPU at B=8, H=128.
  """
  return jnp.stack([_row(pair[k], ts[k]) for k in _DIRECTIONS])


def _set_rows(pair: tuple, ts: tuple, rows_2xBxX: Array) -> tuple:
  """Writes rows[k] at row ts[k] of direction k's [T, B, X] array (in place on a carry)."""
  return tuple(_set_row(pair[k], ts[k], rows_2xBxX[k]) for k in _DIRECTIONS)


def _b_hn(spec: Spec, p: dict) -> Array:
  if not spec.use_bias:
    return jnp.zeros((spec.features,), jnp.float32)
  return p["b_hh"][2 * spec.features:].astype(jnp.float32)


def _stack_params(spec: Spec, params: tuple) -> dict:
  """Both directions' recurrent parameters on a leading direction axis (built once)."""
  sp = {"w_hh": jnp.stack([p["w_hh"] for p in params]),                 # [2, O, G*H]
        "b_in": jnp.stack([jnp.broadcast_to(_in_bias(spec, p), (p["w_hh"].shape[-1],))
                           for p in params])[:, None],                   # [2, 1, G*H]
        "b_hn": jnp.stack([_b_hn(spec, p) for p in params])[:, None]}    # [2, 1, H]
  if spec.proj:
    sp["w_hr"] = jnp.stack([p["w_hr"] for p in params])                 # [2, H, P]
  return sp


def _gates(spec: Spec, xp: Array, hp: Array, h: Array, c: Array | None, b_in, b_hn,
           w_hr=None):
  """One step of the cell from xp = x W_ih and hp = h_prev W_hh.

  Works on any leading shape ([2, B] in the loop, [T, B] for the batched recompute);
  b_in, b_hn broadcast against it. `w_hr` [2, H, P] projects h (in the loop only).
  Returns (h_new, c_new, acts): acts are what the backward pass needs, a pair
  (gates [..., G*H], extra [..., H] | None): LSTM (i|f|g|o, None), GRU (r|z|n, h W_hn + b_hn);
  None for 'rnn'. The gates part has xp's shape, so it can take xp's place in memory.
  """
  hsz = spec.features
  xp = xp + b_in
  if spec.kind == "rnn":
    h_new = _act(spec, xp + hp)
    return h_new, None, None
  if spec.kind == "gru":
    hn = hp[..., 2 * hsz:] + b_hn
    r = jax.nn.sigmoid(xp[..., :hsz] + hp[..., :hsz])
    z = jax.nn.sigmoid(xp[..., hsz:2 * hsz] + hp[..., hsz:2 * hsz])
    n = jnp.tanh(xp[..., 2 * hsz:] + r * hn)
    h_new = n + z * (h - n)
    return h_new, None, (jnp.concatenate([r, z, n], axis=-1), hn)
  gates = xp + hp
  i = jax.nn.sigmoid(gates[..., :hsz])
  f = jax.nn.sigmoid(gates[..., hsz:2 * hsz])
  g = jnp.tanh(gates[..., 2 * hsz:3 * hsz])
  o = jax.nn.sigmoid(gates[..., 3 * hsz:])
  c_new = f * c + i * g
  h_new = o * jnp.tanh(c_new)
  if w_hr is not None:
    h_new = _mm(spec, "kbh,khp->kbp", h_new, w_hr)
  return h_new, c_new, (jnp.concatenate([i, f, g, o], axis=-1), None)


# ----------------------------------------------------------------------------- forward


def _forward(spec: Spec, params: tuple, x_TxBxD: Array, real_TxB: Array, h0s: tuple,
             c0s: tuple | None, save: bool):
  """The fused scan over both directions.

  Returns (h_all, c_all | None, c_last [2, B, H] | None, acts | None): h_all is a
  (forward, backward) pair of [T, B, O], c_all of [T, B, H]; acts is (gates, extra) with
  each a pair of [T, B, G*H] / [T, B, H] (see `_gates`), extra None but for GRU; all in
  time order.
  """
  num_steps, batch, _ = x_TxBxD.shape
  xps = tuple(_project(spec, p, x_TxBxD) for p in params)
  sp = _stack_params(spec, params)
  lstm = spec.kind == "lstm"
  keep_acts = save and not spec.remat and spec.kind != "rnn"
  zeros = lambda size: tuple(jnp.zeros((num_steps, batch, size), jnp.float32)
                               for _ in _DIRECTIONS)
  # Step t's gate activations overwrite its row of xp, which no other step reads: the
  # loop carries xp itself as the activations' buffer (no second [T, B, G*H] array to
  # allocate and zero-fill).
  outs = {"h": zeros(spec.out_features),
          "c": zeros(spec.features) if (lstm and save) else None,
          "acts": xps if keep_acts else None,
          "hn": zeros(spec.features) if (keep_acts and spec.kind == "gru") else None}

  def body(carry, s):
    h, c, outs = carry  # h [2, B, O], c [2, B, H]
    ts = _times(s, num_steps)
    outs = dict(outs)
    hp = _mm(spec, "kbo,kog->kbg", h, sp["w_hh"])  # One dot for both directions.
    xp = _rows(outs["acts"] if keep_acts else xps, ts)
    h_new, c_new, acts = _gates(spec, xp, hp, h, c, sp["b_in"], sp["b_hn"], sp.get("w_hr"))
    real = jnp.stack([_row(real_TxB, t) for t in ts])[..., None]  # [2, B, 1]
    h = jnp.where(real, h_new, h)
    outs["h"] = _set_rows(outs["h"], ts, h)
    if lstm:
      c = jnp.where(real, c_new, c)
      if save:
        outs["c"] = _set_rows(outs["c"], ts, c)
    if keep_acts:
      outs["acts"] = _set_rows(outs["acts"], ts, acts[0])
      if acts[1] is not None:
        outs["hn"] = _set_rows(outs["hn"], ts, acts[1])
    return (h, c, outs), None

  h0 = jnp.stack(h0s)
  c0 = jnp.stack(c0s) if lstm else None
  (_, c_last, outs), _ = jax.lax.scan(body, (h0, c0, outs), jnp.arange(num_steps),
                                      unroll=spec.unroll)
  acts = (outs["acts"], outs["hn"]) if keep_acts else None
  return outs["h"], outs["c"], c_last, acts


def _recompute_acts(spec: Spec, p: dict, x_TxBxD: Array, h_prev: Array,
                    c_prev: Array | None) -> tuple:
  """One direction's gate activations of every step from the saved carries, as big matmuls."""
  hp = _mm(spec, "tbo,og->tbg", h_prev, p["w_hh"])
  return _gates(spec, _project(spec, p, x_TxBxD), hp, h_prev, c_prev, _in_bias(spec, p),
                _b_hn(spec, p))[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_scan(spec: Spec, params: tuple, x_TxBxD: Array, real_TxB: Array, h0s: tuple,
               c0s: tuple | None):
  """Carries of every step, h_all [T, B, O] per direction (time order), and the last c
  ([B, H] per direction, LSTM only, else None)."""
  h_all, _, c_last, _ = _forward(spec, params, x_TxBxD, real_TxB, h0s, c0s, False)
  return (h_all[0], h_all[1]), ((c_last[0], c_last[1]) if c_last is not None else None)


def _fused_scan_fwd(spec, params, x, real, h0s, c0s):
  h_all, c_all, c_last, acts = _forward(spec, params, x, real, h0s, c0s, True)
  out = (h_all[0], h_all[1]), ((c_last[0], c_last[1]) if c_last is not None else None)
  return out, (params, x, real, h0s, c0s, h_all, c_all, acts)


def _fused_scan_bwd(spec, residuals, cotangents):
  """The cuDNN-style backward pass of `fused_scan`: (d params, d x, None, d h0s, d c0s).

  One reverse `lax.scan` (time runs backwards for the forward direction and forwards for the
  backward one, both in the same step) carries dL/dh and dL/dc and writes the gradient of
  every step's gate pre-activations, dxp [T, B, G*H] per direction; padded steps pass the
  carry's gradient through untouched. Every weight gradient and dL/dx are then a few 2-D
  matmuls over all [T*B] rows at once, after the scan, instead of one small matmul per step.
  It is one function because the scan body, the buffers it writes and the matmuls that read
  them share a layout (time order, stacked directions) that separate pieces would each have
  to re-derive; the steps are commented in place.
  """
  params, x_TxBxD, real_TxB, h0s, c0s, h_all, c_all, acts = residuals
  dh_all, dc_last = cotangents
  num_steps, batch, _ = x_TxBxD.shape
  hsz = spec.features
  lstm = spec.kind == "lstm"
  h_prev = tuple(_prev(k, h0s[k], h_all[k]) for k in _DIRECTIONS)
  c_prev = tuple(_prev(k, c0s[k], c_all[k]) for k in _DIRECTIONS) if lstm else None
  if acts is None and spec.kind != "rnn":
    acts = [_recompute_acts(spec, params[k], x_TxBxD, h_prev[k],
                            c_prev[k] if lstm else None) for k in _DIRECTIONS]
    acts = (tuple(a[0] for a in acts),
            tuple(a[1] for a in acts) if acts[0][1] is not None else None)
  # dgates @ W_hh^T with W_hh^T materialised once, outside the loop: contracting the
  # minor axis of an untransposed W_hh in every step is ~2x slower on XLA:CPU (the
  # barrier keeps XLA from folding the transpose back into the per-step dot).
  w_hh_t = jax.lax.optimization_barrier(
      jnp.stack([p["w_hh"].T for p in params]))  # [2, G*H, O]
  w_hr = jnp.stack([p["w_hr"] for p in params]) if spec.proj else None  # [2, H, P]

  gh = params[0]["w_hh"].shape[-1]
  zeros = lambda size: tuple(jnp.zeros((num_steps, batch, size), jnp.float32)
                               for _ in _DIRECTIONS)
  # (Writing dxp over the activations' rows, as the forward pass does with xp, makes
  # XLA:CPU copy the whole buffer in every step here: fresh buffers instead.)
  outs = {"dxp": zeros(gh), "d_out": zeros(spec.out_features) if spec.proj else None}

  def body(carry, s):
    """Gradient w.r.t. the carries after step s -> before it ([2, B, ...]); writes dxp."""
    g_h, g_c, outs = carry
    ts = _times(s, num_steps)
    outs = dict(outs)
    real = jnp.stack([_row(real_TxB, t) for t in ts])[..., None]
    g_h = g_h + _rows(dh_all, ts)
    dh = jnp.where(real, g_h, 0.0)
    if spec.kind == "rnn":
      h_new = _rows(h_all, ts)
      if spec.activation == "tanh":
        dgates = dh * (1.0 - h_new * h_new)
      else:
        dgates = jnp.where(h_new > 0, dh, 0.0)
      dxp = dgates
      dh_prev = _mm(spec, "kbg,kgo->kbo", dgates, w_hh_t)
    elif spec.kind == "gru":
      act, hn = _rows(acts[0], ts), _rows(acts[1], ts)
      r, z, n = (act[..., j * hsz:(j + 1) * hsz] for j in range(3))
      dn = dh * (1.0 - z) * (1.0 - n * n)
      dz = dh * (_rows(h_prev, ts) - n) * z * (1.0 - z)
      dr = dn * hn * r * (1.0 - r)
      dxp = jnp.concatenate([dr, dz, dn], axis=-1)
      dgates = jnp.concatenate([dr, dz, dn * r], axis=-1)  # The n gate sees r * (h W_hn).
      dh_prev = _mm(spec, "kbg,kgo->kbo", dgates, w_hh_t) + dh * z
    else:
      act = _rows(acts[0], ts)
      i, f, g, o = (act[..., j * hsz:(j + 1) * hsz] for j in range(4))
      if spec.proj:
        outs["d_out"] = _set_rows(outs["d_out"], ts, dh)
        dh = _mm(spec, "kbp,khp->kbh", dh, w_hr)
      tc = jnp.tanh(_rows(c_all, ts))
      dc = jnp.where(real, g_c, 0.0) + dh * o * (1.0 - tc * tc)
      dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * _rows(c_prev, ts) * f * (1.0 - f),
                                dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=-1)
      dxp = dgates
      dh_prev = _mm(spec, "kbg,kgo->kbo", dgates, w_hh_t)
      g_c = jnp.where(real, dc * f, g_c)
    g_h = jnp.where(real, dh_prev, g_h)
    outs["dxp"] = _set_rows(outs["dxp"], ts, dxp)
    return (g_h, g_c, outs), None

  g_h0 = jnp.zeros((2,) + h0s[0].shape, jnp.float32)
  g_c0 = jnp.stack(dc_last) if lstm else None
  (dh0s, dc0s, outs), _ = jax.lax.scan(
      body, (g_h0, g_c0, outs), jnp.arange(num_steps), reverse=True, unroll=spec.unroll)

  # Weight and input gradients: 2-D matmuls over all steps at once (contiguous [T*B, ...]
  # operands), after the loop.
  grads, dx = [], 0.0
  for k in _DIRECTIONS:
    p, dxp = params[k], outs["dxp"][k]
    dgates = dxp
    if spec.kind == "gru":
      # GRU's recurrent gradient differs from dxp only in the n gate (scaled by r); building
      # it here, fused into the matmul's operand, saves a [T, B, 3H] output of the loop.
      # (One multiply by [1, 1, r], so XLA makes it in one pass over dxp.)
      r = acts[0][k][..., :hsz]
      dgates = dxp * jnp.concatenate([jnp.ones_like(r), jnp.ones_like(r), r], axis=-1)
    g = {"w_hh": _mm(spec, "tbo,tbg->og", h_prev[k], dgates).astype(p["w_hh"].dtype),
         "w_ih": _mm(spec, "tbd,tbg->dg", x_TxBxD, dxp).astype(p["w_ih"].dtype)}
    dx = dx + _mm(spec, "tbg,dg->tbd", dxp, p["w_ih"])
    if spec.use_bias:
      g["b_ih"] = jnp.sum(dxp, axis=(0, 1)).astype(p["b_ih"].dtype)
      g["b_hh"] = jnp.sum(dgates, axis=(0, 1)).astype(p["b_hh"].dtype)
    if spec.proj:
      hr = acts[0][k][..., 3 * hsz:] * jnp.tanh(c_all[k])
      g["w_hr"] = _mm(spec, "tbh,tbp->hp", hr, outs["d_out"][k]).astype(p["w_hr"].dtype)
    grads.append(g)
  dh0s = tuple(dh0s[k].astype(h.dtype) for k, h in enumerate(h0s))
  dc0s = tuple(dc0s[k].astype(c.dtype) for k, c in enumerate(c0s)) if lstm else None
  return tuple(grads), dx.astype(x_TxBxD.dtype), None, dh0s, dc0s


fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


# ----------------------------------------------------------------------------- public


@functools.lru_cache(maxsize=64)
def log_fallback(message: str, info: bool = False) -> None:
  """Logs `message` (a warning, or with `info` a note) once per process: each trace of a
  jitted model would repeat it."""
  logger.log(logging.INFO if info else logging.WARNING, message)


def two_scans(forward_cell, backward_cell, params_f, params_b, x, lengths, carry_f, carry_b,
              unroll: int = 1):
  """The fallback: one `recurrence.scan` per direction."""
  y_f, carry_f = recurrence.scan(forward_cell, params_f, x, lengths, carry_f, False,
                                 unroll=unroll)
  y_b, carry_b = recurrence.scan(backward_cell, params_b, x, lengths, carry_b, True,
                                 unroll=unroll)
  return y_f, y_b, carry_f, carry_b


def fused_bidirectional(forward_cell, backward_cell, params_f, params_b, x_BxTxD: Array,
                        lengths_B: Array, carry_f, carry_b, unroll: int = 1,
                        remat: bool = False, custom_vjp: bool = True):
  """Both directions in one scan: -> (y_f [B, T, O], y_b [B, T, O], carry_f, carry_b).

  `remat` recomputes the gate activations in the backward pass instead of saving them;
  `custom_vjp=False` lets JAX differentiate the fused scan itself (for comparison).
  Falls back to `two_scans` when the cells cannot be fused.
  """
  reason = unfusable_reason(forward_cell, backward_cell)
  if reason is None:
    shapes = jax.tree.map(jnp.shape, (carry_f, carry_b))
    if shapes[0] != shapes[1]:
      reason = f"the initial carries differ in shape ({shapes[0]} vs {shapes[1]})"
  if reason is not None:
    log_fallback(f"impl='fused' runs two scans: {reason}. The numbers are the same; "
                 "impl='scan' asks for two scans without this warning.")
  spec = fusable_spec(forward_cell, backward_cell, unroll, remat) if reason is None else None
  lstm = spec is not None and spec.kind == "lstm"
  if spec is None or x_BxTxD.shape[1] == 0:  # T = 0: nothing to run, both give zeros
    return two_scans(forward_cell, backward_cell, params_f, params_b, x_BxTxD, lengths_B,
                     carry_f, carry_b, unroll)

  num_steps = x_BxTxD.shape[1]
  names = [n for n in _PARAM_NAMES if n in params_f]
  params = tuple({n: jnp.asarray(q[n]) for n in names} for q in (params_f, params_b))
  x_TxBxD = jnp.swapaxes(x_BxTxD, 0, 1)  # Time-major once: D is usually the narrowest.
  # In time order both directions' step t is real when t < length.
  real_TxB = jnp.arange(num_steps)[:, None] < lengths_B[None, :]
  if lstm:
    h0s = tuple(carry[0].astype(jnp.float32) for carry in (carry_f, carry_b))
    c0s = tuple(carry[1].astype(jnp.float32) for carry in (carry_f, carry_b))
  else:
    h0s = tuple(carry.astype(jnp.float32) for carry in (carry_f, carry_b))
    c0s = None
  if custom_vjp:
    h_all, c_last = fused_scan(spec, params, x_TxBxD, real_TxB, h0s, c0s)
  else:
    h_all, _, c_last, _ = _forward(spec, params, x_TxBxD, real_TxB, h0s, c0s, False)
    h_all = (h_all[0], h_all[1])
    c_last = (c_last[0], c_last[1]) if lstm else None

  y_f, y_b = (jnp.swapaxes(jnp.where(real_TxB[..., None], h, 0.0), 0, 1) for h in h_all)
  # The last carry: after time T-1 going forward, after time 0 going backward.
  h_last = (h_all[0][-1], h_all[1][0])
  if lstm:
    carry_f, carry_b = (h_last[0], c_last[0]), (h_last[1], c_last[1])
  else:
    carry_f, carry_b = h_last
  return y_f, y_b, carry_f, carry_b
