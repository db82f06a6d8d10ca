"""Where numbers go: workdir/metrics.jsonl, TensorBoard event files, plots, console.

Only process 0 writes (`enabled=False` elsewhere).
"""

import json
import math
import pathlib
import time

from absl import logging


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
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.set_title(f"{workdir.name}: {name}")
    ax.legend()
    ax.grid(alpha=0.3)
    path = workdir / "plots" / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append(path)
  return out


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


def table(rows: list[tuple[str, ...]]) -> str:
  """A plain text table; the first row is the header."""
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
  return "\n".join([line(rows[0]), line(["-" * w for w in widths])] +
                   [line(r) for r in rows[1:]])
