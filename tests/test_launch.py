"""launch.py as a user runs it, in a subprocess: bad flags fail fast naming the key (fast);
the smoke experiment end to end, then --mode=eval on its workdir (slow)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "--config=experiments/synthetic_tagging.py:smoke"
VARIANTS = ("bidirectional", "unidirectional")
PNG = b"\x89PNG\r\n\x1a\n"


def launch(*args, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False)


# --- fast: refused before any compute ------------------------------------------------------


def test_misspelt_override_is_an_error(tmp_path):
  workdir = tmp_path / "run"
  proc = launch(SMOKE, f"--workdir={workdir}", "--config.model.hiden_size=4", timeout=120)
  assert proc.returncode != 0
  assert "hiden_size" in proc.stderr, proc.stderr[-2000:]
  assert "hidden_size" in proc.stderr  # the did-you-mean hint
  assert not workdir.exists()


def test_invalid_value_fails_fast_naming_the_key(tmp_path):
  workdir = tmp_path / "run"
  proc = launch(SMOKE, f"--workdir={workdir}", "--config.model.hidden_size=-3", timeout=120)
  assert proc.returncode != 0
  assert "config.model.hidden_size=-3" in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists()  # validated before the workdir (or any compile) was touched


def test_default_workdir_is_named_after_the_experiment():
  code = """if True:
    from absl import flags
    import launch
    for arg in ("experiments/synthetic_tagging.py:smoke", "experiments/synthetic_tagging.py"):
      flags.FLAGS.unparse_flags()
      flags.FLAGS(["launch.py", "--config=" + arg])
      print(launch.default_workdir())
  """
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["runs/synthetic_tagging_smoke", "runs/synthetic_tagging"]


def test_eval_without_a_checkpoint_says_train_first(tmp_path):
  proc = launch(SMOKE, f"--workdir={tmp_path / 'run'}", "--mode=eval", timeout=120)
  assert proc.returncode != 0
  assert "no checkpoint" in proc.stderr and "--mode=train" in proc.stderr, proc.stderr[-2000:]


# --- slow: the smoke experiment end to end -------------------------------------------------


def read_event_tags(logdir: pathlib.Path) -> set[str]:
  """Scalar tags in the event files under `logdir`, read by TensorBoard's own loader."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return set(acc.Tags()["scalars"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("launch") / "smoke"
  proc = launch(SMOKE, f"--workdir={workdir}")
  return workdir, proc


@pytest.mark.slow
def test_smoke_exits_cleanly_with_a_verdict(smoke_run):
  _, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "VERDICT:" in proc.stdout and "left_context_ceiling" in proc.stdout
  assert "steps/s" in proc.stderr  # console progress


@pytest.mark.slow
def test_smoke_results(smoke_run):
  workdir, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads((workdir / "results.json").read_text())
  # The ceiling of a left-context tagger is above the chance of guessing among the classes.
  assert 1 / 3 < results["left_context_ceiling"] < 1
  assert isinstance(results["verdict_pass"], bool)
  for name in VARIANTS:
    assert results[f"{name}_accuracy"] == json.loads(
        (workdir / name / "results.json").read_text())["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_smoke_variant_workdir(smoke_run, name):
  workdir, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  vdir = workdir / name
  config = json.loads((vdir / "config.json").read_text())
  assert config["model"]["bidirectional"] == (name == "bidirectional")
  assert config["train"]["num_steps"] == 20

  rows = [json.loads(line) for line in (vdir / "metrics.jsonl").read_text().splitlines()]
  assert rows and all(isinstance(r, dict) and isinstance(r["step"], int) for r in rows)
  assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
  train_rows = [r for r in rows if any(k.startswith("train_") for k in r)]
  eval_rows = [r for r in rows if any(k.startswith("eval_") for k in r)]
  assert train_rows and all("train_loss" in r for r in train_rows)
  assert eval_rows and all("eval_loss" in r and "eval_accuracy" in r for r in eval_rows)
  assert all(k == "step" or k.startswith(("train_", "eval_")) for r in rows for k in r)
  assert rows[-1]["step"] == 20

  steps = sorted(int(p.name) for p in (vdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] == 20, steps
  assert (vdir / "checkpoints" / "20" / "default").is_dir()

  pngs = list((vdir / "plots").glob("*.png"))
  assert {p.stem for p in pngs} >= {"loss", "accuracy"}
  assert all(p.read_bytes()[:8] == PNG for p in pngs)

  tags = read_event_tags(vdir / "tensorboard")
  assert {"train_loss", "eval_loss", "eval_accuracy"} <= tags, tags


@pytest.mark.slow
def test_eval_mode_on_the_smoke_workdir(smoke_run):
  workdir, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  evaluated = launch(SMOKE, f"--workdir={workdir}", "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-4000:]
  got = json.loads((workdir / "eval_results.json").read_text())
  results = json.loads((workdir / "results.json").read_text())
  for name in VARIANTS:
    assert got[name]["test_accuracy"] == pytest.approx(results[f"{name}_accuracy"], abs=1e-6)
    assert got[name]["test_loss"] == pytest.approx(results[name]["test_loss"], abs=1e-6)
  assert "test_accuracy" in evaluated.stdout
