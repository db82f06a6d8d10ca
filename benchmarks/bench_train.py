"""Training-loop benchmark: the real trainer against its bare jitted step, and the POS
tagger against an equivalent PyTorch training loop.

For each task's default experiment (synthetic tagging, POS on UD EWT, NER on UNER when its
config exists), three systems, each in a process of its own, alternating, several rounds:
  trainer  `Trainer.train()` as a run uses it. The timed window runs from the metrics row of
           step W to the row of step W + N (a row is written after its step's metrics are
           fetched, so the device has finished that step); evaluation and checkpoints come
           only after the window (at the last step, W + N + 1), and every batch shape of
           the run is compiled before `train()` starts, so no compile falls in the window.
  bare     the same jitted train step (the Trainer's own) on the same batches, already on
           the device: N calls in a loop, then one block_until_ready.
  torch    (POS only) the same tagger in PyTorch: word embeddings + character BiLSTM (run
           once per distinct word form of a batch, as ours is) + a 2-layer BiLSTM over the
           sentence, the same dropouts and word dropout, Adam with global-norm clipping and
           the cosine schedule, on the same padded batches (dumped by a JAX process, so the
           torch process never imports JAX), already as tensors on the device.
steps/s are medians over rounds; tokens/s count real (unpadded) tokens.

  python benchmarks/bench_train.py                     # CPU, ~4 min on 2 cores
  python benchmarks/bench_train.py --device=gpu        # writes results_train_gpu.json
  python benchmarks/bench_train.py --quick             # smoke configs, seconds

Writes benchmarks/results_train_<device>.json (--out): per task `trainer_steps_per_s`,
`bare_steps_per_s`, `overhead_pct` = 100 * (1 - trainer / bare), and for POS
`pos_tokens_per_s_vs_torch` = the trainer's tokens/s / torch's.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# task -> (experiment file, the variant benchmarked: '' = the experiment's only model).
TASKS = {"synthetic": ("synthetic_tagging.py", "bidirectional"), "pos": ("pos_ewt.py", ""),
         "ner": ("ner_uner.py", "crf")}
# task -> (log interval L = warm-up steps W, timed steps N): W and N are multiples of L.
# POS logs every 98 steps by default; a shorter interval keeps the run short and only adds
# log rows (so, if anything, it understates the trainer).
WINDOWS = {"synthetic": (50, 500), "pos": (10, 40), "ner": (10, 40)}
QUICK_WINDOW = (2, 4)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="names the output file; torch runs on cuda for gpu")
  parser.add_argument("--tasks", default="synthetic,pos,ner",
                      help="any of synthetic, pos, ner (ner is skipped if its config is absent)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps N per run (a multiple of the log interval); "
                      "0 = each task's default")
  parser.add_argument("--quick", action="store_true",
                      help="the experiments' smoke configs, 4 timed steps, 1 round")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(),
                                                          "birnn_jax_bench_xla_cache"),
                      help="persistent XLA cache shared by the JAX processes (each round "
                      "after the first loads the compiled steps instead of compiling)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", choices=("trainer", "bare", "torch", "dump"), default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--window", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


# --------------------------------------------------------------------------- JAX workers


def bench_config(task: str, quick: bool, log_every: int, num_steps: int):
  """The task's default (or smoke) experiment config, as the benchmarked variant, with the
  run's length and intervals in steps: logs every `log_every`, evaluates and saves only at
  the last step."""
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  from birnn_jax import tasks  # pylint: disable=g-import-not-at-top
  path, variant = TASKS[task]
  config = config_lib.load_experiment(ROOT / "experiments" / path, "smoke" if quick else None)
  config = tasks.get_task_class(config.task).variants(config)[variant]
  t = config.train
  for key in ("num_epochs", "log_every_epochs", "eval_every_epochs", "checkpoint_every_epochs"):
    t[key] = 0
  t.num_steps, t.log_every = num_steps, log_every
  t.eval_every = t.checkpoint_every = num_steps
  return config


def warm_up(trainer, batches) -> None:
  """Compiles the train step for every distinct batch shape in `batches` (host batches)."""
  import jax  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import sharding  # pylint: disable=g-import-not-at-top
  seen, state, rng = set(), trainer.init_state(), jax.random.key(0)
  for batch in batches:
    shapes = (jax.tree.structure(batch), tuple(np.shape(v) for v in jax.tree.leaves(batch)))
    if shapes not in seen:
      seen.add(shapes)
      state, _ = trainer.train_step(state, sharding.put_batch(batch, trainer.mesh), rng)
  jax.block_until_ready(state)


def worker_trainer(args, config, workdir) -> dict:
  """`Trainer.train()`, stopped by a SIGTERM raised as the row of step W + N is written: the
  loop then saves (timed, as `stop_save_s`) and returns, with no final evaluation."""
  import signal  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  log_every, steps = (int(v) for v in args.window.split(","))
  end = log_every + steps
  trainer = train.Trainer(config, workdir)
  host = [trainer.task.train_batch(s) for s in range(end)]
  warm_up(trainer, host)
  stamps, saves = {}, []
  write, save = metrics_lib.MetricWriter.write, ckpt_lib.save

  def timed_write(self, step, metrics):
    write(self, step, metrics)
    stamps[step] = (time.perf_counter(), time.process_time())
    if step == end:
      signal.raise_signal(signal.SIGTERM)

  def timed_save(*a, **kw):
    start = time.perf_counter()
    out = save(*a, **kw)
    saves.append(time.perf_counter() - start)
    return out

  metrics_lib.MetricWriter.write, ckpt_lib.save = timed_write, timed_save
  try:
    result = trainer.train()
  finally:
    metrics_lib.MetricWriter.write, ckpt_lib.save = write, save
  # The signal lands after step W + N's stop check: the loop stops after the next step.
  assert result.get("stopped_at_step") in (end, end + 1), result
  seconds = stamps[end][0] - stamps[log_every][0]
  cpu_seconds = stamps[end][1] - stamps[log_every][1]
  tokens = sum(int(np.sum(b["lengths"])) for b in host[log_every:end])
  return dict(steps_per_s=steps / seconds, tokens_per_s=tokens / seconds, seconds=seconds,
              cpu_ms_per_step=1e3 * cpu_seconds / steps,
              stop_save_s=saves[-1] if saves else None)


def worker_bare(args, config, workdir) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import sharding  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  log_every, steps = (int(v) for v in args.window.split(","))
  trainer = train.Trainer(config, workdir)
  host = [trainer.task.train_batch(s) for s in range(log_every, log_every + steps)]
  warm_up(trainer, host)
  batches = jax.block_until_ready([sharding.put_batch(b, trainer.mesh) for b in host])
  state, rng = trainer.init_state(), jax.random.key(config.seed + 1)
  jax.block_until_ready(state)
  start, start_cpu = time.perf_counter(), time.process_time()
  for batch in batches:
    state, step_metrics = trainer.train_step(state, batch, rng)
  jax.block_until_ready((state, step_metrics))
  seconds = time.perf_counter() - start
  tokens = sum(int(np.sum(b["lengths"])) for b in host)
  return dict(steps_per_s=steps / seconds, tokens_per_s=tokens / seconds, seconds=seconds,
              cpu_ms_per_step=1e3 * (time.process_time() - start_cpu) / steps)


def worker_dump(args, config, workdir) -> dict:
  """Writes the window's batches and what the torch model needs to `args.path` (.npz)."""
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  from birnn_jax.tasks import wordchar  # pylint: disable=g-import-not-at-top
  log_every, steps = (int(v) for v in args.window.split(","))
  trainer = train.Trainer(config, workdir)
  task = trainer.task
  host = [task.train_batch(s) for s in range(log_every, log_every + steps)]
  m = config.model
  meta = dict(num_words=len(task.word_vocab), num_chars=len(task.char_vocab),
              num_tags=int(task.model().num_tags), embed_size=m.embed_size,
              char_embed_size=m.char_embed_size, char_hidden_size=m.char_hidden_size,
              hidden_size=m.hidden_size, num_layers=m.num_layers, dropout=m.dropout,
              word_dropout=m.word_dropout, embed_dropout=m.embed_dropout,
              output_dropout=m.output_dropout, learning_rate=config.optim.learning_rate,
              clip_norm=config.optim.clip_norm, num_steps=config.train.num_steps)
  # torch packs each form to its own length, so it gets the table whole, not its tiers.
  for b in host:
    table = wordchar.char_table(b["chars"])
    b["chars"] = table.reshape(len(b["words"]), -1, table.shape[-1])
  arrays = {f"{i}/{k}": v for i, b in enumerate(host) for k, v in b.items()}
  np.savez(args.path, meta=json.dumps(meta), num_batches=len(host), **arrays)
  return dict(batches=len(host))


