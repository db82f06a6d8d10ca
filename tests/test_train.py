"""The generic trainer on the synthetic smoke config: a step updates every parameter, the
first-step loss is pinned, the loss falls, runs are deterministic, and resuming from a
checkpoint reproduces an uninterrupted run exactly."""

import json
import pathlib

import jax
import numpy as np
import pytest

from birnn_jax.training import ahead_of_time
from birnn_jax.training import compile_log
from birnn_jax.training import config_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import optim
from birnn_jax.training import sharding
from birnn_jax.training import train

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The smoke config's loss on step 0 (before any update). Update ONLY ON PURPOSE, when the
# model, the data generator, the initialisation or the loss has been changed intentionally;
# anything else that moves it is a bug.
GOLDEN_FIRST_STEP_LOSS = 2.0209601
GOLDEN_FIRST_STEP_COUNT = 85  # real (unmasked) tokens in the smoke config's batch 0


def load_config(name: str = "synthetic_tagging", arg: str | None = "smoke"):
  return config_lib.load_experiment(ROOT / "experiments" / f"{name}.py", arg)


def smoke_config(num_steps: int):
  config = load_config()
  config.train.num_steps = num_steps
  return config


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def first_step(tmp_path_factory):
  trainer = train.Trainer(smoke_config(1), tmp_path_factory.mktemp("first_step"))
  state = trainer.init_state()
  before = host(state["params"])  # the step donates its input state
  batch = sharding.put_batch(trainer.task.train_batch(0), trainer.mesh)
  state, step_metrics = trainer.train_step(state, batch, jax.random.key(0))
  return before, host(state["params"]), host(step_metrics), int(state["step"])


def test_one_step_changes_every_parameter(first_step):
  before, after, _, step = first_step
  assert step == 1
  flat_before = config_lib.flatten(before)
  flat_after = config_lib.flatten(after)
  assert flat_before.keys() == flat_after.keys() and len(flat_before) > 4
  unchanged = [k for k in flat_before
               if np.array_equal(np.asarray(flat_before[k]), np.asarray(flat_after[k]))]
  assert not unchanged, f"one train step left these parameters unchanged: {unchanged}"
  for k, v in flat_after.items():
    assert np.all(np.isfinite(v)), k


def test_golden_first_step_loss(first_step):
  _, _, step_metrics, _ = first_step
  assert step_metrics["count"] == GOLDEN_FIRST_STEP_COUNT, (
      "batch 0 of the smoke config changed size: the synthetic generator or its seeding "
      "changed. Update GOLDEN_FIRST_STEP_COUNT only if that was intended.")
  loss = float(step_metrics["loss"] / step_metrics["count"])
  assert loss == pytest.approx(GOLDEN_FIRST_STEP_LOSS, abs=1e-4), (
      f"first-step loss of experiments/synthetic_tagging.py:smoke is {loss!r}, pinned at "
      f"{GOLDEN_FIRST_STEP_LOSS}. Update GOLDEN_FIRST_STEP_LOSS only on purpose, if the "
      "model, data, initialisation or loss changed intentionally; otherwise this is a bug.")
  assert bool(step_metrics["finite"]) and np.isfinite(step_metrics["grad_norm"])


# --- full runs: A and B uninterrupted (2N steps), C interrupted at N then resumed --------

N = 30


def run(config, workdir, calls=None):
  trainer = train.Trainer(config, workdir)
  if calls is not None:
    original = trainer.task.train_batch
    def recording(step):
      calls.append(step)
      return original(step)
    trainer.task.train_batch = recording
  return trainer.train()


