"""Training-step benchmark of one-layer bidirectional LSTM/GRU layers.

A step is forward + backward, jitted: the gradient of sum(outputs) w.r.t. the parameters
and the input x [B, T, D]. Implementations:
  scan, fused      this project's `BiRNN(impl=...)`;
  flax             `nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell | nn.GRUCell))`;
  torch            `torch.nn.LSTM/GRU(bidirectional=True, batch_first=True)` when torch
                   imports (oneDNN on CPU, cuDNN on GPU).
Before timing, ours are checked against torch with copied weights (`birnn_jax.from_torch`)
on a small slice (outputs and input gradient), and the run stops if they disagree.

Each implementation is timed in a process of its own (one per implementation and round,
the order alternating between rounds; the table shows medians over rounds): in one process
torch's and XLA's idle worker threads compete for the CPU cores (a torch step measured
50.9 ms beside JAX and 35-39 ms alone), and on a GPU the two libraries' memory pools would.

  python benchmarks/bench_rnn.py                       # CPU shapes
  python benchmarks/bench_rnn.py --device=gpu          # GPU shapes
  python benchmarks/bench_rnn.py --shapes=8x256x64x128,64x128x256x256 --cells=lstm

Prints a table and writes JSON (--out, default benchmarks/results_<device>.json).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import birnn_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from birnn_jax import linen  # pylint: disable=g-import-not-at-top,wrong-import-position
from birnn_jax.core import fused  # pylint: disable=g-import-not-at-top,wrong-import-position
import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {
    "cpu": ((64, 128, 256, 256), (8, 256, 64, 128)),
    "gpu": ((64, 256, 512, 512), (16, 1024, 256, 256), (256, 128, 512, 1024)),
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                      help="shape set and torch device (default: JAX's backend)")
  parser.add_argument("--shapes", default=None,
                      help="comma-separated BxTxDxH, e.g. 64x128x256x256 (default: the "
                      "device's set)")
  parser.add_argument("--cells", default="lstm,gru")
  parser.add_argument("--impls", default="scan,fused,flax,torch",
                      help="any of scan, fused, fused_remat, fused_autodiff, flax, torch")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--unroll", type=int, default=1, help="scan unroll of ours")
  parser.add_argument("--reps", type=int, default=10, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3,
                      help="processes per implementation (the table shows the median)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--skip_check", action="store_true",
                      help="skip the numerical agreement check against torch")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def try_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return torch
  except ImportError:
    return None


# ------------------------------------------------------------------------------ JAX side


def jax_module(impl: str, cell: str, hidden: int, dtype, unroll: int):
  """(module, apply(variables, x) -> outputs) for one of the JAX implementations."""
  if impl == "flax":
    make = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[cell]
    module = nn.Bidirectional(nn.RNN(make(hidden, dtype=dtype)),
                              nn.RNN(make(hidden, dtype=dtype)))
    return module, lambda v, x: module.apply(v, x)
  # Variants of the fused implementation, for comparison only: fused_remat (activations
  # recomputed in the backward pass) and fused_autodiff (JAX differentiates the fused scan
  # instead of the custom VJP).
  module = birnn_jax.BiRNN(cell=cell, hidden_size=hidden, impl=impl.split("_")[0],
                           unroll=unroll, dtype=dtype, remat=impl == "fused_remat")
  if impl != "fused_autodiff":
    return module, lambda v, x: module.apply(v, x)[0]
  forward, backward = map(linen.pure_cell, module.make_cells())

  def apply_autodiff(variables, x):
    p = variables["params"]["layer_0"]
    lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
    y_f, y_b, _, _ = fused.fused_bidirectional(
        forward, backward, p["forward"], p["backward"], x.astype(dtype), lengths,
        forward.zero_carry(x[:, 0].shape), backward.zero_carry(x[:, 0].shape),
        unroll=unroll, custom_vjp=False)
    return jnp.concatenate([y_f, y_b], axis=-1).astype(dtype)
  return module, apply_autodiff


def bench_jax(impl, cell, shape, dtype, args):
  batch, steps, features, hidden = shape
  module, apply = jax_module(impl, cell, hidden, dtype, args.unroll)
  x = jax.random.normal(jax.random.key(0), (batch, steps, features), jnp.float32).astype(dtype)
  variables = jax.jit(module.init)(jax.random.key(1), x)

  def loss(variables, x):
    return jnp.sum(apply(variables, x).astype(jnp.float32))

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  start = time.perf_counter()
  compiled = step.lower(variables, x).compile()
  compile_s = time.perf_counter() - start
  memory = None
  try:
    stats = compiled.memory_analysis()
    memory = int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
                 + stats.output_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass

  def run():
    jax.block_until_ready(compiled(variables, x))

  times = time_it(run, args)
  if jax.default_backend() == "gpu":
    peak = jax.devices()[0].memory_stats().get("peak_bytes_in_use")
    memory = {"compiled_bytes": memory, "device_peak_bytes_cumulative": peak}
  return dict(compile_s=compile_s, times_ms=times, memory=memory)


# ---------------------------------------------------------------------------- torch side


def torch_rnn(torch, cell, features, hidden, device, dtype):
  make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
  rnn = make(features, hidden, batch_first=True, bidirectional=True).to(device)
  return rnn.to(getattr(torch, dtype))


def bench_torch(torch, cell, shape, dtype, args):
  batch, steps, features, hidden = shape
  device = "cuda" if args.device == "gpu" else "cpu"
  torch.manual_seed(0)
  rnn = torch_rnn(torch, cell, features, hidden, device, dtype)
  x = torch.randn(batch, steps, features, device=device, dtype=getattr(torch, dtype),
                  requires_grad=True)

  def run():
    rnn.zero_grad(set_to_none=True)
    x.grad = None
    out, _ = rnn(x)
    out.float().sum().backward()
    if device == "cuda":
      torch.cuda.synchronize()

  start = time.perf_counter()
  run()  # The first step (oneDNN/cuDNN plan selection) stands in for compile time.
  compile_s = time.perf_counter() - start
  memory = "n/a"
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = time_it(run, args)
  if device == "cuda":
    memory = int(torch.cuda.max_memory_allocated())
  return dict(compile_s=compile_s, times_ms=times, memory=memory)


def check_against_torch(torch, cell, impls, shape, args):
  """Ours (with torch's weights) vs torch on a small slice: outputs and dx, float32."""
  batch, steps, features, hidden = shape
  batch, steps = min(batch, 4), min(steps, 16)
  torch.manual_seed(0)
  rnn = torch_rnn(torch, cell, features, hidden, "cpu", "float32")
  x_np = np.random.default_rng(0).standard_normal((batch, steps, features), np.float32)
  x_t = torch.from_numpy(x_np).requires_grad_(True)
  out_t, _ = rnn(x_t)
  weights_t = torch.from_numpy(
      np.random.default_rng(1).standard_normal(out_t.shape, np.float32))
  (out_t * weights_t).sum().backward()
  report = {}
  for impl in impls:
    module, variables = birnn_jax.from_torch(rnn, impl=impl)

    def loss(x, module=module, variables=variables):
      out = module.apply(variables, x)[0]
      return jnp.sum(out * weights_t.numpy()), out

    (_, out), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x_np))
    err_out = float(np.max(np.abs(np.asarray(out) - out_t.detach().numpy())))
    err_dx = float(np.max(np.abs(np.asarray(dx) - x_t.grad.numpy())))
    report[impl] = dict(max_abs_err_outputs=err_out, max_abs_err_dx=err_dx)
    print(f"  check {cell} {impl} vs torch: outputs {err_out:.2e}, dx {err_dx:.2e}",
          flush=True)
    if not (err_out < 1e-4 and err_dx < 1e-4):
      raise SystemExit(f"{impl} disagrees with torch ({cell}): {report[impl]}")
  return report


