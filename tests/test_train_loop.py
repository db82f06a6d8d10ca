"""The training loop's moving parts: batches prefetched on a thread, per-step metrics kept
on the device until a log/eval/save step, background checkpoint writes, the best-metric
check before the first step, and the one-shot device check script (on CPU, --quick)."""

import errno
import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import config_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import prefetch
from birnn_jax.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- Prefetcher ----------------------------------------------------------------------------

def test_prefetcher_makes_each_step_once_in_order_on_another_thread():
  calls, threads = [], set()

  def make(step):
    calls.append(step)
    threads.add(threading.get_ident())
    return step * 10

  with prefetch.Prefetcher(make, lambda batch: batch + 1, 3, 8, depth=2) as feed:
    got = [feed.get(step) for step in range(3, 8)]
  assert got == [31, 41, 51, 61, 71]
  assert calls == [3, 4, 5, 6, 7]   # nothing past the end
  assert threading.get_ident() not in threads


def test_prefetcher_raises_a_batch_error_at_its_own_step():
  def make(step):
    if step == 2:
      raise ValueError("train.conllu:7: bad line")
    return step

  with prefetch.Prefetcher(make, lambda batch: batch, 0, 5) as feed:
    assert [feed.get(0), feed.get(1)] == [0, 1]
    with pytest.raises(ValueError, match="train.conllu:7"):
      feed.get(2)


def test_prefetcher_stops_when_left_and_refuses_steps_out_of_order():
  calls = []
  with prefetch.Prefetcher(lambda s: calls.append(s) or s, lambda b: b, 0, 10**6,
                           depth=2) as feed:
    feed.get(0)
    with pytest.raises(RuntimeError, match="in order"):
      feed.get(5)
  made = len(calls)
  time.sleep(0.2)
  assert len(calls) == made <= 2 + 2 + 1   # taken, queued (depth) and one in hand


def test_prefetcher_overlaps_making_batches_with_the_consumer():
  def make(step):
    time.sleep(0.05)
    return step

  start = time.perf_counter()
  with prefetch.Prefetcher(make, lambda b: b, 0, 10) as feed:
    for step in range(10):
      feed.get(step)
      time.sleep(0.05)    # the "device step"
  # In turns it would take 10 * (0.05 + 0.05) = 1.0 s; overlapped about 0.55 s.
  assert time.perf_counter() - start < 0.85


# --- MetricWindow --------------------------------------------------------------------------

def device_metrics(loss, count, grad_norm, finite=True):
  return {"loss": jnp.float32(loss), "count": jnp.float32(count),
          "grad_norm": jnp.float32(grad_norm), "finite": jnp.bool_(finite),
          "params_finite": jnp.bool_(finite)}


def test_window_sums_in_float64_in_step_order_and_skips_what_is_rejected():
  window = metrics_lib.MetricWindow()
  values = [(2.5, 10.0, 1.0), (np.nan, 7.0, np.nan), (1.25, 6.0, 3.0)]
  for step, (loss, count, norm) in enumerate(values, start=1):
    window.add(step, device_metrics(loss, count, norm, finite=np.isfinite(loss)))
  assert window.num_pending == 3 and window.steps == 0   # nothing fetched yet
  seen = []
  window.settle(lambda step, m: seen.append(step) or bool(m["finite"]))
  assert seen == [1, 2, 3] and window.num_pending == 0
  assert window.sums == {"loss": 3.75, "count": 16.0, "grad_norm": 4.0}
  assert (window.steps, window.skipped) == (2.0, 1.0)
  saved = window.saved()
  assert saved == {"loss": 3.75, "count": 16.0, "grad_norm": 4.0, "_steps": 2.0,
                   "_skipped": 1.0}   # the host_state format older checkpoints hold
  again = metrics_lib.MetricWindow.restore(saved)
  assert again.saved() == saved
  row = again.row(lambda means: {**means, "perplexity": float(np.exp(means["loss"]))})
  assert row == pytest.approx({"train_loss": 3.75 / 16, "train_perplexity": np.exp(3.75 / 16),
                               "train_grad_norm": 2.0, "train_skipped_steps": 1.0})
  assert again.saved() == {} and again.row(dict) == {}


