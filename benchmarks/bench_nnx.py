"""Training-step benchmark of the NNX front end against flax NNX's and our Linen BiRNN.

A step is loss + gradient + Adam update of a one-layer bidirectional LSTM over x [B, T, D]
(loss: mean of the squared outputs), jitted. Systems:
  nnx           this project's `birnn_jax.nnx.BiRNN(impl=...)`, an `nnx.jit` train step
                with `nnx.Optimizer`, called through `nnx.cached_partial(step, model,
                optimizer)` (flax's documented way to skip re-walking the module graph at
                every call in a training loop);
  nnx_jit       the same step called plainly, `step(model, optimizer, x)`: nnx.jit then
                splits and merges the model and optimizer in Python at every call;
  linen         this project's Linen `birnn_jax.BiRNN(impl=...)`, `jax.jit` + optax, with
                the NNX model's parameters (`birnn_jax.nnx.to_linen`), so its losses must
                equal the nnx rows' (checked);
  flax_nnx      flax's `nnx.Bidirectional(nnx.RNN(nnx.OptimizedLSTMCell), nnx.RNN(...))`,
                the same step as `nnx` (cached_partial);
  flax_nnx_jit  the same, called plainly (not run by default).

Every system runs in a process of its own (this script with --worker): on a 2-core CPU the
threads of two runtimes in one process steal each other's cores. The processes are started
one after the other (so compile times are clean), then take turns under the parent's
control, one at a time, while the others wait idle on a pipe: in each of --rounds rounds
every system runs --reps timed steps, in an order that rotates from round to round. So all
systems see the same machine load, even when other jobs share the CPU, and the speedups are
computed within each round (their median and range are reported) as well as from the
systems' median step times.

  python benchmarks/bench_nnx.py                                  # CPU shapes
  python benchmarks/bench_nnx.py --shapes=8x256x64x128 --rounds=10 --reps=2

Writes JSON (--out, default benchmarks/results_nnx_<device>.json) and prints a markdown table.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# The last CPU shape is tiny on purpose: its step is almost all per-call framework overhead.
SHAPES = {"cpu": ((8, 256, 64, 128), (64, 128, 256, 256), (4, 16, 8, 8)),
          "gpu": ((64, 256, 512, 512), (16, 1024, 256, 256))}
SYSTEMS = ("nnx", "nnx_jit", "linen", "flax_nnx")
# The speedups reported, (ours, base): each NNX calling style against Linen and against
# flax NNX called the same way.
PAIRS = (("nnx", "linen"), ("nnx", "flax_nnx"), ("nnx_jit", "linen"),
         ("nnx_jit", "flax_nnx_jit"))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="shape set (JAX picks its default backend in the workers)")
  parser.add_argument("--shapes", default=None, help="comma-separated BxTxDxH")
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--impl", default="fused", help="impl of our two systems")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--reps", type=int, default=3, help="timed steps per system and round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


# ------------------------------------------------------------------------- the worker


def build(system: str, shape, impl: str):
  """(step() -> loss, sync()) for one system; step runs one training step."""
  # Imported here: the parent process only spawns workers and never starts a runtime.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, _ROOT)
  from birnn_jax import nnx as bnnx  # pylint: disable=g-import-not-at-top

  batch, steps, features, hidden = shape
  x = jax.random.normal(jax.random.key(0), (batch, steps, features), jnp.float32)
  tx = optax.adam(1e-3)

  def loss_of(y):
    return jnp.mean(jnp.square(y.astype(jnp.float32)))

  if system.startswith("flax_nnx"):
    rngs = nnx.Rngs(0)
    model = nnx.Bidirectional(nnx.RNN(nnx.OptimizedLSTMCell(features, hidden, rngs=rngs)),
                              nnx.RNN(nnx.OptimizedLSTMCell(features, hidden, rngs=rngs)))
    forward = lambda m, x: m(x)
  else:
    model = bnnx.BiRNN(features, hidden, cell="lstm", impl=impl, rngs=nnx.Rngs(0))
    forward = lambda m, x: m(x)[0]
  if system != "linen":
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x):
      loss, grads = nnx.value_and_grad(lambda m: loss_of(forward(m, x)))(model)
      optimizer.update(model, grads)
      return loss

    if system.endswith("_jit"):
      step = lambda: train_step(model, optimizer, x)
    else:
      cached = nnx.cached_partial(train_step, model, optimizer)
      step = lambda: cached(x)
    return step, lambda: jax.block_until_ready(nnx.state(model))

  module, variables = bnnx.to_linen(model)
  state = {"params": variables["params"], "opt": tx.init(variables["params"])}

  @jax.jit
  def linen_step(params, opt_state, x):
    loss, grads = jax.value_and_grad(
        lambda p: loss_of(module.apply({"params": p}, x)[0]))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def step():
    state["params"], state["opt"], loss = linen_step(state["params"], state["opt"], x)
    return loss

  return step, lambda: jax.block_until_ready(state)


def worker(args):
  """Builds and compiles one system, then runs --reps timed steps per 'step' line on stdin."""
  shape = tuple(int(v) for v in args.shape.split("x"))
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  step, sync = build(args.worker, shape, args.impl)
  first_loss = float(step())  # compile + the first step
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    jax.block_until_ready(step())
  sync()
  reply(READY=dict(system=args.worker, shape=shape, first_loss=first_loss,
                   compile_s=compile_s, backend=jax.default_backend()))
  for line in sys.stdin:
    if line.strip() != "step":
      break
    times, cpu = [], []
    for _ in range(args.reps):
      start, start_cpu = time.perf_counter(), time.process_time()
      # The loss is an output of the same executable as the updated state, so it is
      # ready only when the whole step is done.
      jax.block_until_ready(step())
      times.append((time.perf_counter() - start) * 1e3)
      cpu.append((time.process_time() - start_cpu) * 1e3)
    sync()
    reply(TIMES=dict(times_ms=times, cpu_ms=cpu))


def reply(**message):
  (key, value), = message.items()
  print(f"{key} {json.dumps(value)}", flush=True)


# ------------------------------------------------------------------------- the parent


class Worker:
  """One system's process; `turn()` runs its next --reps timed steps."""

  def __init__(self, system, shape, args):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={system}",
           f"--shape={'x'.join(map(str, shape))}", f"--impl={args.impl}",
           f"--reps={args.reps}", f"--warmup={args.warmup}"]
    self.system = system
    # stderr to a file: a pipe nobody reads could fill up and block the worker.
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.stderr, text=True)
    self.info = self._read("READY")

  def _read(self, key):
    for line in self.proc.stdout:
      if line.startswith(key + " "):
        return json.loads(line[len(key) + 1:])
    self.proc.wait()
    self.stderr.seek(0)
    raise SystemExit(f"worker {self.system} failed ({self.proc.returncode}):\n"
                     f"{self.stderr.read()}")

  def turn(self) -> dict:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    return self._read("TIMES")

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()
    self.stderr.close()


