"""The summary table of benchmarks/device_check.sh, from the JSON its parts wrote.

  python benchmarks/device_summary.py --dir=benchmarks --device=gpu --status=STATUS_FILE \
      --out=benchmarks/device_check_summary.json
"""

import argparse
import json
import pathlib

# Issue #16's GPU targets: fused vs torch/cuDNN (training step), by B,T,D,H.
TORCH_TARGETS = {(64, 256, 512, 512): 1.5, (16, 1024, 256, 256): 1.5,
                 (256, 128, 512, 1024): 1.0}


def load(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def table(rows: list[tuple]) -> str:
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
  return "\n".join([line(rows[0]), line(["-" * w for w in widths])] +
                   [line(r) for r in rows[1:]])


def layer_rows(results: dict | None, dtype: str) -> list[tuple]:
  """(dtype, cell, shape, fused/flax/torch ms, fused vs flax, vs torch, target, met)."""
  if not results:
    return []
  by_key = {}
  for r in results["results"]:
    by_key.setdefault((r["cell"], (r["B"], r["T"], r["D"], r["H"])), {})[r["impl"]] = r
  out = []
  for (cell, shape), impls in by_key.items():
    fused = impls.get("fused", {})
    ms = lambda impl: f"{impls[impl]['median_ms']:.2f}" if impl in impls else "-"
    ratio = lambda key: f"{fused[key]:.2f}x" if key in fused else "-"
    target = TORCH_TARGETS.get(shape)
    met = "-" if target is None or "speedup_vs_torch" not in fused else (
        "yes" if fused["speedup_vs_torch"] >= target else "NO")
    out.append((dtype, cell, ",".join(map(str, shape)), ms("fused"), ms("flax"), ms("torch"),
                ratio("speedup_vs_flax"), ratio("speedup_vs_torch"),
                f">={target}x" if target else "-", met))
  return out


def train_rows(results: dict | None) -> list[tuple]:
  if not results:
    return []
  out = []
  for task, r in results["results"].items():
    if "error" in r:
      out.append((task, "failed", "", "", ""))
      continue
    vs = r.get("pos_tokens_per_s_vs_torch")
    out.append((task, f"{r['trainer_steps_per_s']:.1f}", f"{r['bare_steps_per_s']:.1f}",
                f"{r['overhead_pct']:.1f}%", f"{vs:.2f}x" if vs else "-"))
  return out


def seeds_rows(results: dict | None) -> list[tuple]:
  """bench_seeds: N members' step time against one member's (target on a GPU: 8 <= 1.5x)."""
  if not results:
    return []
  return [(task, n, f"{s['members_step_vs_one']:.2f}x",
           "yes" if s["members_step_vs_one"] <= 1.5 else "no")
          for task, r in results["tasks"].items() for n, s in r["summary"].items()]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", required=True)
  parser.add_argument("--device", default="gpu")
  parser.add_argument("--suffix", default="")
  parser.add_argument("--status", default=None)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  folder, dev, sfx = pathlib.Path(args.dir), args.device, args.suffix
  status = []
  if args.status and pathlib.Path(args.status).exists():
    status = [line.split(": ", 1) for line in
              pathlib.Path(args.status).read_text().splitlines() if ": " in line]
  parity = load(folder / f"parity_{dev}{sfx}.json")
  layers = (layer_rows(load(folder / f"results_{dev}{sfx}.json"), "float32") +
            layer_rows(load(folder / f"results_{dev}_bf16{sfx}.json"), "bfloat16"))
  training = train_rows(load(folder / f"results_train_{dev}{sfx}.json"))
  seeds = seeds_rows(load(folder / f"results_seeds_{dev}{sfx}.json"))
  print("\n=== device check summary")
  if status:
    print(table([("part", "status")] + [tuple(s) for s in status]))
  if parity:
    print(f"\nparity on {parity['backend']} (largest error / tolerance): " + "; ".join(
        f"{name} " + ", ".join(f"{impl} {r['max_error']:.1e}" for impl, r in c.items())
        for name, c in parity["checks"].items()) + f" -> {'ok' if parity['ok'] else 'FAIL'}")
  if layers:
    print("\n" + table([("dtype", "cell", "B,T,D,H", "fused ms", "flax ms", "torch ms",
                         "vs flax", "vs torch", "target", "met")] + layers))
  if training:
    print("\n" + table([("task", "trainer steps/s", "bare steps/s", "overhead",
                         "tokens/s vs torch")] + training))
  if seeds:
    print("\n" + table([("task", "members", "step vs 1 member", "<= 1.5x")] + seeds))
  summary = dict(status=dict(status), parity=parity, layers=layers, training=training,
                 seeds=seeds)
  pathlib.Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