def test_window_settle_stops_at_a_step_that_raises():
  window = metrics_lib.MetricWindow()
  for step in (1, 2, 3):
    window.add(step, device_metrics(1.0, 1.0, 1.0, finite=step != 2))

  def accept(step, m):
    if not m["finite"]:
      raise FloatingPointError(f"step {step}")
    return True

  with pytest.raises(FloatingPointError, match="step 2"):
    window.settle(accept)
  assert window.steps == 1.0   # step 3 was never added


def test_window_refuses_a_row_or_save_before_settling():
  window = metrics_lib.MetricWindow()
  window.add(1, device_metrics(1.0, 1.0, 1.0))
  with pytest.raises(RuntimeError, match="settle"):
    window.row(dict)
  with pytest.raises(RuntimeError, match="settle"):
    window.saved()


# --- background checkpoint writes ----------------------------------------------------------

def train_cfg(**kw):
  t = config_lib.base_config().train
  for k, v in kw.items():
    t[k] = v
  return t


def test_background_save_keeps_the_state_it_was_given(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg(keep_checkpoints=5))
  step_fn = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((256, 256))}
  for step in (1, 2, 3):
    state = step_fn(state)
    ckpt_lib.save(manager, step, state, host_state={"window": {"loss": float(step)}},
                  wait=False)
    state = step_fn(state)   # donates the buffers the save was given
  ckpt_lib.wait_for_saves(manager)
  target = jax.tree.map(jnp.zeros_like, state)
  for step in (1, 2, 3):
    restored = ckpt_lib.restore(manager, target, step=step)
    assert float(restored["w"][0, 0]) == 2 * step - 1, step
    assert ckpt_lib.restored_host_state(manager, step) == {"window": {"loss": float(step)}}
  assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))


def test_a_background_write_refused_by_the_disk_names_its_step(tmp_path, monkeypatch):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  ckpt_lib.save(manager, 3, {"w": jnp.ones(3)}, wait=False)
  ckpt_lib.wait_for_saves(manager)

  def full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(manager, "wait_until_finished", full)
  with pytest.raises(ckpt_lib.WorkdirError, match=r"checkpoint of step 3 in .*No space left"):
    ckpt_lib.wait_for_saves(manager)


# --- the Trainer's loop --------------------------------------------------------------------

def smoke_config(**train_overrides):
  config = config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


@pytest.mark.usefixtures("fast_compile", "compile_cache")
def test_a_misspelt_best_metric_fails_before_the_first_step(tmp_path):
  trainer = train.Trainer(smoke_config(best_metric="eval_acurracy"), tmp_path)
  calls = []
  original = trainer.task.train_batch
  trainer.task.train_batch = lambda step: calls.append(step) or original(step)
  with pytest.raises(ValueError, match=r"best_metric='eval_acurracy'.*'eval_accuracy'"):
    trainer.train()
  assert set(calls) <= {0}   # init_state reads batch 0 for its shapes; no step ran
  assert not (tmp_path / "metrics.jsonl").exists()
  assert trainer.manager.latest_step() is None


@pytest.mark.usefixtures("fast_compile", "compile_cache")
def test_metrics_are_fetched_only_at_log_eval_and_save_steps(tmp_path, monkeypatch):
  settled = []
  original = metrics_lib.MetricWindow.settle

  def recording(self, accept):
    settled.append(self.num_pending)
    return original(self, accept)

  monkeypatch.setattr(metrics_lib.MetricWindow, "settle", recording)
  config = smoke_config(num_steps=12, log_every=5, eval_every=10, checkpoint_every=10)
  results = train.Trainer(config, tmp_path).train()
  assert results["steps"] == 12
  assert settled == [5, 5, 2]   # after steps 5 (log), 10 (log, eval, save), 12 (the end)
  rows = metrics_lib.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [5, 10, 12]


# --- the one-shot device check, on CPU -----------------------------------------------------

@pytest.mark.slow
def test_device_check_quick_runs_every_part_on_cpu(tmp_path):
  env = dict(os.environ, OUT_DIR=str(tmp_path), JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--quick"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1500, check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  for part in ("parity_tests", "parity_direct", "bench_rnn_float32", "bench_rnn_bfloat16",
               "bench_train", "bench_seeds"):
    assert f"{part}: ok" in out, out[-3000:]
  assert "device check summary" in out
  for name in ("parity_cpu_quick.json", "results_cpu_quick.json",
               "results_cpu_bf16_quick.json", "results_train_cpu_quick.json",
               "results_seeds_cpu_quick.json",
               "device_check_summary.json", "device_check.log"):
    assert (tmp_path / name).is_file(), name
