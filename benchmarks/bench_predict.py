"""Tagging throughput: the POS tagger loaded from a workdir against the same tagger in PyTorch.

Over UD EWT dev + test (4,078 sentences), three systems, each in a process of its own,
alternating, several rounds:
  tag      `birnn_jax.load(workdir).tag(sentences)`, what a user calls: host-side encoding,
           batching by length (power-of-two lengths), the character table and the jitted
           prediction, after one warm-up pass that compiles every shape (its time is the
           `compile_s` reported apart);
  jitted   the same jitted prediction function on the same batches, already made (the
           device part of `tag`);
  torch    `bench_train.torch_tagger` (word embeddings + character BiLSTM over each distinct
           form + the 2-layer BiLSTM + linear head) in eval mode under `torch.inference_mode`,
           argmax, on the same batches (dumped by a JAX process) as tensors.
tokens/s count real tokens; the table reports medians over rounds and tag / torch.

The tagger's weights do not change its speed, so by default the workdir is made here: the
default POS config's model, its EWT vocabularies and its initial parameters, checkpointed
(`--workdir` takes a trained run instead).

  python benchmarks/bench_predict.py                 # ~5 min on 2 CPU cores
  python benchmarks/bench_predict.py --quick         # the :smoke config, 200 sentences
Writes benchmarks/results_predict_<device>.json (--out).
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


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workdir", default=None, help="a trained POS run (default: made here)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--quick", action="store_true", help="smoke config, 200 sentences")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = its default)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def sentences(quick: bool) -> list[list[str]]:
  from birnn_jax.data import conllu_data  # pylint: disable=g-import-not-at-top
  ewt = conllu_data.load_ewt()
  out = [[w for w, _ in s] for s in ewt.dev + ewt.test]
  return out[:200] if quick else out


def make_workdir(args, workdir: pathlib.Path) -> None:
  """An untrained run of the default POS config: config.json, vocabularies, checkpoint."""
  from birnn_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import config_lib, train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py",
                                      "smoke" if args.quick else None)
  trainer = train.Trainer(config, workdir)
  train.write_json(workdir / "config.json", json.loads(config.to_json()))
  checkpoint.save(trainer.manager, 0, trainer.init_state())


def worker_tag(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import birnn_jax  # pylint: disable=g-import-not-at-top
  data = sentences(args.quick)
  model = birnn_jax.load(args.path)
  start = time.perf_counter()
  model.tag(data, args.batch_size)                      # compiles every shape
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  model.tag(data, args.batch_size)
  seconds = time.perf_counter() - start
  # The device part alone: the same batches, made beforehand.
  task, fn = model.task, model.task.prediction_fn()
  batches = [jax.device_put(task.model_inputs(b))
             for _, b in task.prediction_batches(data, args.batch_size)]
  start = time.perf_counter()
  outs = [fn(model.params, *b) for b in batches]
  jax.block_until_ready(outs)
  jitted = time.perf_counter() - start
  tokens = sum(len(s) for s in data)
  return dict(tag_tokens_per_s=tokens / seconds, jitted_tokens_per_s=tokens / jitted,
              warmup_s=compile_s, tag_s=seconds, tokens=tokens, sentences=len(data),
              compiled_shapes=len(task.compiled_shapes), jax=jax.__version__)


def worker_dump(args) -> dict:
  """The prediction batches (dense character table, as torch packs each form) and sizes."""
  import birnn_jax  # pylint: disable=g-import-not-at-top
  from birnn_jax.tasks import pos, wordchar  # pylint: disable=g-import-not-at-top
  data = sentences(args.quick)
  model = birnn_jax.load(args.path)
  task, m = model.task, model.config.model
  arrays = {}
  batches = list(task.prediction_batches(data, args.batch_size))
  for i, (_, b) in enumerate(batches):
    table = wordchar.char_table(b["chars"])
    arrays.update({f"{i}/words": b["words"], f"{i}/lengths": b["lengths"],
                   f"{i}/char_index": b["char_index"],
                   f"{i}/chars": table.reshape(len(b["words"]), -1, table.shape[-1])})
  meta = dict(num_words=len(task.word_vocab), num_chars=len(task.char_vocab),
              num_tags=len(pos.TAGS), embed_size=m.embed_size,
              char_embed_size=m.char_embed_size, char_hidden_size=m.char_hidden_size,
              hidden_size=m.hidden_size, num_layers=m.num_layers, dropout=m.dropout,
              word_dropout=m.word_dropout, embed_dropout=m.embed_dropout,
              output_dropout=m.output_dropout)
  np.savez(args.path + "/batches.npz", meta=json.dumps(meta), num_batches=len(batches),
           **arrays)
  return dict(batches=len(batches))


def worker_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT / "benchmarks"))
  from bench_train import torch_tagger  # pylint: disable=g-import-not-at-top
  if args.threads:
    torch.set_num_threads(args.threads)
  data = np.load(args.path + "/batches.npz")
  meta = json.loads(str(data["meta"]))
  device = "cuda" if args.device == "gpu" else "cpu"
  torch.manual_seed(0)
  model = torch_tagger(torch, meta).to(device).eval()
  batches = [{k: torch.from_numpy(data[f"{i}/{k}"]).to(device).long()
              for k in ("words", "chars", "char_index")} | {
                  "lengths": torch.from_numpy(data[f"{i}/lengths"])}
             for i in range(int(data["num_batches"]))]
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def run():
    outs = []
    for b in batches:
      real = b["lengths"] > 0   # padding rows: torch's packing needs lengths >= 1
      logits = model(b["words"][real], b["chars"], b["char_index"][real], b["lengths"][real])
      outs.append(logits.argmax(-1))
    sync()
    return outs

  with torch.inference_mode():
    run()                                               # allocator, oneDNN plans
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
  tokens = sum(int(b["lengths"].sum()) for b in batches)
  return dict(torch_tokens_per_s=tokens / seconds, torch_s=seconds, tokens=tokens,
              torch=torch.__version__, threads=torch.get_num_threads())


def run_worker(args, worker: str, path: str) -> dict:
  cmd = [sys.executable, __file__, f"--worker={worker}", f"--path={path}",
         f"--device={args.device}", f"--batch_size={args.batch_size}",
         f"--threads={args.threads}"] + (["--quick"] if args.quick else [])
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    sys.exit(f"worker {worker} failed:\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker = {"tag": worker_tag, "dump": worker_dump, "torch": worker_torch}[args.worker]
    print(json.dumps(worker(args)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    path = args.workdir
    if path is None:
      path = str(pathlib.Path(tmp) / "pos")
      print("[bench_predict] making an untrained POS run of the default config ...",
            flush=True)
      make_workdir(args, pathlib.Path(path))
    run_worker(args, "dump", path)
    rounds = []
    for r in range(args.rounds):
      row = {}
      for worker in ("tag", "torch"):
        row.update(run_worker(args, worker, path))
        print(f"[bench_predict] round {r + 1}/{args.rounds} {worker}: "
              f"{row.get(worker + '_tokens_per_s', 0):.0f} tokens/s", flush=True)
      rounds.append(row)
  median = lambda k: statistics.median(r[k] for r in rounds)
  summary = {k: median(k) for k in ("tag_tokens_per_s", "jitted_tokens_per_s",
                                    "torch_tokens_per_s", "warmup_s")}
  summary["tag_vs_torch"] = summary["tag_tokens_per_s"] / summary["torch_tokens_per_s"]
  summary["jitted_vs_torch"] = summary["jitted_tokens_per_s"] / summary["torch_tokens_per_s"]
  result = dict(summary=summary, rounds=rounds, quick=args.quick, batch_size=args.batch_size,
                env=dict(python=platform.python_version(), machine=platform.machine(),
                         cpus=os.cpu_count(), load_average=os.getloadavg()))
  out = pathlib.Path(args.out or ROOT / "benchmarks" / f"results_predict_{args.device}.json")
  out.write_text(json.dumps(result, indent=2) + "\n")
  print("\nsystem   tokens/s   vs torch")
  for name in ("tag", "jitted", "torch"):
    value = summary[f"{name}_tokens_per_s"]
    print(f"{name:<8} {value:>9.0f}   {value / summary['torch_tokens_per_s']:.2f}x")
  print(f"(warm-up pass, compiling {rounds[0]['compiled_shapes']} shapes: "
        f"{summary['warmup_s']:.1f} s; load average {result['env']['load_average'][0]:.1f})")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
