"""How long until a run starts training, and where the time goes: every experiment's `:smoke`
config and `--mode=predict` on a trained smoke run, cold and warm, each in a fresh process.

    python benchmarks/bench_startup.py                            # all, this tree
    python benchmarks/bench_startup.py --experiments=pos_ewt,ner_uner --out=/tmp/startup.json
    python benchmarks/bench_startup.py --tree=/tmp/old_checkout   # another checkout (before)
    python benchmarks/bench_startup.py table before.json after.json   # the README's table

For each experiment, in a scratch folder (nothing of the user's caches is read or written):

  train cold    `python launch.py --config=experiments/<x>.py:smoke`, empty caches
  train warm    the same command again with a fresh workdir (a new run, not a resume), the
                caches the cold run filled
  predict cold  `--mode=predict --text=...` on the cold run's workdir, empty caches
  predict warm  the same again

Caches are JAX's persistent compilation cache (`--compile_cache`) and the parsed-corpus
cache ($BIRNN_PARSED_CACHE_DIR); a tree whose launch.py has no `--compile_cache` flag (before
them) runs with neither, and its warm run is simply the second one. Each run is a fresh
process (`python benchmarks/bench_startup.py child ...`) that installs a few timers, then
runs launch.py as `python launch.py` would (runpy, `__main__`). It measures:

  total_s       wall time of the process, measured by the parent (spawn to exit)
  startup_s     spawn until Python, jax and birnn_jax.training are imported
  data_s        building the task (reading and parsing the corpus, vocabularies, examples),
                less any compile inside it
  compile_s     tracing, lowering and XLA compiling (or reading from the compilation cache),
                from jax.monitoring's events
  other_s       total - startup - data - compile: training and evaluation steps, checkpoints,
                plots, interpreter exit. compile_s adds up every thread's time, and the
                trainer compiles its steps (every variant's) on a thread of their own while
                the main one goes on, so compile_s may exceed the wall time it took and
                other_s may be negative: read first_step_s and total_s
  first_step_s  spawn until the first training step's outputs are ready (the harness waits
                for them, which training itself would do a few steps later)
  xla_compiles, cache_hits   programs XLA compiled / read from the persistent cache

Machine load (os.getloadavg) is recorded before each run: on a shared CPU other jobs slow
every number, so compare runs measured under similar load.
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

PREDICT_TEXT = {
    "synthetic_tagging": None,   # no predict mode
    "pos_ewt": "I saw her duck under the table.",
    "ner_uner": "Statsminister Poul Nyrup Rasmussen besøgte i går Aarhus Universitet .",
    "masked_time_machine": "i am ___ hungry",
    "lm_time_machine": "time traveller",
    "bilm_time_machine": "She struck a match to light the candle | I saw a light in the window",
}
EXPERIMENTS = tuple(PREDICT_TEXT)


# The child: one launch.py run with timers -----------------------------------------------------

def child(out: str, argv: list[str]) -> None:
  """Runs `python launch.py *argv` in this process with timers; writes them to `out`."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = {"trace_s": 0.0, "lower_s": 0.0, "backend_s": 0.0, "backend": 0, "cache_hits": 0,
           "data_s": 0.0, "first_step_at": None, "programs": {}}
  names = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "backend_s"}

  def on_duration(event, duration_secs, **kwargs):
    if event in names:
      stats[names[event]] += duration_secs
      if event.endswith("backend_compile_duration"):
        stats["backend"] += 1
        name = str(kwargs.get("fun_name", "?"))
        stats["programs"][name] = round(stats["programs"].get(name, 0.0) + duration_secs, 3)

  def on_event(event, **kwargs):
    del kwargs
    stats["cache_hits"] += event == "/jax/compilation_cache/cache_hits"

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  compile_seconds = lambda: stats["trace_s"] + stats["lower_s"] + stats["backend_s"]

  from birnn_jax import tasks  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import metrics  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import train  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  stats["imported_at"] = time.time()

  task_class = tasks.get_task_class
  timed_classes = {}

  def timed_task_class(name):
    cls = task_class(name)
    if cls not in timed_classes:
      def __init__(self, *args, **kwargs):
        start, compiled = time.time(), compile_seconds()
        cls.__init__(self, *args, **kwargs)
        stats["data_s"] += (time.time() - start) - (compile_seconds() - compiled)
      timed_classes[cls] = type(cls.__name__, (cls,), {"__init__": __init__,
                                                       "__module__": cls.__module__})
    return timed_classes[cls]

  tasks.get_task_class = timed_task_class
  add = metrics.MetricWindow.add

  def add_first(self, step, step_metrics, *args, **kwargs):
    if stats["first_step_at"] is None:
      jax.block_until_ready(step_metrics)
      stats["first_step_at"] = time.time()
    return add(self, step, step_metrics, *args, **kwargs)

  metrics.MetricWindow.add = add_first
  import runpy  # pylint: disable=g-import-not-at-top
  sys.argv = ["launch.py", *argv]
  status = 0
  try:
    runpy.run_path(str(pathlib.Path.cwd() / "launch.py"), run_name="__main__")
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  stats["compile_s"] = compile_seconds()
  stats["xla_compiles"] = stats["backend"] - stats["cache_hits"]
  stats["status"] = status
  pathlib.Path(out).write_text(json.dumps(stats))
  sys.exit(status)


# The parent: the scenarios ------------------------------------------------------------------

