"""`--mode=report` over a sweep's folder (`sweep`): one table of every setting, the one
chosen on dev, and only its test figure as the result.

Each setting's figures are its run's results.json: `dev_<m>` and `test_<m>` for the
experiment's best metric `m` (`train.best_metric` without `eval_`), the mean ± sd over its
seeds for a run of several members, and for an experiment of several variants those of
its first one (e.g. NER's crf). A setting still running, stopped, failed or not started
is listed with that status and no figures; only finished settings are chosen from.
Writes report.md, report.csv, report.json and plots/sweep_<key>.png (dev against each
swept key) into the folder.
"""

import csv
import io
import json
import pathlib
import time

from birnn_jax.training import sweep as sweep_lib
from birnn_jax.training import workdir_lock


def status(workdir: pathlib.Path) -> tuple[str, str]:
  """(status, detail) of one setting's run: finished | failed | running | stopped |
  not started."""
  if (workdir / "results.json").is_file():
    return "finished", ""
  if (workdir / sweep_lib.FAILED).is_file():
    return "failed", json.loads((workdir / sweep_lib.FAILED).read_text())["error"]
  lock = workdir / workdir_lock.LOCK_FILE
  holder = workdir_lock.holder(workdir)
  if holder is not None and workdir_lock.gone_because(
      holder, lock.stat().st_mtime, workdir_lock.STALE_AFTER_S, time.time()) is None:
    return "running", workdir_lock.describe(holder)
  if any(workdir.glob("**/checkpoints/[0-9]*")):
    return "stopped", "resumable: re-run the sweep"
  return "not started", ""


def _figures(results: dict, metric: str) -> dict:
  """{'dev': (mean, sd), 'test': (mean, sd)} of `metric` in a run's results.json."""
  if f"test_{metric}" not in results and "statistics" not in results:
    first = next((v for v in results.values() if isinstance(v, dict) and
                  f"test_{metric}" in v), None)   # an experiment of variants: the first
    results = first or results
  out = {}
  for split in ("dev", "test"):
    key = f"{split}_{metric}"
    stats = results.get("statistics", {}).get(key)
    if stats is not None:
      out[split] = (stats["mean"], stats["sd"])
    elif key in results:
      out[split] = (results[key], None)
  return out


def gather(root) -> dict:
  """The report's contents: every setting with its status and figures, and the choice."""
  root = pathlib.Path(root)
  entries = sweep_lib.read_manifest(root)
  train = entries[0]["config"]["train"]
  metric = train["best_metric"].removeprefix("eval_")
  better = max if train["best_mode"] == "max" else min
  keys = [k for k in dict.fromkeys(k for e in entries for k in e["overrides"])   # the swept
          if len({json.dumps(e["overrides"].get(k)) for e in entries}) > 1] or [
              k for e in entries[:1] for k in e["overrides"]]
  rows = []
  for e in entries:
    workdir = root / e["name"]
    state, detail = status(workdir)
    figures = {}
    if state == "finished":
      figures = _figures(json.loads((workdir / "results.json").read_text()), metric)
    rows.append({"setting": e["name"], "overrides": e["overrides"], "status": state,
                 "detail": detail, "workdir": str(workdir),
                 "dev": figures.get("dev"), "test": figures.get("test")})
  # On dev; a task without a dev split (the synthetic one) is chosen on test, and says so.
  split = "dev" if any(r["dev"] is not None for r in rows) else "test"
  scored = [r for r in rows if r[split] is not None and r[split][0] is not None]
  chosen = better(scored, key=lambda r: r[split][0]) if scored else None
  return {"metric": metric, "mode": train["best_mode"], "keys": keys, "settings": rows,
          "chosen_on": split, "chosen": chosen and chosen["setting"],
          "result": chosen and {"setting": chosen["setting"], f"dev_{metric}": chosen["dev"],
                                f"test_{metric}": chosen["test"]},
          "counts": {s: sum(r["status"] == s for r in rows)
                     for s in ("finished", "running", "stopped", "failed", "not started")}}


