"""Sweeps (birnn_jax/training/sweep.py): declaring settings, their workdirs and errors, and
running them as the user does (launch.py --sweep): locally and resumably, through submitit's
local executor, and submitted to a fake `sbatch` that records what it was asked to run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from birnn_jax import errors
from birnn_jax.training import config_lib
from birnn_jax.training import sweep
from birnn_jax.training import train

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "experiments" / "synthetic_tagging.py"


def _smoke():
  return config_lib.load_experiment(SYNTHETIC, "smoke")


# Declaring ---------------------------------------------------------------------------------------

def test_product_zip_and_names():
  grid = sweep.product([sweep.sweep("train.batch_size", [8, 16]),
                        sweep.zip([sweep.sweep("model.hidden_size", [4, 6]),
                                   sweep.sweep("model.embed_size", [3, 5])])])
  assert grid == [{"train.batch_size": 8, "model.hidden_size": 4, "model.embed_size": 3},
                  {"train.batch_size": 8, "model.hidden_size": 6, "model.embed_size": 5},
                  {"train.batch_size": 16, "model.hidden_size": 4, "model.embed_size": 3},
                  {"train.batch_size": 16, "model.hidden_size": 6, "model.embed_size": 5}]
  settings = sweep.settings(_smoke(), grid + [])
  assert [s.name for s in settings][:2] == ["batch_size=8,hidden_size=4,embed_size=3",
                                            "batch_size=8,hidden_size=6,embed_size=5"]
  assert settings[1].config.model.hidden_size == 6 and settings[1].config.model.embed_size == 5
  assert settings[1].config.train.batch_size == 8
  # A key fixed across the sweep names no folder.
  fixed = sweep.settings(_smoke(), sweep.product([sweep.sweep("optim.name", ["adam"]),
                                                  sweep.sweep("model.hidden_size", [4, 6])]))
  assert [s.name for s in fixed] == ["hidden_size=4", "hidden_size=6"]
  with pytest.raises(errors.ConfigError, match="lengths"):
    sweep.zip([sweep.sweep("a", [1, 2]), sweep.sweep("b", [1])])


@pytest.mark.parametrize("grid, match", [
    ([{"model.hiden_size": 4}], r"'model.hiden_size': config.model has no key 'hiden_size' "
                                r"\(did you mean 'hidden_size'\?\)"),
    ([{"model.hidden_size": 4}, {"model.hidden_size": 4}], "map to the same workdir"),
    ([{"model.dropout": 1.5}], r"sweep setting dropout=1.5: config.model.dropout=1.5"),
])
def test_bad_sweeps_are_one_clear_error(grid, match):
  with pytest.raises(errors.ConfigError, match=match):
    sweep.settings(_smoke(), grid)


def test_an_empty_or_missing_sweep_is_refused():
  class Module:
    __file__ = "exp.py"
    get_hyper = staticmethod(lambda h: h.product([h.sweep("model.hidden_size", [])]))
  with pytest.raises(errors.ConfigError, match="gives no settings"):
    sweep.declared(Module)
  with pytest.raises(errors.ConfigError, match="declares no sweep"):
    sweep.declared(config_lib.load_module(SYNTHETIC))


def test_a_missing_launcher_is_refused_before_anything_runs(tmp_path, monkeypatch):
  settings = sweep.settings(_smoke(), [{"model.hidden_size": 4}])
  monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch
  with pytest.raises(errors.ConfigError, match="no sbatch or srun on PATH"):
    sweep.launch(tmp_path / "s", settings, "slurm")
  monkeypatch.setitem(sys.modules, "submitit", None)   # not installed
  with pytest.raises(errors.ConfigError, match=r"needs submitit: pip install"):
    sweep.launch(tmp_path / "s", settings, "submitit_local")
  assert not (tmp_path / "s").exists()


# Running, as the user does -----------------------------------------------------------------------

EXPERIMENT = '''
from birnn_jax.training import config_lib

def get_config(arg=None):
  c = config_lib.load_experiment({synthetic!r}, "smoke")
  c.train.num_steps = 10
  return c

def get_hyper(h):
  return h.product([h.sweep("model.hidden_size", {sizes!r})])
'''


def _experiment(folder: pathlib.Path, sizes) -> pathlib.Path:
  path = folder / "exp_sweep.py"
  path.write_text(EXPERIMENT.format(synthetic=str(SYNTHETIC), sizes=list(sizes)))
  return path


def _launch(env, *args, check=True):
  proc = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_a_local_sweep_runs_skips_resumes_and_grows(tmp_path, subprocess_env):
  exp, root = _experiment(tmp_path, [4, 6]), tmp_path / "sweep"
  dry = _launch(subprocess_env, f"--config={exp}", "--sweep", "--dry_run", f"--workdir={root}")
  assert f"{root}/hidden_size=4" in dry.stdout and "Dry run: 2 settings" in dry.stdout
  assert not root.exists()
  # Setting 6 half done (a shorter run of it, as if stopped): the sweep resumes it.
  half = sweep.apply(config_lib.load_module(exp).get_config(), {"model.hidden_size": 6})
  half.train.num_steps = 5
  train.run_experiment(half, root / "hidden_size=6")
  first = _launch(subprocess_env, f"--config={exp}", "--sweep", f"--workdir={root}")
  assert "0 already finished, 2 ran, 0 failed" in first.stdout, first.stdout
  assert "hidden_size=6/bidirectional/checkpoints at step 5." in first.stderr
  for size in (4, 6):
    results = json.loads((root / f"hidden_size={size}" / "results.json").read_text())
    assert results["bidirectional"]["steps"] == 10
    saved = json.loads((root / f"hidden_size={size}" / "bidirectional" / "config.json")
                       .read_text())
    assert saved["model"]["hidden_size"] == size
  again = _launch(subprocess_env, f"--config={exp}", "--sweep", f"--workdir={root}")
  assert "2 already finished, 0 ran" in again.stdout
  # A grown grid keeps the finished settings and says which are new.
  exp = _experiment(tmp_path, [4, 6, 8])
  grown = _launch(subprocess_env, f"--config={exp}", "--sweep", f"--workdir={root}")
  assert "2 already finished, 1 ran" in grown.stdout
  assert "new settings ['hidden_size=8']" in grown.stderr
  # The report: every setting, chosen on dev (here the eval split), its test as the result.
  report = _launch(subprocess_env, "--mode=report", f"--workdir={root}")
  assert "(chosen on test)" in report.stdout and "no dev split" in report.stdout
  table = json.loads((root / "report.json").read_text())
  assert [r["status"] for r in table["settings"]] == ["finished"] * 3
  assert (root / "report.csv").read_text().count("\n") == 4
  assert (root / "plots" / "sweep_hidden_size.png").read_bytes()[:4] == b"\x89PNG"


def test_submitit_s_local_executor_runs_the_job_array(tmp_path, subprocess_env):
  exp, root = _experiment(tmp_path, [4, 6]), tmp_path / "sweep"
  out = _launch(subprocess_env, f"--config={exp}", "--sweep", "--sweep_launcher=submitit_local",
                f"--workdir={root}")
  assert "2 ran, 0 failed, 2 submitted (submitit_local" in out.stdout, out.stdout
  for size in (4, 6):
    assert (root / f"hidden_size={size}" / "results.json").is_file()
  assert any((root / "submitit").iterdir())   # submitit's own logs of each job


FAKE_SBATCH = '''#!{python}
import pathlib, sys
record = pathlib.Path({record!r})
script = pathlib.Path(sys.argv[-1]).read_text()
record.write_text(" ".join(sys.argv[1:]) + "\\n" + script)
print("Submitted batch job 4242")
'''


def test_a_slurm_sweep_is_one_job_array_submitted_to_sbatch(tmp_path, subprocess_env):
  bin_dir, record = tmp_path / "bin", tmp_path / "sbatch_call.txt"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, record=str(record)))
  (bin_dir / "sbatch").chmod(0o755)
  (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")   # submitit looks for it; never run
  (bin_dir / "srun").chmod(0o755)
  env = dict(subprocess_env, PATH=f"{bin_dir}{os.pathsep}{subprocess_env['PATH']}")
  exp, root = _experiment(tmp_path, [4, 6, 8]), tmp_path / "sweep"
  out = _launch(env, f"--config={exp}", "--sweep", "--sweep_launcher=slurm",
                "--slurm_partition=gpu", "--slurm_time_min=30", "--slurm_gpus_per_job=1",
                "--slurm_parallelism=2", f"--workdir={root}")
  assert "3 submitted (slurm: jobs 4242_0, 4242_1, 4242_2)" in out.stdout, out.stdout
  sent = record.read_text()
  for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=30",
               "#SBATCH --gpus-per-node=1"):
    assert line in sent, sent
  assert "submitit" in sent   # each array task runs submitit's job runner
  assert json.loads((root / sweep.MANIFEST).read_text())["settings"][2]["name"] == "hidden_size=8"


FAILING = '''
from birnn_jax.training import config_lib

def get_config(arg=None):
  c = config_lib.load_experiment({synthetic!r}, "smoke")
  c.train.num_steps = 10
  c.optim.clip_norm = 0.0
  return c

def get_hyper(h):   # Adam moves every weight by ~lr: 1e38 overflows on the next step
  return h.product([h.sweep("optim.learning_rate", [1e38, 0.01])])
'''


def test_a_failing_setting_is_recorded_and_the_sweep_goes_on(tmp_path, subprocess_env):
  exp, root = tmp_path / "exp_failing.py", tmp_path / "sweep"
  exp.write_text(FAILING.format(synthetic=str(SYNTHETIC)))
  proc = _launch(subprocess_env, f"--config={exp}", "--sweep", f"--workdir={root}",
                 check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "1 ran, 1 failed" in proc.stdout
  assert "launch.py: error: sweep settings failed: learning_rate=1e+38" in proc.stderr
  failed = json.loads((root / "learning_rate=1e+38" / sweep.FAILED).read_text())
  assert "became non-finite" in failed["error"]
  assert (root / "learning_rate=0.01" / "results.json").is_file()
  report = _launch(subprocess_env, "--mode=report", f"--workdir={root}")
  assert "failed: NonFiniteError" in report.stdout and "1 finished, 1 failed" in report.stdout