def final_params(config, workdir):
  _, params = train.load_trained(config, workdir)
  return host(params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  out = {}
  for name in ("a", "b"):
    out[name] = run(smoke_config(2 * N), base / name)
  out["c_first"] = run(smoke_config(N), base / "c")
  out["c_first_rows"] = metrics_lib.read_metrics(base / "c" / "metrics.jsonl")
  out["c_calls"] = []
  out["c"] = run(smoke_config(2 * N), base / "c", out["c_calls"])
  for name in ("a", "c"):
    out[f"{name}_params"] = final_params(smoke_config(2 * N), base / name)
  out.update({f"{name}_rows": metrics_lib.read_metrics(base / name / "metrics.jsonl")
              for name in "abc"})
  out["dirs"] = {name: base / name for name in "abc"}
  return out


def test_run_writes_the_workdir(runs):
  workdir = runs["dirs"]["a"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["train"]["num_steps"] == 2 * N and config["task"] == "synthetic"
  results = json.loads((workdir / "results.json").read_text())
  assert results == pytest.approx(runs["a"])
  assert results["steps"] == 2 * N
  assert 0 <= results["test_accuracy"] <= 1 and results["test_loss"] > 0
  assert 0 < results["left_context_ceiling"] < 1
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] == 2 * N
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  for name in ("loss", "accuracy"):
    assert (workdir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_rows_have_the_documented_shape(runs):
  rows = runs["a_rows"]
  assert [r["step"] for r in rows] == list(range(5, 2 * N + 1, 5))
  for r in rows:
    assert set(r) <= {"step"} | {f"{p}_{k}" for p in ("train", "eval")
                                 for k in ("loss", "accuracy", "grad_norm")}, r
    assert {"train_loss", "train_accuracy", "train_grad_norm"} <= set(r)
    assert ("eval_loss" in r) == (r["step"] % 10 == 0), r
    assert all(np.isfinite(v) for v in r.values())


def test_loss_falls(runs):
  rows = runs["a_rows"]
  train_loss = [r["train_loss"] for r in rows]
  eval_loss = [r["eval_loss"] for r in rows if "eval_loss" in r]
  eval_acc = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
  assert train_loss[-1] < 0.85 * train_loss[0], train_loss
  assert eval_loss[-1] < 0.85 * eval_loss[0], eval_loss
  assert eval_acc[-1] > eval_acc[0] + 0.1, eval_acc
  assert train_loss[0] == pytest.approx(GOLDEN_FIRST_STEP_LOSS, abs=0.2)


def test_same_config_and_seed_give_the_same_run(runs):
  assert runs["a_rows"] == runs["b_rows"]
  assert {k: v for k, v in runs["a"].items() if k != "train_seconds"} == {
      k: v for k, v in runs["b"].items() if k != "train_seconds"}


def test_resume_continues_from_the_checkpoint(runs):
  calls = runs["c_calls"]
  # init_state reads batch 0 for shapes; the loop itself must start at step N.
  loop = calls[-N:]
  assert loop == list(range(N, 2 * N)), calls
  assert not set(calls[:-N]) - {0}, f"the resumed run re-trained early steps: {calls}"
  assert runs["c_first"]["steps"] == N
  assert [r["step"] for r in runs["c_first_rows"]][-1] == N


def test_resumed_run_equals_an_uninterrupted_one(runs):
  a_rows, c_rows = runs["a_rows"], runs["c_rows"]
  assert [r["step"] for r in c_rows] == [r["step"] for r in a_rows]
  for a, c in zip(a_rows, c_rows):
    assert a.keys() == c.keys(), (a, c)
    for k in a:
      assert c[k] == pytest.approx(a[k], abs=1e-6, rel=0), (a["step"], k)
  flat_a, flat_c = config_lib.flatten(runs["a_params"]), config_lib.flatten(runs["c_params"])
  assert flat_a.keys() == flat_c.keys()
  for k in flat_a:
    np.testing.assert_allclose(flat_c[k], flat_a[k], rtol=0, atol=1e-6, err_msg=k)
  for k in ("test_accuracy", "test_loss"):
    assert runs["c"][k] == pytest.approx(runs["a"][k], abs=1e-6)


def test_train_and_evaluate_is_a_no_op_when_already_done(runs, tmp_path):
  """Re-running a finished run neither trains nor loses its metrics."""
  workdir = runs["dirs"]["b"]
  before = metrics_lib.read_metrics(workdir / "metrics.jsonl")
  calls = []
  results = run(smoke_config(2 * N), workdir, calls)
  assert set(calls) <= {0}, calls
  assert metrics_lib.read_metrics(workdir / "metrics.jsonl") == before
  assert results["test_accuracy"] == pytest.approx(runs["b"]["test_accuracy"], abs=1e-6)


# --- parameter averaging (train.ema_decay) -----------------------------------------------

def test_the_steps_compiled_ahead_are_the_ones_that_run(tmp_path):
  """`Trainer.compile_ahead` compiles the steps on a thread while the state initialises; the
  jitted steps must then find those programs, not build their own a second time."""
  config = smoke_config(4)
  config.model.hidden_size = 11        # programs no other test of this process builds
  config.train.eval_every = 2
  before = compile_log.snapshot()
  train.Trainer(config, tmp_path).train()
  built = dict((compile_log.snapshot() - before).programs)
  assert built["jit(train_step)"] == 1 and built["jit(eval_step)"] == 1, built


def test_every_variant_compiles_its_steps_once(tmp_path, caplog):
  """run_experiment queues both variants' steps on one compiler up front."""
  config = smoke_config(4)
  config.model.hidden_size = 13
  config.train.eval_every = 2
  before = compile_log.snapshot()
  with caplog.at_level("INFO"):
    train.run_experiment(config, tmp_path)
  built = dict((compile_log.snapshot() - before).programs)
  assert built["jit(train_step)"] == 2 and built["jit(eval_step)"] == 2, built
  runs = [r.getMessage() for r in caplog.records if "Compilation in the training run" in
          r.getMessage()]
  assert len(runs) == 2 and all("no recompiles" in r for r in runs), runs


def test_a_failed_compile_ahead_is_logged_and_waited_for(caplog):
  ran = []
  def fail():
    raise ValueError("bad shapes")
  compiler = ahead_of_time.AheadOfTime()
  with caplog.at_level("INFO"):
    failed, second = compiler.add(fail), compiler.add(lambda: ran.append("second"))
    second.wait()
    assert failed.is_set()
    third = compiler.add(lambda: ran.append("third"))   # its thread had ended: a new one
    third.wait()
  assert ran == ["second", "third"]
  assert any("Compiling ahead failed (ValueError: bad shapes)" in r.getMessage()
             for r in caplog.records)


def test_ema_is_off_by_default(first_step, tmp_path):
  """ema_decay=0 (every experiment's default) keeps the state and the steps as they were."""
  config = smoke_config(1)
  assert config.train.ema_decay == 0.0
  state = train.Trainer(config, tmp_path).init_state()
  assert set(state) == {"step", "params", "opt_state"}
  assert optim.eval_params(state) is state["params"]


def test_ema_params_are_the_hand_computed_average(tmp_path):
  """A 3-step run with ema_decay=0.9 evaluates and saves the average that the per-step
  parameters give by hand, and load_trained returns it."""
  config = smoke_config(3)
  config.train.ema_decay = 0.9
  trainer = train.Trainer(config, tmp_path / "by_hand")
  state = trainer.init_state()
  assert set(state) == {"step", "params", "opt_state", "ema_params"}
  ema = host(state["params"])
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(ema), jax.tree.leaves(host(state["ema_params"]))))
  rng = jax.random.key(config.seed + 1)     # what Trainer._loop uses
  for step in range(1, 4):
    batch = sharding.put_batch(trainer.task.train_batch(step - 1), trainer.mesh)
    state, _ = trainer.train_step(state, batch, rng)
    d = min(0.9, (1 + step) / (10 + step))    # 2/11, 3/12, 4/13: the warm-up weights
    ema = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, ema, host(state["params"]))
  got = host(optim.eval_params(state))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ema)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(got), jax.tree.leaves(host(state["params"]))))

  run(config, tmp_path / "run")
  loaded = final_params(config, tmp_path / "run")
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ema_decay_is_validated():
  config = smoke_config(1)
  config.train.ema_decay = 1.0
  with pytest.raises(ValueError, match="train.ema_decay"):
    config_lib.validate(config)
