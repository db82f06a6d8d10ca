"""Fused bidirectional recurrence: both directions advance in one `jax.lax.scan`.

Registered as `bidirectional.FUSED['fused']`, so `Bidirectional(..., impl='fused')` and
`BiRNN(impl='fused')` use it. It computes exactly the contract of `recurrence` (design.md §2).

Notation: T = time, K = 2 directions, B = batch, D = input features, H = hidden size,
G = gates (1 simple, 3 GRU, 4 LSTM), O = output size of a step (H, or P for a projected LSTM).
Inside the loop everything is time-major and stacked on a direction axis, in *scan order*:
scan step s is time t = s for the forward direction and t = T-1-s for the backward one.

Forward pass:
- the input projections of every step and both directions are one matmul,
  `x [B, T, D] @ concat(W_ih_f, W_ih_b) [D, 2*G*H]` (with b_ih, and b_hh where it is additive);
- the scan body is only the recurrent matmul batched over directions,
  `einsum('kbo,kog->kbg', h [K, B, O], W_hh [K, O, G*H])`, the gate non-linearities and the
  padding select (carry frozen where the step is not real).

Backward pass (a `jax.custom_vjp`, as cuDNN does it):
- a reverse-time scan carries only the sequential part (dh, dc) and emits the per-step gate
  gradients (one recurrent matmul `dgates @ W_hh^T` per step);
- after it, every weight gradient and the input gradient are large matmuls over all steps
  at once: dW_hh = einsum(h_prev [T, K, B, O], dgates [T, K, B, G*H]), dW_ih = x^T @ dxp,
  dx = dxp @ W_ih^T, biases are sums, dW_hr = einsum(hr, dh) for a projected LSTM.
- saved for it: the carries of every step (the outputs themselves) and, unless `remat`, the
  gate activations. With `remat=True` only the carries are kept between the forward and the
  backward pass; the activations are recomputed at the start of the backward pass from the
  known previous carries as two big matmuls (x W_ih and h_prev W_hh), so the memory held
  per layer until its backward pass is O(T·B·(O + H)) instead of O(T·B·(G + 2)·H).

The custom VJP covers our own cells ('rnn' tanh/relu, 'gru', 'lstm' with or without
`proj_size`) when both directions have the same type, sizes, bias setting and dtype.
Otherwise (different cells or sizes, or a cell that is not one of ours) it falls back to two
`recurrence.scan` calls, differentiated by JAX's autodiff.

Carries and gate maths are float32; matmuls run in the cell's `dtype` (e.g. bfloat16) with
float32 accumulation, as `cells.dot` does.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from birnn_jax import bidirectional
from birnn_jax import cells as cells_lib
from birnn_jax import recurrence

Array = jax.Array

_KINDS = {cells_lib.SimpleCell: "rnn", cells_lib.GRUCell: "gru", cells_lib.LSTMCell: "lstm"}


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


def fusable_spec(forward_cell, backward_cell, unroll: int = 1,
                 remat: bool = False) -> Spec | None:
  """The `Spec` when the two cells can run fused, else None (then use two scans)."""
  kind = _KINDS.get(type(forward_cell))
  if kind is None or type(backward_cell) is not type(forward_cell):
    return None
  f, b = forward_cell, backward_cell
  same = (f.features == b.features and f.use_bias == b.use_bias
          and jnp.dtype(f.dtype) == jnp.dtype(b.dtype)
          and getattr(f, "activation", None) == getattr(b, "activation", None)
          and getattr(f, "proj_size", None) == getattr(b, "proj_size", None))
  if not same:
    return None
  return Spec(kind=kind, activation=getattr(f, "activation", "tanh"), features=f.features,
              out_features=f.output_size, use_bias=f.use_bias,
              proj=bool(getattr(f, "proj_size", None)), dtype=jnp.dtype(f.dtype),
              unroll=int(unroll), remat=bool(remat))


# ----------------------------------------------------------------------------- helpers


def _mm(spec: Spec, subscripts: str, a: Array, b: Array) -> Array:
  """einsum in the compute dtype, accumulated and returned in float32 (as `cells.dot`)."""
  return jnp.einsum(subscripts, a.astype(spec.dtype), b.astype(spec.dtype),
                    preferred_element_type=jnp.float32)


def _additive_hh_bias(spec: Spec, b_hh_KxG: Array) -> Array:
  """The part of b_hh that adds to the gates directly (all but GRU's n gate)."""
  if spec.kind == "gru":
    return b_hh_KxG.at[:, 2 * spec.features:].set(0.0)
  return b_hh_KxG


def _project(spec: Spec, p: dict, x_BxTxD: Array) -> Array:
  """All input projections, both directions: -> xp [T, K, B, G*H] float32 in scan order."""
  batch, num_steps, _ = x_BxTxD.shape
  gh = p["w_hh"].shape[-1]
  xp_BxTxKG = _mm(spec, "btd,dg->btg", x_BxTxD, p["w_ih"])
  if spec.use_bias:
    bias_KxG = (p["b_ih"].astype(jnp.float32).reshape(2, gh)
                + _additive_hh_bias(spec, p["b_hh"].astype(jnp.float32)))
    xp_BxTxKG = xp_BxTxKG + bias_KxG.reshape(2 * gh)
  xp_TxKxBxG = jnp.transpose(xp_BxTxKG.reshape(batch, num_steps, 2, gh), (1, 2, 0, 3))
  return _to_scan_order(xp_TxKxBxG)


def _to_scan_order(a_TxK: Array) -> Array:
  """Reverses the time axis of the backward direction (index 1 of axis 1); an involution."""
  return jnp.stack([a_TxK[:, 0], a_TxK[::-1, 1]], axis=1)


def _shift(first_Kx: Array, all_TxKx: Array) -> Array:
  """The carry before each step: [first, all[0], ..., all[T-2]]."""
  return jnp.concatenate([first_Kx[None], all_TxKx[:-1]], axis=0)


def _act(spec: Spec, a: Array) -> Array:
  return cells_lib.ACTIVATIONS[spec.activation](a)


def _b_hn(spec: Spec, p: dict) -> Array:
  if not spec.use_bias:
    return jnp.zeros((2, 1, spec.features), jnp.float32)
  return p["b_hh"][:, None, 2 * spec.features:].astype(jnp.float32)


def _gates(spec: Spec, p: dict, xp: Array, hp: Array, h: Array, c: Array | None):
  """One step of the cell from xp (with additive biases) and hp = h_prev W_hh.

  Works on any leading shape ([K, B] in the loop, [T, K, B] for the batched recompute).
  Returns (h_new, c_new, acts): acts are what the backward pass needs (None for 'rnn').
  """
  hsz = spec.features
  if spec.kind == "rnn":
    h_new = _act(spec, xp + hp)
    return h_new, None, None
  if spec.kind == "gru":
    hn = hp[..., 2 * hsz:] + _b_hn(spec, p).reshape((1,) * (hp.ndim - 3) + (2, 1, hsz))
    r = jax.nn.sigmoid(xp[..., :hsz] + hp[..., :hsz])
    z = jax.nn.sigmoid(xp[..., hsz:2 * hsz] + hp[..., hsz:2 * hsz])
    n = jnp.tanh(xp[..., 2 * hsz:] + r * hn)
    h_new = n + z * (h - n)
    return h_new, None, jnp.concatenate([r, z, n, hn], axis=-1)
  gates = xp + hp
  i = jax.nn.sigmoid(gates[..., :hsz])
  f = jax.nn.sigmoid(gates[..., hsz:2 * hsz])
  g = jnp.tanh(gates[..., 2 * hsz:3 * hsz])
  o = jax.nn.sigmoid(gates[..., 3 * hsz:])
  c_new = f * c + i * g
  h_new = o * jnp.tanh(c_new)
  if spec.proj and h_new.ndim == 3:  # In the loop; the batched recompute needs only acts.
    h_new = _mm(spec, "kbh,khp->kbp", h_new, p["w_hr"])
  return h_new, c_new, jnp.concatenate([i, f, g, o], axis=-1)


# ----------------------------------------------------------------------------- forward


def _forward(spec: Spec, p: dict, x_BxTxD: Array, real_TxKxB: Array, h0_KxBxO: Array,
             c0_KxBxH: Array | None, save: bool):
  """The fused scan. Returns (h_all [T, K, B, O], c_all | None, c_last | None, acts | None)."""
  xp_TxKxBxG = _project(spec, p, x_BxTxD)
  w_hh = p["w_hh"]
  lstm = spec.kind == "lstm"
  keep_acts = save and not spec.remat and spec.kind != "rnn"

  def body(carry, inputs):
    xp_KxBxG, real_KxB = inputs
    h, c = carry
    hp_KxBxG = _mm(spec, "kbo,kog->kbg", h, w_hh)
    h_new, c_new, acts = _gates(spec, p, xp_KxBxG, hp_KxBxG, h, c)
    real = real_KxB[..., None]
    h = jnp.where(real, h_new, h)
    if lstm:
      c = jnp.where(real, c_new, c)
    ys = (h, c if (lstm and save) else None, acts if keep_acts else None)
    return (h, c), ys

  (_, c_last), (h_all, c_all, acts) = jax.lax.scan(
      body, (h0_KxBxO, c0_KxBxH), (xp_TxKxBxG, real_TxKxB), unroll=spec.unroll)
  return h_all, c_all, c_last, acts


def _recompute_acts(spec: Spec, p: dict, x_BxTxD: Array, h0, c0, h_all, c_all) -> Array:
  """Gate activations of every step from the saved carries, as batched big matmuls."""
  xp = _project(spec, p, x_BxTxD)
  h_prev = _shift(h0, h_all)
  c_prev = _shift(c0, c_all) if spec.kind == "lstm" else None
  hp = _mm(spec, "tkbo,kog->tkbg", h_prev, p["w_hh"])
  return _gates(spec, p, xp, hp, h_prev, c_prev)[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_scan(spec: Spec, p: dict, x_BxTxD: Array, real_TxKxB: Array, h0_KxBxO: Array,
               c0_KxBxH: Array | None):
  """Carries of every step h_all [T, K, B, O] (scan order) and the last cell state c."""
  h_all, _, c_last, _ = _forward(spec, p, x_BxTxD, real_TxKxB, h0_KxBxO, c0_KxBxH, False)
  return h_all, c_last


def _fused_scan_fwd(spec, p, x, real, h0, c0):
  h_all, c_all, c_last, acts = _forward(spec, p, x, real, h0, c0, True)
  return (h_all, c_last), (p, x, real, h0, c0, h_all, c_all, acts)


def _fused_scan_bwd(spec, residuals, cotangents):
  p, x, real_TxKxB, h0, c0, h_all, c_all, acts = residuals
  dh_all, dc_last = cotangents
  hsz = spec.features
  lstm = spec.kind == "lstm"
  if acts is None and spec.kind != "rnn":
    acts = _recompute_acts(spec, p, x, h0, c0, h_all, c_all)
  h_prev = _shift(h0, h_all)
  c_prev = _shift(c0, c_all) if lstm else None
  w_hh = p["w_hh"]
  w_hr = p.get("w_hr")

  def body(carry, inputs):
    """Gradient w.r.t. the carry after step s -> the one before it, and step s's dgates."""
    g_h, g_c = carry
    dh_ext, real_KxB, h_new, h_before, c_before, c_after, act = inputs
    real = real_KxB[..., None]
    g_h = g_h + dh_ext
    dh = jnp.where(real, g_h, 0.0)
    d_out = None
    if spec.kind == "rnn":
      if spec.activation == "tanh":
        dgates = dh * (1.0 - h_new * h_new)
      else:
        dgates = jnp.where(h_new > 0, dh, 0.0)
      dxp = dgates
      dh_prev = _mm(spec, "kbg,kog->kbo", dgates, w_hh)
    elif spec.kind == "gru":
      r, z, n, hn = (act[..., j * hsz:(j + 1) * hsz] for j in range(4))
      dn = dh * (1.0 - z) * (1.0 - n * n)
      dz = dh * (h_before - n) * z * (1.0 - z)
      dr = dn * hn * r * (1.0 - r)
      dxp = jnp.concatenate([dr, dz, dn], axis=-1)
      dgates = jnp.concatenate([dr, dz, dn * r], axis=-1)
      dh_prev = _mm(spec, "kbg,kog->kbo", dgates, w_hh) + dh * z
    else:
      i, f, g, o = (act[..., j * hsz:(j + 1) * hsz] for j in range(4))
      if spec.proj:
        d_out = dh
        dh = _mm(spec, "kbp,khp->kbh", dh, w_hr)
      tc = jnp.tanh(c_after)
      dc = jnp.where(real, g_c, 0.0) + dh * o * (1.0 - tc * tc)
      dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_before * f * (1.0 - f),
                                dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=-1)
      dxp = dgates
      dh_prev = _mm(spec, "kbg,kog->kbo", dgates, w_hh)
      g_c = jnp.where(real, dc * f, g_c)
    g_h = jnp.where(real, dh_prev, g_h)
    return (g_h, g_c), (dxp, dgates if spec.kind == "gru" else None, d_out)

  # Per-step inputs of the backward scan: rnn needs h after the step, GRU h before it,
  # LSTM the cell state before and after it.
  xs = (dh_all, real_TxKxB, h_all if spec.kind == "rnn" else None,
        h_prev if spec.kind == "gru" else None, c_prev, c_all if lstm else None, acts)
  g_c0 = dc_last if lstm else None
  (dh0, dc0), (dxp, dgates, d_out) = jax.lax.scan(
      body, (jnp.zeros_like(h0), g_c0), xs, reverse=True, unroll=spec.unroll)
  if dgates is None:
    dgates = dxp

  # Weight and input gradients: big matmuls over all steps at once, after the loop.
  batch, num_steps, _ = x.shape
  gh = w_hh.shape[-1]
  grads = {"w_hh": _mm(spec, "tkbo,tkbg->kog", h_prev, dgates).astype(w_hh.dtype)}
  dxp_BxTxKG = jnp.transpose(_to_scan_order(dxp), (2, 0, 1, 3)).reshape(
      batch, num_steps, 2 * gh)
  grads["w_ih"] = _mm(spec, "btd,btg->dg", x, dxp_BxTxKG).astype(p["w_ih"].dtype)
  dx = _mm(spec, "btg,dg->btd", dxp_BxTxKG, p["w_ih"]).astype(x.dtype)
  if spec.use_bias:
    grads["b_ih"] = jnp.sum(dxp, axis=(0, 2)).reshape(2 * gh).astype(p["b_ih"].dtype)
    grads["b_hh"] = jnp.sum(dgates, axis=(0, 2)).astype(p["b_hh"].dtype)
  if spec.proj:
    hr = acts[..., 3 * hsz:] * jnp.tanh(c_all)
    grads["w_hr"] = _mm(spec, "tkbh,tkbp->khp", hr, d_out).astype(w_hr.dtype)
  dc0 = dc0.astype(c0.dtype) if lstm else None
  return grads, dx, None, dh0.astype(h0.dtype), dc0


fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


# ----------------------------------------------------------------------------- public


def stack_params(spec: Spec, params_f: dict, params_b: dict) -> dict:
  """Both directions' parameters in the fused layout (differentiable by autodiff).

  w_ih: [D, 2*G*H] (forward then backward along the output axis); b_ih: [2*G*H];
  w_hh: [K, O, G*H]; b_hh: [K, G*H]; w_hr: [K, H, P].
  """
  p = {"w_ih": jnp.concatenate([params_f["w_ih"], params_b["w_ih"]], axis=1),
       "w_hh": jnp.stack([params_f["w_hh"], params_b["w_hh"]])}
  if spec.use_bias:
    p["b_ih"] = jnp.concatenate([params_f["b_ih"], params_b["b_ih"]])
    p["b_hh"] = jnp.stack([params_f["b_hh"], params_b["b_hh"]])
  if spec.proj:
    p["w_hr"] = jnp.stack([params_f["w_hr"], params_b["w_hr"]])
  return p


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
  spec = fusable_spec(forward_cell, backward_cell, unroll, remat)
  lstm = spec is not None and spec.kind == "lstm"
  if spec is not None:
    shapes = jax.tree.map(jnp.shape, (carry_f, carry_b))
    if shapes[0] != shapes[1] or x_BxTxD.shape[1] == 0:
      spec = None
  if spec is None:
    return two_scans(forward_cell, backward_cell, params_f, params_b, x_BxTxD, lengths_B,
                     carry_f, carry_b, unroll)

  num_steps = x_BxTxD.shape[1]
  p = stack_params(spec, params_f, params_b)
  steps_T = jnp.arange(num_steps)
  real_TxKxB = jnp.stack([steps_T[:, None] < lengths_B[None, :],
                          steps_T[::-1, None] < lengths_B[None, :]], axis=1)
  if lstm:
    h0 = jnp.stack([carry_f[0], carry_b[0]]).astype(jnp.float32)
    c0 = jnp.stack([carry_f[1], carry_b[1]]).astype(jnp.float32)
  else:
    h0 = jnp.stack([carry_f, carry_b]).astype(jnp.float32)
    c0 = None
  if custom_vjp:
    h_all, c_last = fused_scan(spec, p, x_BxTxD, real_TxKxB, h0, c0)
  else:
    h_all, _, c_last, _ = _forward(spec, p, x_BxTxD, real_TxKxB, h0, c0, False)

  y_TxKxBxO = jnp.where(real_TxKxB[..., None], h_all, 0.0)
  y_f = jnp.swapaxes(y_TxKxBxO[:, 0], 0, 1)
  y_b = jnp.swapaxes(y_TxKxBxO[::-1, 1], 0, 1)
  h_last = h_all[-1]
  if lstm:
    carry_f, carry_b = (h_last[0], c_last[0]), (h_last[1], c_last[1])
  else:
    carry_f, carry_b = h_last[0], h_last[1]
  return y_f, y_b, carry_f, carry_b


bidirectional.FUSED["fused"] = fused_bidirectional