def _cell(figure) -> str:
  if figure is None or figure[0] is None:
    return "–"
  mean, sd = figure
  return f"{mean:.4f}" if sd is None else f"{mean:.4f} ± {sd:.4f}"


def markdown(report: dict) -> str:
  """The report as a markdown table and a result line."""
  m, keys = report["metric"], report["keys"]
  head = ["setting", *(k.removeprefix("config.") for k in keys), "status", f"dev {m}",
          f"test {m}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in report["settings"]:
    mark = f" **(chosen on {report['chosen_on']})**" if r["setting"] == report["chosen"] else ""
    state = r["status"] + (f": {r['detail']}" if r["detail"] else "")
    lines.append("| " + " | ".join([r["setting"] + mark,
                                    *(str(r["overrides"].get(k, "")) for k in keys),
                                    state.replace("|", "/"), _cell(r["dev"]),
                                    _cell(r["test"])]) + " |")
  counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
  if report["result"] and report["chosen_on"] == "dev":
    res = report["result"]
    lines.append(f"\nChosen on dev {m} ({report['mode']}): {res['setting']}, dev "
                 f"{_cell(res[f'dev_{m}'])}; its test {m}, the sweep's result: "
                 f"{_cell(res[f'test_{m}'])}. Settings: {counts}.")
  elif report["result"]:
    res = report["result"]
    lines.append(f"\nThis task has no dev split: chosen on test {m} ({report['mode']}), "
                 f"{res['setting']} {_cell(res[f'test_{m}'])}, which is therefore no "
                 f"held-out result. Settings: {counts}.")
  else:
    lines.append(f"\nNo setting has finished yet. Settings: {counts}.")
  return "\n".join(lines) + "\n"


def _csv(report: dict) -> str:
  m, keys = report["metric"], report["keys"]
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["setting", *keys, "status", "detail", f"dev_{m}", f"dev_{m}_sd",
                   f"test_{m}", f"test_{m}_sd", "chosen"])
  for r in report["settings"]:
    dev, test = r["dev"] or (None, None), r["test"] or (None, None)
    writer.writerow([r["setting"], *(r["overrides"].get(k, "") for k in keys), r["status"],
                     r["detail"], *dev, *test, r["setting"] == report["chosen"]])
  return out.getvalue()


def _plots(report: dict, folder: pathlib.Path) -> list[str]:
  """plots/sweep_<key>.png: the split chosen on (dev) against each swept key (finished
  settings)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  split = report["chosen_on"]
  done = [r for r in report["settings"] if r[split] is not None and r[split][0] is not None]
  paths = []
  for key in report["keys"]:
    if not done:
      break
    values = sorted({json.dumps(r["overrides"].get(key)) for r in done})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [values.index(json.dumps(r["overrides"].get(key))) for r in done]
    ax.errorbar(x, [r[split][0] for r in done], yerr=[r[split][1] or 0 for r in done],
                fmt="o", capsize=3)
    ax.set_xticks(range(len(values)), [json.loads(v) for v in values])
    ax.set_xlabel(key.removeprefix("config."))
    ax.set_ylabel(f"{split} {report['metric']}")
    ax.set_title(f"sweep: {split} {report['metric']} by {key.rsplit('.', 1)[-1]}")
    fig.tight_layout()
    path = folder / "plots" / f"sweep_{key.rsplit('.', 1)[-1]}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(str(path))
  return paths


def report(root) -> dict:
  """Gathers the sweep in `root` and writes report.md / .csv / .json and its plots there;
  prints the markdown and returns the JSON's contents."""
  root = pathlib.Path(root)
  out = gather(root)
  out["plots"] = _plots(out, root)
  text = markdown(out)
  for name, body in (("report.md", text), ("report.csv", _csv(out)),
                     ("report.json", json.dumps(out, indent=1) + "\n")):
    tmp = root / f".{name}.tmp"
    tmp.write_text(body)
    tmp.replace(root / name)
  print(text)
  return out