# -------------------------------------------------------------------------- torch worker


def torch_tagger(torch, meta):
  """The POS tagger of `birnn_jax.tasks.wordchar.WordCharTagger` in PyTorch (same sizes, dropouts)."""
  nn = torch.nn

  class Tagger(nn.Module):
    """(words [B, T], chars [B, K, C], char_index [B, T], lengths [B]) -> logits."""

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(meta["num_words"], meta["embed_size"])
      self.char_embed = nn.Embedding(meta["num_chars"], meta["char_embed_size"])
      self.char_rnn = nn.LSTM(meta["char_embed_size"], meta["char_hidden_size"],
                              batch_first=True, bidirectional=True)
      features = meta["embed_size"] + 2 * meta["char_hidden_size"]
      self.rnn = nn.LSTM(features, meta["hidden_size"], num_layers=meta["num_layers"],
                         dropout=meta["dropout"], batch_first=True, bidirectional=True)
      self.head = nn.Linear(2 * meta["hidden_size"], meta["num_tags"])
      self.embed_dropout = nn.Dropout(meta["embed_dropout"])
      self.output_dropout = nn.Dropout(meta["output_dropout"])

    def forward(self, words, chars, char_index, lengths):
      pack = nn.utils.rnn.pack_padded_sequence
      if self.training and meta["word_dropout"]:
        drop = torch.rand(words.shape, device=words.device) < meta["word_dropout"]
        words = torch.where(drop & (words != 0), torch.ones_like(words), words)  # 1 = UNK
      flat = chars.reshape(-1, chars.shape[-1])
      char_lengths = (flat != 0).sum(-1)
      packed = pack(self.char_embed(flat), char_lengths.clamp(min=1).cpu(), batch_first=True,
                    enforce_sorted=False)
      _, (h_n, _) = self.char_rnn(packed)
      vectors = torch.cat([h_n[0], h_n[1]], -1) * (char_lengths > 0)[:, None]
      c = vectors[char_index.reshape(-1)].reshape(*words.shape, -1)
      x = self.embed_dropout(torch.cat([self.embed(words), c], -1))
      packed = pack(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
      h, _ = self.rnn(packed)
      h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True,
                                              total_length=words.shape[1])
      return self.head(self.output_dropout(h))

  return Tagger()


