"""Seeds as an axis: N members in one program against N one-seed runs, one after another.

For POS and NER (the crf variant) at their default sizes, each measurement in a process of
its own (a fresh interpreter, as a user's run is):
  one_seed   seeds 0..7, each a one-seed run; "N one after another" is the sum of the first
             N of them (each pays its own start-up, data and compile);
  members    `train.num_seeds = N` (N = 2, 4, 8): one process, one compile for all members;
  folded     one member with the batch N times as large: what stacking the members into the
             batch would cost (vmap should cost no more).
Each process times its start-up (imports, data, model), the train step's compile (the
first batch's shape; batches of other lengths compile in a warm-up pass, timed apart), and
`--steps` steps on prepared batches; peak memory is the process's maximum resident set. Per epoch = compile + steps_per_epoch x the step time (+ start-up).

  python benchmarks/bench_seeds.py                # CPU, ~15 min on 2 cores
  python benchmarks/bench_seeds.py --device=gpu   # writes results_seeds_gpu.json
  python benchmarks/bench_seeds.py --quick        # smoke configs, N <= 2, a minute

Writes benchmarks/results_seeds_<device>.json and seeds_<device>.png; `--table` prints the
README's markdown table from a results file.
"""

import argparse
import json
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASKS = {"pos": ("pos_ewt.py", ""), "ner": ("ner_uner.py", "crf")}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--tasks", default="pos,ner")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
  parser.add_argument("--quick", action="store_true", help="smoke configs, N <= 2")
  parser.add_argument("--counts", default="2,4,8", help="the member counts N")
  parser.add_argument("--one_seed_runs", type=int, default=None,
                      help="one-seed processes measured (default: the largest N); fewer "
                           "(the GPU check: 1) leaves the sequential sums out")
  parser.add_argument("--out", default=None)
  parser.add_argument("--table", default=None, help="print the markdown table of this JSON")
  parser.add_argument("--padding_only", action="store_true",
                      help="add only the padding ratios (no timing) to the results file")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--members", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--fold", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def worker(args) -> dict:
  """One measured run (see the module docstring); prints and returns its JSON row."""
  start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from birnn_jax import tasks  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import config_lib, members  # pylint: disable=g-import-not-at-top
  experiment, variant = TASKS[args.task]
  config = config_lib.load_experiment(ROOT / "experiments" / experiment,
                                      "smoke" if args.quick else None)
  config = tasks.get_task_class(config.task).variants(config)[variant]
  config.seed = args.seed
  config.train.num_seeds = args.members
  config.train.batch_size *= args.fold
  with tempfile.TemporaryDirectory() as workdir:
    trainer = members.make_trainer(config, workdir)
    state = trainer.init_state()
    rng = trainer.step_rng()
    batches = [trainer.put(trainer.train_batch(s)) for s in range(args.steps + 1)]
    tokens = sum(int(np.sum(jax.device_get(b["mask"]))) for b in batches[1:])
    ready = time.perf_counter()
    trainer.train_step.lower(state, batches[0], rng).compile()
    compiled_at = time.perf_counter()
    # Batches of length buckets have several shapes: a first pass compiles every one of
    # them (counted apart, `other_compiles_s`), the second is timed.
    for batch in batches:
      state, _ = trainer.train_step(state, batch, rng)
    jax.block_until_ready(state)
    warm = time.perf_counter()
    for batch in batches[1:]:
      state, _ = trainer.train_step(state, batch, rng)
    jax.block_until_ready(state)
    steps_s = time.perf_counter() - warm
    shapes = len({str(jax.tree.map(np.shape, b)) for b in batches})
    row = {"task": args.task, "members": args.members, "fold": args.fold, "seed": args.seed,
           "startup_s": ready - start, "compile_s": compiled_at - ready,
           "other_compiles_s": max(0.0, warm - compiled_at - steps_s * (args.steps + 1)
                                   / args.steps), "batch_shapes": shapes,
           "step_s": steps_s / args.steps, "tokens_per_s": tokens / steps_s,
           "steps_per_epoch": trainer.schedule.steps_per_epoch,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "wall_s": time.perf_counter() - start}
  print(json.dumps(row), flush=True)
  return row


