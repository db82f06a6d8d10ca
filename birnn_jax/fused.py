"""Fused bidirectional recurrence: both directions advance in one `jax.lax.scan`.

Registered as `bidirectional.FUSED['fused']`, so `Bidirectional(..., impl='fused')` and
`BiRNN(impl='fused')` use it. It computes exactly the contract of `recurrence` (design.md §2).

Notation: T = time, B = batch, D = input features, H = hidden size, G = gates (1 simple,
3 GRU, 4 LSTM), O = output size of a step (H, or P for a projected LSTM). Directions are
kept as pairs of arrays (forward, backward), never stacked, and every per-step array is
*time-major in time order* [T, B, ...]: scan step s is time s for the forward direction and
T-1-s for the backward one, and each step reads and writes its own time row of each
direction's arrays (dynamic slices of contiguous [B, ...] blocks). So nothing is reversed,
stacked or transposed around the loop, and the matmuls after it see contiguous [T*B, ...]
operands.

Forward pass:
- the input projections of every step are one matmul per direction,
  `x [T, B, D] @ W_ih [D, G*H]` (b_ih, and b_hh where it is additive, are added per step
  inside the gate fusion); when the activations are saved, step t writes them over its
  own row of this projection, so they need no buffer of their own;
- the scan body is, per direction, the recurrent matmul `h [B, O] @ W_hh [O, G*H]`, the gate
  non-linearities and the padding select (carry frozen where the step is not real). The
  two directions are independent chains inside the body (plain 2-D dots on separate
  arrays, so nothing is stacked per step), which XLA:CPU may run concurrently.

Backward pass (a `jax.custom_vjp`, as cuDNN does it):
- a reverse scan carries only the sequential part (dh, dc) and writes the per-step gate
  gradients dxp [T, B, G*H] (one recurrent matmul `dgates @ W_hh^T` per step and direction,
  with W_hh^T made once before the loop);
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

_PARAM_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
_DIRECTIONS = (0, 1)  # forward, backward


def _mm(spec: Spec, subscripts: str, a: Array, b: Array) -> Array:
  """einsum in the compute dtype, accumulated and returned in float32 (as `cells.dot`)."""
  return jnp.einsum(subscripts, a.astype(spec.dtype), b.astype(spec.dtype),
                    preferred_element_type=jnp.float32)


def _step_time(direction: int, s: Array, num_steps: int) -> Array:
  """The time index that scan step s processes in a direction."""
  return s if direction == 0 else num_steps - 1 - s


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


def _b_hn(spec: Spec, p: dict) -> Array:
  if not spec.use_bias:
    return jnp.zeros((spec.features,), jnp.float32)
  return p["b_hh"][2 * spec.features:].astype(jnp.float32)


def _gates(spec: Spec, p: dict, xp: Array, hp: Array, h: Array, c: Array | None,
           in_loop: bool):
  """One step of a direction's cell from xp = x W_ih and hp = h_prev W_hh.

  Works on any leading shape ([B] in the loop, [T, B] for the batched recompute).
  Returns (h_new, c_new, acts): acts are what the backward pass needs, a pair
  (gates [..., G*H], extra [..., H] | None): LSTM (i|f|g|o, None), GRU (r|z|n, h W_hn + b_hn);
  None for 'rnn'. The gates part has xp's shape, so it can take xp's place in memory.
  """
  hsz = spec.features
  xp = xp + _in_bias(spec, p)
  if spec.kind == "rnn":
    h_new = _act(spec, xp + hp)
    return h_new, None, None
  if spec.kind == "gru":
    hn = hp[..., 2 * hsz:] + _b_hn(spec, p)
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
  if spec.proj and in_loop:  # The batched recompute needs only acts.
    h_new = _mm(spec, "bh,hp->bp", h_new, p["w_hr"])
  return h_new, c_new, (jnp.concatenate([i, f, g, o], axis=-1), None)


# ----------------------------------------------------------------------------- forward


def _forward(spec: Spec, params: tuple, x_TxBxD: Array, real_TxB: Array, h0s: tuple,
             c0s: tuple | None, save: bool):
  """The fused scan over both directions; every result is a (forward, backward) pair.

  Returns (h_all [T, B, O] each, c_all [T, B, H] each | None, c_last [B, H] each | None,
  acts (see `_gates`) each | None), all in time order.
  """
  num_steps, batch, _ = x_TxBxD.shape
  xps = tuple(_project(spec, p, x_TxBxD) for p in params)
  lstm = spec.kind == "lstm"
  keep_acts = save and not spec.remat and spec.kind != "rnn"
  zeros = lambda size: jnp.zeros((num_steps, batch, size), jnp.float32)
  # Step t's gate activations overwrite its row of xp, which no other step reads: the
  # loop carries xp itself as the activations' buffer (no second [T, B, G*H] array to
  # allocate and zero-fill).
  outs = tuple({"h": zeros(spec.out_features),
                "c": zeros(spec.features) if (lstm and save) else None,
                "acts": xp if keep_acts else None,
                "hn": zeros(spec.features) if (keep_acts and spec.kind == "gru") else None}
               for xp in xps)

  def body(carry, s):
    hs, cs, outs = carry
    new_hs, new_cs, new_outs = [], [], []
    for k in _DIRECTIONS:  # Two independent chains: nothing crosses directions.
      p, t, h, c = params[k], _step_time(k, s, num_steps), hs[k], cs[k] if lstm else None
      hp_BxG = _mm(spec, "bo,og->bg", h, p["w_hh"])
      xp_BxG = _row(outs[k]["acts"] if keep_acts else xps[k], t)
      h_new, c_new, acts = _gates(spec, p, xp_BxG, hp_BxG, h, c, in_loop=True)
      real = _row(real_TxB, t)[:, None]
      h = jnp.where(real, h_new, h)
      out = dict(outs[k], h=_set_row(outs[k]["h"], t, h))
      if lstm:
        c = jnp.where(real, c_new, c)
        if save:
          out["c"] = _set_row(out["c"], t, c)
      if keep_acts:
        out["acts"] = _set_row(out["acts"], t, acts[0])
        if acts[1] is not None:
          out["hn"] = _set_row(out["hn"], t, acts[1])
      new_hs.append(h)
      new_cs.append(c)
      new_outs.append(out)
    return (tuple(new_hs), tuple(new_cs) if lstm else None, tuple(new_outs)), None

  (_, c_last, outs), _ = jax.lax.scan(
      body, (h0s, c0s, outs), jnp.arange(num_steps), unroll=spec.unroll)
  pick = lambda name: tuple(o[name] for o in outs) if outs[0][name] is not None else None
  acts = tuple((o["acts"], o["hn"]) for o in outs) if keep_acts else None
  return pick("h"), pick("c"), c_last, acts


def _recompute_acts(spec: Spec, p: dict, x_TxBxD: Array, h_prev: Array,
                    c_prev: Array | None) -> tuple:
  """One direction's gate activations of every step from the saved carries, as big matmuls."""
  hp = _mm(spec, "tbo,og->tbg", h_prev, p["w_hh"])
  return _gates(spec, p, _project(spec, p, x_TxBxD), hp, h_prev, c_prev, in_loop=False)[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_scan(spec: Spec, params: tuple, x_TxBxD: Array, real_TxB: Array, h0s: tuple,
               c0s: tuple | None):
  """Carries of every step, h_all [T, B, O] per direction (time order), and the last c."""
  h_all, _, c_last, _ = _forward(spec, params, x_TxBxD, real_TxB, h0s, c0s, False)
  return h_all, c_last


def _fused_scan_fwd(spec, params, x, real, h0s, c0s):
  h_all, c_all, c_last, acts = _forward(spec, params, x, real, h0s, c0s, True)
  return (h_all, c_last), (params, x, real, h0s, c0s, h_all, c_all, acts)


def _fused_scan_bwd(spec, residuals, cotangents):
  params, x_TxBxD, real_TxB, h0s, c0s, h_all, c_all, acts = residuals
  dh_all, dc_last = cotangents
  num_steps, batch, _ = x_TxBxD.shape
  hsz = spec.features
  lstm = spec.kind == "lstm"
  h_prev = tuple(_prev(k, h0s[k], h_all[k]) for k in _DIRECTIONS)
  c_prev = tuple(_prev(k, c0s[k], c_all[k]) for k in _DIRECTIONS) if lstm else None
  if acts is None and spec.kind != "rnn":
    acts = tuple(_recompute_acts(spec, params[k], x_TxBxD, h_prev[k],
                                 c_prev[k] if lstm else None) for k in _DIRECTIONS)
  # dgates @ W_hh^T with W_hh^T materialised once, outside the loop: contracting the
  # minor axis of an untransposed W_hh in every step is ~2x slower on XLA:CPU (the
  # barrier keeps XLA from folding the transpose back into the per-step dot).
  w_hh_t = jax.lax.optimization_barrier(tuple(p["w_hh"].T for p in params))  # [G*H, O]

  gh = params[0]["w_hh"].shape[-1]
  zeros = lambda size: jnp.zeros((num_steps, batch, size), jnp.float32)
  # (Writing dxp over the activations' rows, as the forward pass does with xp, makes
  # XLA:CPU copy the whole buffer in every step here: fresh buffers instead.)
  outs = tuple({"dxp": zeros(gh), "d_out": zeros(spec.out_features) if spec.proj else None}
               for _ in _DIRECTIONS)

  def step(k, t, g_h, g_c, out):
    """Direction k's gradient w.r.t. the carry after time t -> the one before it; writes dxp."""
    p = params[k]
    real = _row(real_TxB, t)[:, None]
    g_h = g_h + _row(dh_all[k], t)
    dh = jnp.where(real, g_h, 0.0)
    out = dict(out)
    if spec.kind == "rnn":
      h_new = _row(h_all[k], t)
      if spec.activation == "tanh":
        dgates = dh * (1.0 - h_new * h_new)
      else:
        dgates = jnp.where(h_new > 0, dh, 0.0)
      dxp = dgates
      dh_prev = _mm(spec, "bg,go->bo", dgates, w_hh_t[k])
    elif spec.kind == "gru":
      act, hn = _row(acts[k][0], t), _row(acts[k][1], t)
      r, z, n = (act[..., j * hsz:(j + 1) * hsz] for j in range(3))
      dn = dh * (1.0 - z) * (1.0 - n * n)
      dz = dh * (_row(h_prev[k], t) - n) * z * (1.0 - z)
      dr = dn * hn * r * (1.0 - r)
      dxp = jnp.concatenate([dr, dz, dn], axis=-1)
      dgates = jnp.concatenate([dr, dz, dn * r], axis=-1)  # The n gate sees r * (h W_hn).
      dh_prev = _mm(spec, "bg,go->bo", dgates, w_hh_t[k]) + dh * z
    else:
      act = _row(acts[k][0], t)
      i, f, g, o = (act[..., j * hsz:(j + 1) * hsz] for j in range(4))
      if spec.proj:
        out["d_out"] = _set_row(out["d_out"], t, dh)
        dh = _mm(spec, "bp,hp->bh", dh, p["w_hr"])
      tc = jnp.tanh(_row(c_all[k], t))
      dc = jnp.where(real, g_c, 0.0) + dh * o * (1.0 - tc * tc)
      dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * _row(c_prev[k], t) * f * (1.0 - f),
                                dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=-1)
      dxp = dgates
      dh_prev = _mm(spec, "bg,go->bo", dgates, w_hh_t[k])
      g_c = jnp.where(real, dc * f, g_c)
    g_h = jnp.where(real, dh_prev, g_h)
    out["dxp"] = _set_row(out["dxp"], t, dxp)
    return g_h, g_c, out

  def body(carry, s):
    g_hs, g_cs, outs = carry
    new = [step(k, _step_time(k, s, num_steps), g_hs[k], g_cs[k] if lstm else None, outs[k])
           for k in _DIRECTIONS]  # Two independent chains, as in the forward pass.
    g_hs, g_cs, outs = zip(*new)
    return (g_hs, g_cs if lstm else None, outs), None

  g_h0 = tuple(jnp.zeros_like(h) for h in h0s)
  g_c0 = tuple(dc_last) if lstm else None
  (dh0s, dc0s, outs), _ = jax.lax.scan(
      body, (g_h0, g_c0, outs), jnp.arange(num_steps), reverse=True, unroll=spec.unroll)

  # Weight and input gradients: 2-D matmuls over all steps at once (contiguous [T*B, ...]
  # operands), after the loop.
  grads, dx = [], 0.0
  for k in _DIRECTIONS:
    p, dxp = params[k], outs[k]["dxp"]
    dgates = dxp
    if spec.kind == "gru":
      # GRU's recurrent gradient differs from dxp only in the n gate (scaled by r); building
      # it here, fused into the matmul's operand, saves a [T, B, 3H] output of the loop.
      # (One multiply by [1, 1, r], so XLA makes it in one pass over dxp.)
      r = acts[k][0][..., :hsz]
      dgates = dxp * jnp.concatenate([jnp.ones_like(r), jnp.ones_like(r), r], axis=-1)
    g = {"w_hh": _mm(spec, "tbo,tbg->og", h_prev[k], dgates).astype(p["w_hh"].dtype),
         "w_ih": _mm(spec, "tbd,tbg->dg", x_TxBxD, dxp).astype(p["w_ih"].dtype)}
    dx = dx + _mm(spec, "tbg,dg->tbd", dxp, p["w_ih"])
    if spec.use_bias:
      g["b_ih"] = jnp.sum(dxp, axis=(0, 1)).astype(p["b_ih"].dtype)
      g["b_hh"] = jnp.sum(dgates, axis=(0, 1)).astype(p["b_hh"].dtype)
    if spec.proj:
      hr = acts[k][0][..., 3 * hsz:] * jnp.tanh(c_all[k])
      g["w_hr"] = _mm(spec, "tbh,tbp->hp", hr, outs[k]["d_out"]).astype(p["w_hr"].dtype)
    grads.append(g)
  dh0s = tuple(d.astype(h.dtype) for d, h in zip(dh0s, h0s))
  dc0s = tuple(d.astype(c.dtype) for d, c in zip(dc0s, c0s)) if lstm else None
  return tuple(grads), dx.astype(x_TxBxD.dtype), None, dh0s, dc0s


fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


# ----------------------------------------------------------------------------- public


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

  y_f, y_b = (jnp.swapaxes(jnp.where(real_TxB[..., None], h, 0.0), 0, 1) for h in h_all)
  # The last carry: after time T-1 going forward, after time 0 going backward.
  h_last = (h_all[0][-1], h_all[1][0])
  if lstm:
    carry_f, carry_b = (h_last[0], c_last[0]), (h_last[1], c_last[1])
  else:
    carry_f, carry_b = h_last
  return y_f, y_b, carry_f, carry_b


bidirectional.FUSED["fused"] = fused_bidirectional