def versions() -> dict:
  """Library versions, read in a child process so this one starts no runtime."""
  code = ("import json, jax, flax, optax; print(json.dumps(dict(jax=jax.__version__, "
          "flax=flax.__version__, optax=optax.__version__, backend=jax.default_backend(), "
          "devices=[str(d) for d in jax.devices()])))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return
  shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
            if args.shapes else list(SHAPES[args.device]))
  systems = args.systems.split(",")
  out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      f"results_nnx_{args.device}.json")
  env = dict(python=platform.python_version(), **versions(), cpu_count=os.cpu_count(),
             load_average_at_start=os.getloadavg(), impl=args.impl, rounds=args.rounds,
             reps=args.reps, warmup=args.warmup, argv=sys.argv)
  print(json.dumps(env), flush=True)

  rows = []
  for shape in shapes:
    workers = {}
    for system in systems:  # One at a time, so each compiles on a machine of its own.
      workers[system] = Worker(system, shape, args)
      print(f"B,T,D,H={shape} {system:12} ready "
            f"(compile {workers[system].info['compile_s']:.1f} s)", flush=True)
    runs = {s: [] for s in systems}
    loads = []
    for r in range(args.rounds):
      order = systems[r % len(systems):] + systems[:r % len(systems)]
      loads.append(os.getloadavg()[0])
      for system in order:
        res = workers[system].turn()
        res["median_ms"] = statistics.median(res["times_ms"])
        runs[system].append(res)
      print(f"B,T,D,H={shape} round {r:2d} (load {loads[-1]:4.1f}): " + ", ".join(
          f"{s} {runs[s][-1]['median_ms']:.1f}" for s in systems) + " ms", flush=True)
    for w in workers.values():
      w.close()
    ours = [workers[s].info["first_loss"] for s in ("nnx", "nnx_jit", "linen") if s in workers]
    if ours and max(ours) - min(ours) > 1e-5 * max(abs(min(ours)), 1e-6):
      raise SystemExit(f"nnx and linen disagree on the first loss: {ours}")
    row = dict(B=shape[0], T=shape[1], D=shape[2], H=shape[3], load_average_1m=loads,
               systems={})
    for system, results in runs.items():
      medians = [res["median_ms"] for res in results]
      row["systems"][system] = dict(
          median_ms=statistics.median(medians), round_medians_ms=medians,
          min_ms=min(min(res["times_ms"]) for res in results),
          median_cpu_ms=statistics.median(c for res in results for c in res["cpu_ms"]),
          compile_s=workers[system].info["compile_s"],
          first_loss=workers[system].info["first_loss"],
          times_ms=[res["times_ms"] for res in results])
    for ours, base in PAIRS:
      if ours in runs and base in runs:
        per_round = [b["median_ms"] / a["median_ms"] for a, b in zip(runs[ours], runs[base])]
        row[f"{ours}_speedup_vs_{base}"] = dict(
            of_medians=row["systems"][base]["median_ms"] / row["systems"][ours]["median_ms"],
            # The fastest step of each: the least disturbed by other jobs on the machine.
            of_fastest_steps=row["systems"][base]["min_ms"] / row["systems"][ours]["min_ms"],
            # CPU time (all threads of the process) per step: the work itself, which
            # other jobs stretch far less than the wall time.
            of_cpu=row["systems"][base]["median_cpu_ms"] / row["systems"][ours]["median_cpu_ms"],
            median_of_rounds=statistics.median(per_round), per_round=per_round,
            min=min(per_round), max=max(per_round))
    rows.append(row)

  env["load_average_at_end"] = os.getloadavg()
  with open(out_path, "w") as f:
    json.dump(dict(env=env, results=rows), f, indent=1)
  print(f"wrote {out_path}\n")
  print_table(rows, systems)


def print_table(rows, systems):
  """The results as a markdown table (the one in benchmarks/README.md)."""
  pairs = [key for key in rows[0] if "_speedup_vs_" in key] if rows else []
  print("| B×T×D×H | " + " | ".join(f"{s} ms wall / CPU" for s in systems) + " | "
        + " | ".join(k.replace("_speedup_vs_", " vs ") for k in pairs) + " |")
  print("|---" * (1 + len(systems) + len(pairs)) + "|")
  for row in rows:
    times = [f"{row['systems'][s]['median_ms']:.1f} / {row['systems'][s]['median_cpu_ms']:.1f}"
             for s in systems]
    ratios = [f"{row[k]['median_of_rounds']:.2f}× / {row[k]['of_cpu']:.2f}×" for k in pairs]
    print(f"| {row['B']}×{row['T']}×{row['D']}×{row['H']} | " + " | ".join(times) + " | "
          + " | ".join(ratios) + " |")
  print("(ms: wall / CPU time per step: the median over rounds of each round's median wall "
        "time, and the median CPU time of all the process's threads; A vs X: the median over "
        "rounds of X's wall ms / A's in that round, and X's CPU ms / A's; above 1 = A faster)")


if __name__ == "__main__":
  main()
