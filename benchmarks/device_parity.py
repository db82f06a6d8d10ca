"""Parity of the implementations on whatever device JAX uses (run by device_check.sh).

A 2-layer BiRNN (LSTM and GRU) with ragged lengths (0, 1, ..., T): outputs and the
gradients of a fixed random weighting of them with respect to the parameters and x, from
`impl='scan'` and `impl='fused'` against `impl='reference'`, in float32 (tolerance 1e-4)
and with `dtype=bfloat16` (against the float32 reference, tolerance 5e-2 of each array's
largest value). Run it with JAX_DEFAULT_MATMUL_PRECISION=highest on a GPU, whose default
float32 matmul may be TF32. Writes the largest errors as JSON (--out); exit 1 on a failure.

  python benchmarks/device_parity.py --out=/tmp/parity.json [--quick=1]
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import birnn_jax  # pylint: disable=g-import-not-at-top,wrong-import-position

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


def outputs_and_grads(module, params, x, lengths, weights):
  """(outputs [B, T, 2H], d params, d x), float32, from one jitted function."""
  def loss(params, x):
    out, _ = module.apply({"params": params}, x.astype(module.dtype), lengths)
    out = out.astype(jnp.float32)
    return jnp.sum(out * weights), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return jax.tree.map(lambda a: np.asarray(a, np.float32), (out, grads))


def max_relative_error(actual, expected) -> float:
  """The largest |a - e| over every array pair, each relative to max |e| (at least 1)."""
  errors = [float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))
            for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))]
  return max(errors)


def check(cell: str, shape, dtype: str) -> dict:
  batch, steps, features, hidden = shape
  x = jax.random.normal(jax.random.key(0), (batch, steps, features), jnp.float32)
  lengths = jnp.asarray(np.linspace(0, steps, batch).round().astype(np.int32))
  reference = birnn_jax.BiRNN(cell=cell, hidden_size=hidden, num_layers=2, impl="reference")
  params = reference.init(jax.random.key(1), x, lengths)["params"]
  weights = jax.random.normal(jax.random.key(2), (batch, steps, 2 * hidden))
  expected = outputs_and_grads(reference, params, x, lengths, weights)
  out = {}
  for impl in ("scan", "fused"):
    module = reference.clone(impl=impl, dtype=jnp.dtype(dtype))
    error = max_relative_error(outputs_and_grads(module, params, x, lengths, weights),
                               expected)
    out[impl] = dict(max_error=error, ok=bool(error < TOLERANCE[dtype]))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", type=int, default=0, help="1: a tiny shape")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  shape = (3, 5, 4, 4) if args.quick else (8, 16, 32, 64)
  results = dict(backend=jax.default_backend(), shape=shape,
                 matmul_precision=str(jax.config.jax_default_matmul_precision),
                 tolerance=TOLERANCE, checks={})
  for dtype in TOLERANCE:
    for cell in ("lstm", "gru"):
      results["checks"][f"{cell}_{dtype}"] = got = check(cell, shape, dtype)
      print(f"{cell} {dtype}: " + ", ".join(
          f"{impl} {r['max_error']:.1e} {'ok' if r['ok'] else 'FAIL'}"
          for impl, r in got.items()), flush=True)
  results["ok"] = all(r["ok"] for c in results["checks"].values() for r in c.values())
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  return 0 if results["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