# ------------------------------------------------------------------------------- common


def time_it(run, args) -> list[float]:
  """Wall-clock ms of each timed step; the process CPU ms go to `time_it.cpu_ms`."""
  for _ in range(args.warmup):
    run()
  times, cpu = [], []
  for _ in range(args.reps):
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    times.append((time.perf_counter() - start) * 1e3)
    cpu.append((time.process_time() - start_cpu) * 1e3)
  time_it.cpu_ms = cpu
  return times


def fmt_bytes(memory) -> str:
  if isinstance(memory, dict):
    memory = memory.get("device_peak_bytes_cumulative") or memory.get("compiled_bytes")
  if not isinstance(memory, int):
    return "n/a"
  return f"{memory / 2**20:.1f}MiB"


def measure(impl, cell, shape, args, torch) -> dict:
  """One row's timings in this process."""
  if impl == "torch":
    res = bench_torch(torch, cell, shape, args.dtype, args)
  else:
    res = bench_jax(impl, cell, shape, jnp.dtype(args.dtype), args)
  res["median_ms"] = statistics.median(res["times_ms"])
  res["median_cpu_ms"] = statistics.median(time_it.cpu_ms)  # All threads' CPU time.
  return res


def worker_main(args, shapes, cells) -> None:
  """--worker=<impl>: every (shape, cell) row of one implementation ('check': the numerical
  check of ours against torch), printed as one RESULT line of JSON."""
  if args.worker == "check":
    # Full float32 matmuls (a GPU's default may be TF32): the check's tolerance is 1e-4.
    jax.config.update("jax_default_matmul_precision", "highest")
    torch = try_torch()
    ours = [i for i in args.impls.split(",") if i not in ("flax", "torch")]
    out = {cell: check_against_torch(torch, cell, ours, shapes[0], args) for cell in cells}
  else:
    torch = try_torch() if args.worker == "torch" else None
    out = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
               rows=[dict(cell=cell, shape=shape, **measure(args.worker, cell, shape, args,
                                                            torch))
                     for shape in shapes for cell in cells])
  print("RESULT " + json.dumps(out), flush=True)


