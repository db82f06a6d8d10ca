"""Where numbers go: workdir/metrics.jsonl, TensorBoard event files, plots, console.

Only process 0 writes (`enabled=False` elsewhere).
"""

import json
import math
import pathlib
import time
from typing import Callable

from absl import logging
import jax
import numpy as np

from birnn_jax.tasks import losses
from birnn_jax.tasks.common import table  # noqa: F401 (re-exported)


class MetricWriter:
  """One JSON object per logged step in metrics.jsonl, mirrored to TensorBoard scalars."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self.enabled = enabled
    self._tb = None
    if enabled:
      # TensorBoard's own event writer: no TensorFlow, and (unlike tensorboardX) no torch.
      from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
      self._tb = EventFileWriter(str(self.workdir / "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops rows logged after `step` (a resumed run re-logs them from its checkpoint)."""
    if not self.enabled or not self.path.exists():
      return
    rows = [r for r in read_metrics(self.path) if r["step"] <= step]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in metrics.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=summary_pb2.Summary(value=values)))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}") from None
      # A last line cut short by a kill or a full disk: the resumed run re-logs that step.
  return rows


def plot_curves(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """plots/<metric>.png with train_ and eval_ curves of each metric against step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  rows = read_metrics(workdir / "metrics.jsonl")
  names = sorted({k.split("_", 1)[1] for r in rows for k in r
                  if k.startswith(("train_", "eval_"))})
  out = []
  (workdir / "plots").mkdir(exist_ok=True)
  for name in names:
    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix in ("train_", "eval_"):
      points = [(r["step"], r[prefix + name]) for r in rows if prefix + name in r]
      if points:
        ax.plot(*zip(*points), marker="." if prefix == "eval_" else None,
                label=prefix.rstrip("_"))
    out.append(_save_curve(fig, ax, name, f"{workdir.name}: {name}", workdir))
  return out


def _save_curve(fig, ax, name: str, title: str, workdir: pathlib.Path) -> pathlib.Path:
  """Labels a metric's curves and writes them to workdir/plots/<name>.png."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ax.set_xlabel("step")
  ax.set_ylabel(name)
  ax.set_title(title)
  ax.legend()
  ax.grid(alpha=0.3)
  path = workdir / "plots" / f"{name}.png"
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_member_curves(workdir: str | pathlib.Path, folders: list[pathlib.Path]
                       ) -> list[pathlib.Path]:
  """plots/<metric>.png of a run of several members: for train_ and eval_ each metric's
  mean over the members (their metrics.jsonl in `folders`) against step, with a band from
  the smallest to the largest member at each step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  per_member = [read_metrics(pathlib.Path(f) / "metrics.jsonl") for f in folders]
  names = sorted({k.split("_", 1)[1] for rows in per_member for r in rows for k in r
                  if k.startswith(("train_", "eval_"))})
  out = []
  (workdir / "plots").mkdir(parents=True, exist_ok=True)
  for name in names:
    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix in ("train_", "eval_"):
      key = prefix + name
      by_step = [{r["step"]: r[key] for r in rows if key in r} for rows in per_member]
      steps = sorted(set.intersection(*(set(s) for s in by_step)))
      if not steps:
        continue
      values = np.array([[s[t] for t in steps] for s in by_step])   # [members, steps]
      line, = ax.plot(steps, values.mean(0), marker="." if prefix == "eval_" else None,
                      label=f"{prefix.rstrip('_')} (mean of {len(folders)})")
      ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    out.append(_save_curve(fig, ax, name, f"{workdir.name}: {name}, min to max over "
                           "members", workdir))
  return out


def plot_confusion(labels, counts, path: str | pathlib.Path, title: str = "") -> pathlib.Path:
  """A confusion-matrix PNG at `path`: rows the gold labels, columns the predicted ones,
  colour the share of the row, each cell's count written in it (empty rows and columns,
  labels that occur in neither, left out so the rest stays readable)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  counts = np.asarray(counts)
  keep = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
  counts, labels = counts[keep][:, keep], [l for l, k in zip(labels, keep) if k]
  shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = 2.0 + 0.5 * len(labels)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("gold")
  for i in range(len(labels)):
    for j in range(len(labels)):
      if counts[i, j]:
        ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the gold row")
  ax.set_title(title, fontsize=9)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