def measure(task: str, members: int = 1, fold: int = 1, seed: int = 0, quick: bool = False,
            steps: int = 10) -> dict:
  cmd = [sys.executable, __file__, "--worker", f"--task={task}", f"--members={members}",
         f"--fold={fold}", f"--seed={seed}", f"--steps={steps}"] + (["--quick"] if quick else [])
  started = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
  row = json.loads(out.stdout.strip().splitlines()[-1])
  row["process_s"] = time.perf_counter() - started   # what a user waits for, start-up included
  print(f"  {task} members={members} fold={fold} seed={seed}: step {row['step_s'] * 1e3:.0f} "
        f"ms, compile {row['compile_s']:.1f} s, process {row['process_s']:.1f} s", flush=True)
  return row


def padding_ratios(task: str, counts, quick: bool = False) -> dict:
  """{N: the time steps an N-member step runs (N x its longest member's batch, over one epoch)
  / the time steps of the N members' own batches}: what padding members to one shape costs,
  apart from anything vmap costs. The batchers only (`Task.host_batch`): no model, no timing."""
  from birnn_jax import tasks  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  experiment, variant = TASKS[task]
  config = config_lib.load_experiment(ROOT / "experiments" / experiment,
                                      "smoke" if quick else None)
  config = tasks.get_task_class(config.task).variants(config)[variant]
  members = []
  with tempfile.TemporaryDirectory() as workdir:
    for seed in range(max(counts)):
      member = config.copy_and_resolve_references()
      member.seed = seed
      members.append(tasks.get_task_class(config.task)(member, f"{workdir}/{seed}"))
    lengths = [[m.host_batch(step)["words"].shape[1] for m in members]
               for step in range(members[0].steps_per_epoch())]
  return {str(n): n * sum(max(row[:n]) for row in lengths) / sum(sum(row[:n]) for row in lengths)
          for n in counts}


def per_epoch(row: dict) -> float:
  """Seconds of one epoch's training in that process: its compiles (of the shapes its
  measured steps met) plus the steps."""
  return (row["compile_s"] + row["other_compiles_s"]
          + row["step_s"] * (row["steps_per_epoch"] or 1))