def supports_caches(tree: pathlib.Path) -> bool:
  return "compile_cache" in (tree / "launch.py").read_text()


def run_one(tree: pathlib.Path, args: list[str], caches: pathlib.Path | None,
            log: pathlib.Path) -> dict:
  """One fresh process of launch.py with `args` in `tree`; its timings."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(tree))
  # PYTHONDONTWRITEBYTECODE: this project's machines set it, and then every process compiles
  # the tree's sources anew (0.6 s); a user's checkout keeps Python's bytecode cache.
  for name in ("JAX_COMPILATION_CACHE_DIR", "BIRNN_PARSED_CACHE_DIR", "XLA_FLAGS",
               "PYTHONDONTWRITEBYTECODE"):
    env.pop(name, None)
  if caches is not None:
    env["BIRNN_PARSED_CACHE_DIR"] = str(caches / "parsed")
    args = [*args, f"--compile_cache={caches / 'xla'}"]
  out = log.with_suffix(".json")
  load = os.getloadavg()[0]
  start = time.time()
  with log.open("w") as f:
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "child",
                           str(out), *args], cwd=tree, env=env, stdout=f,
                          stderr=subprocess.STDOUT, check=False)
  total = time.time() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
  stats = json.loads(out.read_text())
  startup = stats["imported_at"] - start
  return {
      "total_s": round(total, 2),
      "first_step_s": (round(stats["first_step_at"] - start, 2)
                       if stats["first_step_at"] else None),
      "startup_s": round(startup, 2),
      "data_s": round(stats["data_s"], 2),
      "compile_s": round(stats["compile_s"], 2),
      "other_s": round(total - startup - stats["data_s"] - stats["compile_s"], 2),
      "xla_compiles": stats["xla_compiles"],
      "cache_hits": stats["cache_hits"],
      "load_before": round(load, 2),
      "program_s": stats["programs"],   # XLA compile (or cache read) seconds per program name
  }


def brief(run: dict) -> dict:
  return {k: v for k, v in run.items() if k != "program_s"}


def bench_experiment(tree: pathlib.Path, name: str, scratch: pathlib.Path) -> dict:
  """The four scenarios of one experiment (predict only where it has a predict mode)."""
  caches = supports_caches(tree)
  config = f"--config=experiments/{name}.py:smoke"
  out = {}
  train_caches = scratch / "caches_train" if caches else None
  for kind in ("cold", "warm"):
    workdir = scratch / f"run_{kind}"
    out[f"train_{kind}"] = run_one(tree, [config, f"--workdir={workdir}"], train_caches,
                                   scratch / f"train_{kind}.log")
    print(f"  {name} train {kind}: {brief(out[f'train_{kind}'])}", flush=True)
  text = PREDICT_TEXT[name]
  if text is not None:
    predict_caches = scratch / "caches_predict" if caches else None
    for kind in ("cold", "warm"):
      out[f"predict_{kind}"] = run_one(
          tree, [config, f"--workdir={scratch / 'run_cold'}", "--mode=predict",
                 f"--text={text}"], predict_caches, scratch / f"predict_{kind}.log")
      print(f"  {name} predict {kind}: {brief(out[f'predict_{kind}'])}", flush=True)
  return out


def table(before: dict, after: dict) -> str:
  """A markdown table of two results files (before and after), one row per run."""
  def cell(r, key):
    return "-" if r is None or r.get(key) is None else f"{r[key]:.1f}"
  rows = ["| experiment | run | first step (s) | total (s) | data / compile / other (s) | "
          "XLA compiles (cache reads) |", "|---|---|---|---|---|---|"]
  for name, runs in after["experiments"].items():
    old_runs = before["experiments"].get(name, {})
    for kind, new in runs.items():
      old = old_runs.get(kind)
      split = lambda r: "-" if r is None else (f"{r['data_s']:.1f} / {r['compile_s']:.1f} / "
                                              f"{r['other_s']:.1f}")
      count = lambda r: "-" if r is None else f"{r['xla_compiles']} ({r['cache_hits']})"
      rows.append(f"| {name} | {kind.replace('_', ' ')} | {cell(old, 'first_step_s')} → "
                  f"{cell(new, 'first_step_s')} | {cell(old, 'total_s')} → "
                  f"{cell(new, 'total_s')} | {split(old)} → {split(new)} | "
                  f"{count(old)} → {count(new)} |")
  return "\n".join(rows)


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3:])
    return
  if len(sys.argv) > 1 and sys.argv[1] == "table":
    before, after = (json.loads(pathlib.Path(f).read_text()) for f in sys.argv[2:4])
    print(table(before, after))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tree", default=str(ROOT), help="the checkout to measure")
  parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results_startup_cpu.json"))
  parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
  args = parser.parse_args()
  tree = pathlib.Path(args.tree).resolve()
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                          capture_output=True, text=True, check=False).stdout.strip()
  results = {"tree": str(tree), "commit": commit, "caches": supports_caches(tree),
             "python": platform.python_version(), "cpus": os.cpu_count(),
             "date": time.strftime("%Y-%m-%d %H:%M"), "experiments": {}}
  import jax  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  results["jax"] = jax.__version__
  results["ml_dtypes"] = ml_dtypes.__version__   # 0.7.0's import alone costs 1.1 s a process
  for name in args.experiments.split(","):
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"bench_startup_{name}_"))
    print(f"{name} ({scratch})", flush=True)
    try:
      results["experiments"][name] = bench_experiment(tree, name, scratch)
    finally:
      if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