def run_worker(args, worker: str, shapes) -> object:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={worker}",
         f"--device={args.device}", "--shapes=" + ",".join("x".join(map(str, s)) for s in shapes),
         f"--cells={args.cells}", f"--impls={args.impls}", f"--dtype={args.dtype}",
         f"--unroll={args.unroll}", f"--reps={args.reps}", f"--warmup={args.warmup}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  for line in proc.stdout.splitlines():
    if line.startswith("  check"):
      print(line, flush=True)
  if proc.returncode or not lines:
    raise SystemExit(f"{worker} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def default_device() -> str:
  """JAX's backend, asked of a child process: initialising a GPU backend here would hold
  memory that the timed processes need."""
  out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                       capture_output=True, text=True, check=False).stdout.strip()
  return "gpu" if out.endswith("gpu") or out == "cuda" else "cpu"


def print_table(rows) -> None:
  header = (f"{'cell':5} {'B':>4} {'T':>5} {'D':>4} {'H':>5} {'impl':15} {'ms/step':>9} "
            f"{'cpu ms':>9} {'tokens/s':>10} {'compile s':>9} {'memory':>9} {'vs flax':>8} "
            f"{'vs torch':>8}")
  print("\n" + header + "\n" + "-" * len(header))
  for r in rows:
    vs = [f"{r[k]:.2f}x" if k in r else "-" for k in ("speedup_vs_flax", "speedup_vs_torch")]
    print(f"{r['cell']:5} {r['B']:>4} {r['T']:>5} {r['D']:>4} {r['H']:>5} {r['impl']:15} "
          f"{r['median_ms']:>9.1f} {r['median_cpu_ms']:>9.1f} {r['tokens_per_s']:>10.0f} "
          f"{r['compile_s']:>9.2f} {fmt_bytes(r['memory']):>9} {vs[0]:>8} {vs[1]:>8}")
  print("(vs X = X's ms/step / this row's ms/step: above 1 means this row is faster; "
        "ms/step = median over rounds of each process's median; cpu ms = CPU time of all "
        "threads per step)")