class MetricWindow:
  """The training metrics of the steps since the last log row.

  The train step returns its metric sums (plus `finite` flags) as device arrays; `add` only
  keeps them, so the loop never waits for a step to finish. `settle` fetches every pending
  step in one transfer (the trainer calls it before each log, eval and save) and adds each
  step's values to float64 host sums in step order, the same numbers as summing step by
  step. `row` turns the sums into a metrics row and empties the window. `saved` and
  `restore` carry a window across a checkpoint (the `_steps`/`_skipped` keys of its
  host_state entry), so a run resumed between two rows logs an uninterrupted run's rows.
  """

  FLAGS = ("finite", "params_finite")   # per-step booleans, not summed

  def __init__(self, sums: dict[str, float] | None = None, steps: float = 0.0,
               skipped: float = 0.0):
    self.sums = dict(sums or {})
    self.steps, self.skipped = steps, skipped   # counted steps, skipped (non-finite) steps
    self._pending: list[tuple[int, dict]] = []

  @classmethod
  def restore(cls, saved: dict[str, float]) -> "MetricWindow":
    saved = dict(saved)
    return cls(steps=saved.pop("_steps", 0.0), skipped=saved.pop("_skipped", 0.0),
               sums=saved)

  def saved(self) -> dict[str, float]:
    """The window as a JSON-able dict (`restore` reads it); settle first."""
    self._check_settled("saved")
    out = dict(self.sums)
    if self.steps:
      out["_steps"] = self.steps
    if self.skipped:
      out["_skipped"] = self.skipped
    return out

  def add(self, step: int, step_metrics: dict[str, jax.Array]) -> None:
    """Keeps step `step`'s metrics (device arrays) for the next `settle`."""
    self._pending.append((step, step_metrics))

  @property
  def num_pending(self) -> int:
    return len(self._pending)

  def settle(self, accept: Callable[[int, dict], bool]) -> None:
    """Fetches the pending steps' metrics and sums them in step order. `accept(step,
    host_metrics)` says whether a step counts (False: a skipped update); it may raise
    instead (nan_policy='stop'), and then no later step is added."""
    pending, self._pending = self._pending, []
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), step_metrics in zip(pending, fetched):
      self.absorb(step, step_metrics, accept)

  def absorb(self, step: int, step_metrics: dict, accept: Callable[[int, dict], bool]) -> None:
    """Adds one step's host metrics to the sums, unless `accept` refuses them (`settle`)."""
    if not accept(step, step_metrics):
      self.skipped += 1
      return
    for k, v in step_metrics.items():
      if k not in self.FLAGS:
        self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.steps += 1

  def row(self, derived_metrics: Callable[[dict], dict]) -> dict[str, float]:
    """`train_<metric>` means over the window's steps (`derived_metrics(means)`, a task's),
    `train_grad_norm` and `train_skipped_steps` (if any); then the window is empty."""
    self._check_settled("row")
    row = {}
    if self.steps:  # else nan_policy='skip' skipped every step since the last row
      sums = dict(self.sums)
      grad_norm = sums.pop("grad_norm", 0.0) / self.steps
      row = {f"train_{k}": v for k, v in derived_metrics(losses.means(sums)).items()}
      row["train_grad_norm"] = grad_norm
    if self.skipped:
      row["train_skipped_steps"] = self.skipped
    self.sums, self.steps, self.skipped = {}, 0.0, 0.0
    return row

  def _check_settled(self, what: str) -> None:
    if self._pending:
      raise RuntimeError(f"MetricWindow.{what}() with {len(self._pending)} steps not "
                         "settled: call settle() first.")


class Progress:
  """Console progress: step, steps/s, ETA and the latest metrics, every `every` steps."""

  def __init__(self, first_step: int, num_steps: int):
    self.first_step, self.num_steps = first_step, num_steps
    self.start = time.monotonic()

  def report(self, step: int, metrics: dict[str, float]) -> None:
    done = step - self.first_step
    elapsed = time.monotonic() - self.start
    rate = done / elapsed if elapsed > 0 else float("nan")
    eta = (self.num_steps - step) / rate if rate > 0 else float("nan")
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    logging.info("step %d/%d | %.1f steps/s | ETA %s | %s", step, self.num_steps, rate,
                 format_seconds(eta), shown)


def format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
