"""Masked sums and exact means (losses.py), and where numbers go (metrics.py): metrics.jsonl,
TensorBoard events, plots, console helpers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax.tasks import losses
from birnn_jax.training import metrics as metrics_lib

# --- losses: masked sums -------------------------------------------------------------------


def example(seed=0, batch=3, time=5, classes=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, time, classes)).astype(np.float32)
  labels = rng.integers(0, classes, size=(batch, time)).astype(np.int32)
  lengths = rng.integers(0, time + 1, size=batch)
  lengths[0] = time  # at least one full row and...
  lengths[-1] = 0    # ... one empty row
  mask = np.arange(time)[None, :] < lengths[:, None]
  return logits, labels, mask


def reference_sums(logits, labels, mask):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  correct = logits.argmax(-1) == labels
  return {"loss": float(nll[mask].sum()), "accuracy": float(correct[mask].sum()),
          "count": float(mask.sum())}


_sums = jax.jit(losses.token_classification_sums)


def host_sums(logits, labels, mask):
  sums = _sums(jnp.asarray(logits), jnp.asarray(labels),
                                          jnp.asarray(mask))
  return {k: float(v) for k, v in sums.items()}


def test_sums_match_a_numpy_reference():
  logits, labels, mask = example()
  got = host_sums(logits, labels, mask)
  want = reference_sums(logits, labels, mask)
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5), k


def test_masked_positions_change_nothing():
  logits, labels, mask = example(seed=1)
  base = host_sums(logits, labels, mask)
  rng = np.random.default_rng(7)
  other_logits = np.where(mask[..., None], logits,
                          1e4 * rng.normal(size=logits.shape)).astype(np.float32)
  other_labels = np.where(mask, labels, rng.integers(0, logits.shape[-1], labels.shape))
  assert host_sums(other_logits, other_labels.astype(np.int32), mask) == base
  # ... while the same change at a real position does change the loss.
  changed = logits.copy()
  changed[0, 0] += 5 * np.eye(logits.shape[-1])[labels[0, 0]]
  assert host_sums(changed, labels, mask)["loss"] != base["loss"]


def test_means_are_exact_across_uneven_batches():
  """Summing sums over batches of different sizes and fill, then dividing once, gives the
  per-token mean over the whole set; averaging per-batch means would not."""
  rng = np.random.default_rng(3)
  n, time, classes = 11, 6, 5
  logits = rng.normal(size=(n, time, classes)).astype(np.float32)
  labels = rng.integers(0, classes, size=(n, time)).astype(np.int32)
  lengths = rng.integers(1, time + 1, size=n)
  mask = np.arange(time)[None, :] < lengths[:, None]
  whole = losses.means(reference_sums(logits, labels, mask))

  totals, batch_means = {}, []
  for lo, hi in ((0, 1), (1, 5), (5, 8), (8, 11)):  # uneven batches, padded to 4 rows
    pad = 4 - (hi - lo)
    b_logits = np.concatenate([logits[lo:hi], np.zeros((pad, time, classes), np.float32)])
    b_labels = np.concatenate([labels[lo:hi], np.zeros((pad, time), np.int32)])
    b_mask = np.concatenate([mask[lo:hi], np.zeros((pad, time), bool)])
    sums = host_sums(b_logits, b_labels, b_mask)
    batch_means.append(losses.means(sums))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + v
  got = losses.means(totals)
  assert set(got) == {"loss", "accuracy"}
  for k in got:
    assert got[k] == pytest.approx(whole[k], rel=1e-5), k
  naive = np.mean([m["loss"] for m in batch_means])
  assert abs(naive - whole["loss"]) > 1e-3  # the test can tell the two apart


def test_means_of_nothing_is_zero_not_nan():
  assert losses.means({"loss": 0.0, "accuracy": 0.0, "count": 0.0}) == {
      "loss": 0.0, "accuracy": 0.0}


# --- metrics.py ----------------------------------------------------------------------------


def test_writer_rows_tensorboard_and_truncation(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path)
  writer.write(5, {"train_loss": np.float32(2.5), "train_accuracy": 0.25})
  writer.write(10, {"train_loss": 2.0, "eval_loss": 2.2})
  writer.write(15, {"train_loss": 1.5})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  assert rows == [{"step": 5, "train_loss": 2.5, "train_accuracy": 0.25},
                  {"step": 10, "train_loss": 2.0, "eval_loss": 2.2},
                  {"step": 15, "train_loss": 1.5}]
  assert metrics_lib.read_metrics(tmp_path / "metrics.jsonl") == rows
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0

  resumed = metrics_lib.MetricWriter(tmp_path)
  resumed.truncate_after(10)  # resumed from the step-10 checkpoint
  resumed.write(15, {"train_loss": 1.4})
  resumed.close()
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl")] == [5, 10, 15]
  assert metrics_lib.read_metrics(tmp_path / "metrics.jsonl")[-1]["train_loss"] == 1.4


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)], read back by TensorBoard's own event loader."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_are_readable(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path)
  for step in (1, 2, 3):
    writer.write(step, {"train_loss": 1.0 / step, "eval_accuracy": step / 4})
  writer.close()
  scalars = read_scalars(tmp_path / "tensorboard")
  assert scalars["train_loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
  assert scalars["eval_accuracy"] == [(1, 0.25), (2, 0.5), (3, 0.75)]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path, enabled=False)
  writer.write(1, {"train_loss": 1.0})
  writer.truncate_after(0)
  writer.close()
  assert list(tmp_path.iterdir()) == []


def test_read_metrics_of_a_missing_file(tmp_path):
  assert metrics_lib.read_metrics(tmp_path / "nope.jsonl") == []


def test_plot_curves_writes_pngs(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path)
  for step in range(1, 6):
    row = {"train_loss": 1.0 / step, "train_accuracy": step / 10}
    if step % 2 == 0:
      row.update(eval_loss=1.2 / step, eval_accuracy=step / 12)
    writer.write(step, row)
  writer.close()
  paths = metrics_lib.plot_curves(tmp_path)
  assert sorted(p.name for p in paths) == ["accuracy.png", "loss.png"]
  for p in paths:
    assert p.parent == tmp_path / "plots"
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_seconds_and_table():
  assert metrics_lib.format_seconds(3725.4) == "1:02:05"
  assert metrics_lib.format_seconds(float("nan")) == "?"
  assert metrics_lib.format_seconds(float("inf")) == "?"
  text = metrics_lib.table([("metric", "value"), ("loss", "1.0"), ("accuracy", "0.5")])
  assert text.splitlines() == ["metric    value", "--------  -----", "loss      1.0",
                               "accuracy  0.5"]


def test_progress_reports_rate_and_eta(caplog):
  progress = metrics_lib.Progress(first_step=0, num_steps=10)
  with caplog.at_level("INFO"):
    progress.report(5, {"train_loss": 1.23456})
  text = caplog.text
  assert "step 5/10" in text and "train_loss=1.235" in text and "steps/s" in text