def combine(per_round: list[dict[str, list]], shapes, cells, impls) -> list[dict]:
  """Rows with medians over rounds (and each round's median) and the speedups."""
  rows = []
  for shape in shapes:
    for cell in cells:
      results = {}
      for impl in impls:
        got = [next(r for r in rnd[impl]["rows"]
                    if r["cell"] == cell and tuple(r["shape"]) == shape) for rnd in per_round]
        res = dict(got[0], median_ms=statistics.median(g["median_ms"] for g in got),
                   median_cpu_ms=statistics.median(g["median_cpu_ms"] for g in got),
                   round_median_ms=[g["median_ms"] for g in got])
        res.pop("shape")
        res["tokens_per_s"] = shape[0] * shape[1] / (res["median_ms"] / 1e3)
        results[impl] = res
      for impl, res in results.items():
        for base in ("flax", "torch"):
          if base in results and impl != base:
            res[f"speedup_vs_{base}"] = results[base]["median_ms"] / res["median_ms"]
        rows.append(dict(B=shape[0], T=shape[1], D=shape[2], H=shape[3], impl=impl, **res))
  return rows


def main(argv=None):
  args = parse_args(argv)
  args.device = args.device or default_device()
  if args.shapes:
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
  else:
    shapes = list(SHAPES[args.device])
  cells = args.cells.split(",")
  if args.worker:
    return worker_main(args, shapes, cells)
  impls = args.impls.split(",")
  torch = try_torch() if "torch" in impls else None
  if "torch" in impls and torch is None:
    print("torch not importable: skipping it", flush=True)
    impls.remove("torch")
  out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      f"results_{args.device}.json")
  env = dict(python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
             torch=torch.__version__ if torch else None,
             torch_threads=torch.get_num_threads() if torch else None,
             cpu_count=os.cpu_count(), load_average_at_start=os.getloadavg(),
             dtype=args.dtype, reps=args.reps, rounds=args.rounds,
             unroll=args.unroll, argv=sys.argv, one_process_per_impl_and_round=True)
  print(json.dumps(env), flush=True)
  checks = {}
  if torch is not None and not args.skip_check and any(i not in ("flax", "torch")
                                                       for i in impls):
    checks = run_worker(args, "check", shapes)
  per_round = []
  for r in range(args.rounds):
    order = impls if r % 2 == 0 else impls[::-1]  # alternate, so drift cancels
    per_round.append({})
    for impl in [i for i in order if i in impls]:
      try:
        per_round[-1][impl] = got = run_worker(args, impl, shapes)
      except SystemExit as e:
        if impl != "torch":
          raise
        print(f"torch failed, left out: {str(e).splitlines()[0]}", flush=True)
        impls.remove("torch")
        env["torch_error"] = str(e)[-2000:]
        continue
      env.setdefault("backend", got["backend"])
      env.setdefault("devices", got["devices"])
      print(f"round {r} {impl}: " + ", ".join(
          f"{x['cell']} {'x'.join(map(str, x['shape']))} {x['median_ms']:.1f} ms"
          for x in got["rows"]), flush=True)
  rows = combine(per_round, shapes, cells, impls)
  print_table(rows)
  env["load_average_at_end"] = os.getloadavg()
  with open(out_path, "w") as f:
    json.dump(dict(env=env, checks=checks, results=rows), f, indent=1)
  print(f"wrote {out_path}", flush=True)


if __name__ == "__main__":
  main()