def worker_torch(args) -> dict:
  import math  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  data = np.load(args.path)
  meta = json.loads(str(data["meta"]))
  device = "cuda" if args.device == "gpu" else "cpu"
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = torch_tagger(torch, meta).to(device).train()
  opt = torch.optim.Adam(model.parameters(), lr=meta["learning_rate"])
  cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, meta["num_steps"]) / meta["num_steps"]))
  schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
  keys = ("words", "chars", "char_index", "lengths", "tags", "mask")
  batches = [{k: torch.from_numpy(data[f"{i}/{k}"]).to(device) for k in keys}
             for i in range(int(data["num_batches"]))]
  for b in batches:
    b["words"], b["chars"], b["char_index"], b["tags"] = (
        b[k].long() for k in ("words", "chars", "char_index", "tags"))
    b["lengths_cpu"] = b["lengths"].cpu()

  def step(b):
    opt.zero_grad(set_to_none=True)
    logits = model(b["words"], b["chars"], b["char_index"], b["lengths_cpu"])
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["tags"], reduction="none")
    mask = b["mask"].float()
    loss = (nll * mask).sum() / mask.sum().clamp(min=1)
    loss.backward()
    if meta["clip_norm"]:
      torch.nn.utils.clip_grad_norm_(model.parameters(), meta["clip_norm"])
    opt.step()
    schedule.step()
    return loss

  for b in batches[:max(2, len(batches) // 10)]:  # allocator and oneDNN/cuDNN plans
    step(b)
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None
  sync()
  start, start_cpu = time.perf_counter(), time.process_time()
  for b in batches:
    loss = step(b)
  float(loss)
  sync()
  seconds = time.perf_counter() - start
  tokens = sum(int(b["lengths_cpu"].sum()) for b in batches)
  return dict(steps_per_s=len(batches) / seconds, tokens_per_s=tokens / seconds,
              seconds=seconds, cpu_ms_per_step=1e3 * (time.process_time() - start_cpu)
              / len(batches), torch=torch.__version__, threads=torch.get_num_threads())


def worker_main(args) -> None:
  if args.worker == "torch":
    result = worker_torch(args)
  else:
    log_every, steps = (int(v) for v in args.window.split(","))
    config = bench_config(args.task, args.quick, log_every, log_every + steps + 1)
    with tempfile.TemporaryDirectory() as workdir:
      fn = {"trainer": worker_trainer, "bare": worker_bare, "dump": worker_dump}[args.worker]
      result = fn(args, config, pathlib.Path(workdir) / "run")
    import jax  # pylint: disable=g-import-not-at-top
    result.update(jax=jax.__version__, backend=jax.default_backend())
  print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- the driver


def run_worker(args, worker: str, task: str, window, path: str, env,
               threads: int = 0) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={worker}", f"--task={task}",
         f"--window={window[0]},{window[1]}", f"--device={args.device}", f"--path={path}",
         f"--threads={threads}"]
  if args.quick:
    cmd.append("--quick")
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{worker} on {task} failed (rc={proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  result = json.loads(lines[-1][len("RESULT "):])
  result["process_s"] = time.perf_counter() - start
  return result


def torch_available() -> bool:
  return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                        check=False).returncode == 0


def summarize(task: str, runs: dict) -> dict:
  """Medians over rounds, the overhead and (POS) the ratios to torch's faster setting."""
  med = {system: {k: statistics.median(r[k] for r in rs)
                  for k in ("steps_per_s", "tokens_per_s", "cpu_ms_per_step")}
         for system, rs in runs.items()}
  out = {"trainer_steps_per_s": med["trainer"]["steps_per_s"],
         "bare_steps_per_s": med["bare"]["steps_per_s"],
         "trainer_tokens_per_s": med["trainer"]["tokens_per_s"],
         "bare_tokens_per_s": med["bare"]["tokens_per_s"]}
  out["overhead_pct"] = 100 * (1 - out["trainer_steps_per_s"] / out["bare_steps_per_s"])
  # CPU time of all the process's threads per step: on a CPU shared with other work, the
  # host's extra work shows here even when the wall-clock numbers drown in noise.
  out.update(trainer_cpu_ms_per_step=med["trainer"]["cpu_ms_per_step"],
             bare_cpu_ms_per_step=med["bare"]["cpu_ms_per_step"])
  out["cpu_overhead_pct"] = 100 * (out["trainer_cpu_ms_per_step"]
                                   / out["bare_cpu_ms_per_step"] - 1)
  torch_runs = {s: m for s, m in med.items() if s.startswith("torch")}
  if torch_runs:
    best = max(torch_runs, key=lambda s: torch_runs[s]["tokens_per_s"])
    out["torch_setting"] = best
    out.update({f"{s}_tokens_per_s": m["tokens_per_s"] for s, m in torch_runs.items()})
    out["torch_tokens_per_s"] = torch_runs[best]["tokens_per_s"]
    if task == "pos":
      out["pos_tokens_per_s_vs_torch"] = out["trainer_tokens_per_s"] / out["torch_tokens_per_s"]
      out["pos_bare_tokens_per_s_vs_torch"] = (out["bare_tokens_per_s"]
                                               / out["torch_tokens_per_s"])
  out["rounds"] = runs
  return out


def print_table(results: dict) -> None:
  header = (f"{'task':10} {'trainer st/s':>12} {'bare st/s':>10} {'overhead':>9} "
            f"{'cpu ovh':>8} {'trainer tok/s':>13} {'torch tok/s':>11} {'vs torch':>9}")
  print("\n" + header + "\n" + "-" * len(header))
  for task, r in results.items():
    if "error" in r:
      print(f"{task:10} failed: {r['error'].splitlines()[0][:80]}")
      continue
    torch_tok = f"{r['torch_tokens_per_s']:.0f}" if "torch_tokens_per_s" in r else "-"
    vs = f"{r['pos_tokens_per_s_vs_torch']:.2f}x" if "pos_tokens_per_s_vs_torch" in r else "-"
    print(f"{task:10} {r['trainer_steps_per_s']:>12.2f} {r['bare_steps_per_s']:>10.2f} "
          f"{r['overhead_pct']:>8.1f}% {r['cpu_overhead_pct']:>7.1f}% "
          f"{r['trainer_tokens_per_s']:>13.0f} {torch_tok:>11} {vs:>9}")
  print("(overhead = 1 - trainer/bare steps/s; cpu ovh = trainer/bare CPU time per step - 1; "
        "vs torch = trainer tokens/s / torch's, at torch's faster thread setting)")


def bench_task(args, task: str, env, tmp: pathlib.Path, use_torch: bool) -> dict:
  """Every system of `task`, each round in a fresh process, in alternating order."""
  window = QUICK_WINDOW if args.quick else WINDOWS[task]
  if args.steps:
    window = (window[0], args.steps)
  systems = {"trainer": ("trainer", 0), "bare": ("bare", 0)}
  path = str(tmp / f"{task}_batches.npz")
  if task == "pos" and use_torch:
    run_worker(args, "dump", task, window, path, env)
    systems["torch"] = ("torch", 0)
    if args.device == "cpu":  # on a busy CPU torch's two threads can wait on each other
      systems["torch_1thread"] = ("torch", 1)
  runs, failed = {s: [] for s in systems}, {}
  for r in range(1 if args.quick else args.rounds):
    order = list(systems) if r % 2 == 0 else list(systems)[::-1]  # drift cancels
    for system in [s for s in order if s not in failed]:
      worker, threads = systems[system]
      try:
        res = run_worker(args, worker, task, window, path, env, threads)
      except RuntimeError as e:
        if worker != "torch":
          raise
        print(f"  {task} {system} failed, left out: {str(e).splitlines()[0]}", flush=True)
        failed[system] = str(e)
        del runs[system]
        continue
      print(f"  {task} round {r} {system}: {res['steps_per_s']:.2f} steps/s, "
            f"{res['tokens_per_s']:.0f} tokens/s", flush=True)
      runs[system].append(res)
  out = summarize(task, runs)
  out["log_every"], out["timed_steps"] = window
  if failed:
    out["failed"] = failed
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    return worker_main(args)
  names = [t for t in args.tasks.split(",") if t]
  names = [t for t in names if (ROOT / "experiments" / TASKS[t][0]).exists()]
  use_torch = not args.no_torch and torch_available()
  if not use_torch:
    print("torch not used (--no_torch, or not importable): no torch column", flush=True)
  out_path = args.out or str(ROOT / "benchmarks" / f"results_train_{args.device}.json")
  env_info = dict(python=platform.python_version(), cpu_count=os.cpu_count(),
                  load_average_at_start=os.getloadavg(), argv=sys.argv, rounds=args.rounds,
                  quick=args.quick)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=args.cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  results, start = {}, time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for task in names:
      print(f"{task}:", flush=True)
      try:
        results[task] = bench_task(args, task, env, pathlib.Path(tmp), use_torch)
      except RuntimeError as e:
        print(f"  {task} skipped: {e}", flush=True)
        results[task] = {"error": str(e)}
  env_info.update(load_average_at_end=os.getloadavg(),
                  wall_s=round(time.perf_counter() - start, 1))
  print_table(results)
  pathlib.Path(out_path).write_text(json.dumps(dict(env=env_info, results=results),
                                               indent=1) + "\n")
  print(f"wrote {out_path} ({env_info['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