def summarize(one_seed: list[dict], members: dict[int, dict], folded: dict[int, dict]) -> dict:
  out = {}
  for n, row in members.items():
    sequential = one_seed[:n] if len(one_seed) >= n else None   # else: not measured
    total = lambda key: sum(key(r) for r in sequential) if sequential else None
    out[str(n)] = {
        "members_epoch_s": per_epoch(row) + row["startup_s"],
        "sequential_epoch_s": total(lambda r: per_epoch(r) + r["startup_s"]),
        "members_compile_s": row["compile_s"],
        "sequential_compile_s": total(lambda r: r["compile_s"]),
        "members_step_vs_one": row["step_s"] / one_seed[0]["step_s"],
        "per_member_tokens_per_s": row["tokens_per_s"] / n,
        "folded_tokens_per_s_per_member": folded[n]["tokens_per_s"] / n if n in folded else None,
        "members_peak_rss_mib": row["peak_rss_mib"],
        "one_seed_peak_rss_mib": one_seed[0]["peak_rss_mib"]}
    o = out[str(n)]
    o["members_vs_sequential"] = (o["members_epoch_s"] / o["sequential_epoch_s"]
                                  if sequential else None)
    if o["folded_tokens_per_s_per_member"]:
      o["vmap_vs_folding"] = o["per_member_tokens_per_s"] / o["folded_tokens_per_s_per_member"]
  return out


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(results["tasks"]), figsize=(5 * len(results["tasks"]), 3.5),
                           squeeze=False)
  for ax, (task, r) in zip(axes[0], results["tasks"].items()):
    ns = [int(n) for n in r["summary"]]
    ax.plot(ns, [r["summary"][str(n)]["members_epoch_s"] for n in ns], "o-",
            label="N members, one program")
    if all(r["summary"][str(n)]["sequential_epoch_s"] for n in ns):
      ax.plot(ns, [r["summary"][str(n)]["sequential_epoch_s"] for n in ns], "s--",
              label="N one-seed runs, one after another")
    ax.set(title=f"{task}: one epoch", xlabel="members N", ylabel="seconds", xticks=ns)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def table(results: dict) -> str:
  lines = ["| task | N | one program, s/epoch | N runs, s/epoch | ratio | step vs 1 member | "
           "per-member tokens/s vs folding | padding to one shape | compile s (1 program / N runs) "
           "| peak MiB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for task, r in results["tasks"].items():
    for n, s in r["summary"].items():
      fold = f"{s['vmap_vs_folding']:.2f}×" if s.get("vmap_vs_folding") else "–"
      num = lambda v, fmt: "–" if v is None else format(v, fmt)
      padding = num(r.get("padding", {}).get(n), ".2f") + ("×" if n in r.get("padding", {}) else "")
      lines.append(f"| {task} | {n} | {s['members_epoch_s']:.0f} | "
                   f"{num(s['sequential_epoch_s'], '.0f')} | "
                   f"{num(s['members_vs_sequential'], '.2f')} | "
                   f"{s['members_step_vs_one']:.2f}× | {fold} | {padding} | "
                   f"{s['members_compile_s']:.1f} / "
                   f"{num(s['sequential_compile_s'], '.1f')} | "
                   f"{s['members_peak_rss_mib']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return
  if args.table:
    print(table(json.loads(pathlib.Path(args.table).read_text())))
    return
  counts = (2,) if args.quick else tuple(int(n) for n in args.counts.split(","))
  out = pathlib.Path(args.out or ROOT / "benchmarks" / f"results_seeds_{args.device}.json")
  if args.padding_only:
    if not out.exists():
      sys.exit(f"--padding_only adds to a results file, and {out} does not exist: run "
               "the benchmark first (or name one with --out).")
    results = json.loads(out.read_text())
    for task in args.tasks.split(","):
      results["tasks"][task]["padding"] = padding_ratios(task, counts, args.quick)
      print(f"{task}: padding to one shape {results['tasks'][task]['padding']}", flush=True)
    # The results file is this mode's input too: the new one is written beside it and
    # moved over it, so a crash leaves the old one whole.
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    partial.replace(out)
    print("\n" + table(results) + f"\n\nWrote {out}.")
    return
  runs = max(counts) if args.one_seed_runs is None else args.one_seed_runs
  results = {"device": args.device, "quick": args.quick, "steps": args.steps,
             "machine": platform.platform(), "python": platform.python_version(), "tasks": {}}
  for task in args.tasks.split(","):
    print(f"{task}:", flush=True)
    one_seed = [measure(task, seed=s, quick=args.quick, steps=args.steps)
                for s in range(runs)]
    members = {n: measure(task, members=n, quick=args.quick, steps=args.steps) for n in counts}
    folded = {n: measure(task, fold=n, quick=args.quick, steps=args.steps) for n in counts}
    results["tasks"][task] = {"one_seed": one_seed, "members": list(members.values()),
                              "folded": list(folded.values()),
                              "summary": summarize(one_seed, members, folded),
                              "padding": padding_ratios(task, counts, args.quick)}
  import jax  # pylint: disable=g-import-not-at-top
  results["jax"] = jax.__version__
  out.write_text(json.dumps(results, indent=2) + "\n")
  plot(results, out.with_name(f"seeds_{args.device}.png"))
  print("\n" + table(results))
  print(f"\nWrote {out} and {out.with_name(f'seeds_{args.device}.png')}.")


if __name__ == "__main__":
  main()
