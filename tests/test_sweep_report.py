"""The report of a sweep (birnn_jax/training/sweep_report.py): every setting listed with its
status (finished, failed, running, stopped, not started: none dropped), the choice made on
dev among the finished ones, and only that setting's test figure as the result."""

import csv
import json
import pathlib

import pytest

from birnn_jax.training import config_lib
from birnn_jax.training import stats
from birnn_jax.training import sweep
from birnn_jax.training import sweep_report
from birnn_jax.training import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


@pytest.fixture
def sweep_folder(tmp_path):
  config = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", "smoke")
  settings = sweep.settings(config, sweep.sweep("model.hidden_size", [4, 5, 6, 7, 8, 9]))
  root = tmp_path / "sweep"
  sweep.update_manifest(root, settings)
  # 4: one seed, an experiment of variants (the first one, crf, is reported).
  _write(root / "hidden_size=4" / "results.json",
         {"crf": {"dev_f1": 0.70, "test_f1": 0.66}, "softmax": {"dev_f1": 0.9, "test_f1": 0.9}})
  # 5: three members: mean ± sd over them; the best dev, so the result.
  members = [{"dev_f1": d, "test_f1": t} for d, t in ((0.74, 0.69), (0.76, 0.71), (0.78, 0.70))]
  _write(root / "hidden_size=5" / "results.json",
         {"dev_f1": 0.76, "test_f1": 0.70, "statistics": stats.summarize_members(members)})
  _write(root / "hidden_size=6" / sweep.FAILED, {"error": "NonFiniteError: step 3: loss NaN"})
  (root / "hidden_size=8" / "checkpoints" / "10").mkdir(parents=True)   # stopped
  return root


def test_the_report_lists_every_setting_and_chooses_on_dev(sweep_folder):
  with workdir_lock.acquire(sweep_folder / "hidden_size=7"):   # running: this process
    report = sweep_report.report(sweep_folder)
  status = {r["setting"]: r["status"] for r in report["settings"]}
  assert status == {"hidden_size=4": "finished", "hidden_size=5": "finished",
                    "hidden_size=6": "failed", "hidden_size=7": "running",
                    "hidden_size=8": "stopped", "hidden_size=9": "not started"}
  assert report["chosen_on"] == "dev" and report["chosen"] == "hidden_size=5"
  dev_mean, dev_sd = report["result"]["dev_f1"]
  assert dev_mean == pytest.approx(0.76) and dev_sd == pytest.approx(0.02)
  assert report["result"]["test_f1"][0] == pytest.approx(0.70)
  first = next(r for r in report["settings"] if r["setting"] == "hidden_size=4")
  assert tuple(first["dev"]) == (0.70, None)
  text = (sweep_folder / "report.md").read_text()
  assert "hidden_size=5 **(chosen on dev)**" in text
  assert "failed: NonFiniteError: step 3: loss NaN" in text and "running: host" in text
  assert "its test f1, the sweep's result: 0.7000 ± 0.0100" in text
  assert "2 finished, 1 running, 1 stopped, 1 failed, 1 not started" in text
  rows = list(csv.DictReader((sweep_folder / "report.csv").open()))
  assert [r["status"] for r in rows] == list(status.values())
  assert json.loads((sweep_folder / "report.json").read_text())["chosen"] == "hidden_size=5"
  png = sweep_folder / "plots" / "sweep_hidden_size.png"
  assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_report_before_anything_finished_chooses_nothing(tmp_path):
  config = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", "smoke")
  root = tmp_path / "sweep"
  sweep.update_manifest(root, sweep.settings(config, sweep.sweep("model.hidden_size", [4, 5])))
  report = sweep_report.report(root)
  assert report["chosen"] is None and report["result"] is None
  assert "No setting has finished yet" in (root / "report.md").read_text()
  with pytest.raises(Exception, match="not a sweep's folder"):
    sweep_report.report(tmp_path / "elsewhere")
