"""Checkpoints: the config guard, orbax save/restore, the keep-latest-plus-best policy, and
the Trainer refusing to resume a workdir of another config (unless told to start over)."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import config_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(num_steps: int = 2) -> ml_collections.ConfigDict:
  config = config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  config.train.num_steps = num_steps
  return config


def saved(config) -> dict:
  return json.loads(config.to_json())


# --- config_differences --------------------------------------------------------------------

def test_flatten_nests_with_dots():
  assert config_lib.flatten({"a": {"b": 1, "c": {"d": (2, 3)}}, "e": "x"}) == {
      "a.b": 1, "a.c.d": [2, 3], "e": "x"}
  flat = config_lib.flatten(config_lib.base_config())
  assert flat["model.hidden_size"] == 128 and flat["train.num_steps"] == 1000


def test_config_differences_flags_a_model_change():
  config = config_lib.base_config()
  old = saved(config)
  assert config_lib.config_differences(old, config) == []
  config.model.hidden_size = 7
  diffs = config_lib.config_differences(old, config)
  assert len(diffs) == 1 and diffs[0].startswith("model.hidden_size: 128 -> 7"), diffs


@pytest.mark.parametrize("key", ["train.num_steps", "train.log_every", "train.eval_every",
                                 "train.checkpoint_every", "data.dir", "mesh.data"])
def test_config_differences_ignores_how_long_and_where(key):
  config = config_lib.base_config()
  old = saved(config)
  group, name = key.split(".")
  config[group][name] = 4 if name != "dir" else "/somewhere/else"
  assert config_lib.config_differences(old, config) == []


@pytest.mark.parametrize("key,value", [("seed", 3), ("task", "other"), ("optim.name", "sgd"),
                                       ("optim.learning_rate", 0.5), ("train.batch_size", 4),
                                       ("model.cell", "gru")])
def test_config_differences_flags_what_changes_the_run(key, value):
  config = config_lib.base_config()
  old = saved(config)
  *group, name = key.split(".")
  (config[group[0]] if group else config)[name] = value
  diffs = config_lib.config_differences(old, config)
  assert [d.split(":")[0] for d in diffs] == [key]


def test_config_differences_flags_added_and_removed_keys():
  config = config_lib.base_config()
  old = saved(config)
  del old["model"]["residual"]
  old["data"]["legacy"] = 1
  diffs = config_lib.config_differences(old, config)
  assert "data.legacy: 1 -> '<absent>'" in diffs
  assert "model.residual: '<absent>' -> False" in diffs


def test_a_workdir_saved_before_a_key_existed_resumes_while_it_means_the_same():
  config = config_lib.base_config()
  old = saved(config)
  del old["train"]["ema_decay"]                       # saved before train.ema_decay existed
  assert config_lib.config_differences(old, config) == []
  config.train.ema_decay = 0.5
  assert config_lib.config_differences(old, config) == ["train.ema_decay: 0.0 -> 0.5"]
  ner = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py")
  old = saved(ner)
  del old["model"]["tag_scheme"], old["model"]["casing_embed_size"]
  assert config_lib.config_differences(old, ner) == ["model.casing_embed_size: 0 -> 16"]


# --- orbax manager -------------------------------------------------------------------------

def state(value: float) -> dict:
  return {"step": jnp.asarray(int(value), jnp.int32),
          "params": {"w": jnp.full((2, 3), value, jnp.float32), "b": jnp.arange(3.0) + value},
          "opt_state": (jnp.zeros(()), {"mu": jnp.ones((3,)) * value})}


def train_cfg(**kw) -> ml_collections.ConfigDict:
  t = config_lib.base_config().train
  for k, v in kw.items():
    t[k] = v
  return t


def test_save_and_restore_roundtrip(tmp_path):
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  assert manager.latest_step() is None
  ckpt_lib.save(manager, 3, state(3.0))
  ckpt_lib.save(manager, 7, state(7.0))
  assert (tmp_path / "checkpoints" / "7").is_dir()
  restored = ckpt_lib.restore(manager, state(0.0))
  jax.tree.map(np.testing.assert_array_equal, restored, state(7.0))
  older = ckpt_lib.restore(manager, state(0.0), step=3)
  jax.tree.map(np.testing.assert_array_equal, older, state(3.0))
  # A new manager on the same folder sees the saved steps (automatic resume).
  again = ckpt_lib.make_manager(tmp_path, train_cfg())
  assert again.latest_step() == 7


def test_a_readable_checkpoint_of_another_model_is_refused_not_skipped(tmp_path):
  """Not 'unreadable': no older step is tried and nothing is moved aside."""
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  ckpt_lib.save(manager, 3, state(3.0))
  ckpt_lib.save(manager, 7, state(7.0))
  ckpt_lib.wait_for_saves(manager)
  other = state(0.0)
  other["params"]["w"] = jnp.zeros((4, 3))
  for read_only in (False, True):
    with pytest.raises(errors.WorkdirMismatchError,
                       match=r"params\.w: saved \(2, 3\) -> this model \(4, 3\)"):
      ckpt_lib.restore(manager, other, read_only=read_only)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if not p.name.endswith(".json")) == ["3", "7"]
  missing = state(0.0)
  del missing["params"]["b"]
  with pytest.raises(errors.WorkdirMismatchError, match=r"params\.b: saved \(3,\) -> this "
                     r"model absent"):
    ckpt_lib.restore(manager, missing)
  restored = ckpt_lib.restore(manager, state(0.0))   # the model that fits still restores
  jax.tree.map(np.testing.assert_array_equal, restored, state(7.0))


@pytest.mark.parametrize("mode,values,best", [
    ("max", [0.5, 0.9, 0.6, 0.7, 0.4, 0.3], 2),
    ("min", [0.5, 0.9, 0.2, 0.7, 0.4, 0.3], 3),
])
def test_keeps_the_latest_and_the_best(tmp_path, mode, values, best):
  manager = ckpt_lib.make_manager(
      tmp_path, train_cfg(keep_checkpoints=2, best_metric="eval_m", best_mode=mode))
  for step, v in enumerate(values, start=1):
    ckpt_lib.save(manager, step, state(step), {"eval_m": v})
  ckpt_lib.save(manager, 7, state(7), None)  # e.g. a SIGTERM save off the eval grid
  assert sorted(manager.all_steps()) == sorted({best, 6, 7})


@pytest.mark.parametrize("vanishes", [1, ckpt_lib.READER_RETRIES])
@pytest.mark.parametrize("read_only", [True, False])
def test_a_reader_lists_again_when_a_step_vanishes_meanwhile(tmp_path, monkeypatch, read_only,
                                                             vanishes):
  """A live run deletes old steps while eval opens the folder (orbax then raises
  NotADirectoryError): a reader lists again, a writer (the run itself) does not."""
  manager = ckpt_lib.make_manager(tmp_path, train_cfg())
  for step in (3, 7):
    ckpt_lib.save(manager, step, state(step))
  real, calls = ckpt_lib.ocp.CheckpointManager, []

  def racing(directory, **kwargs):
    calls.append(directory)
    if len(calls) <= vanishes:
      gone = directory / "3"
      shutil.rmtree(gone, ignore_errors=True)        # the run's garbage collection
      raise NotADirectoryError(f"Path is not a directory: {gone}")
    return real(directory, **kwargs)

  monkeypatch.setattr(ckpt_lib.ocp, "CheckpointManager", racing)
  if read_only and vanishes < ckpt_lib.READER_RETRIES:
    reader = ckpt_lib.make_manager(tmp_path, train_cfg(), read_only=True)
    assert list(reader.all_steps()) == [7] and len(calls) == vanishes + 1
  else:
    with pytest.raises(ckpt_lib.WorkdirError, match="cannot open the checkpoint folder"):
      ckpt_lib.make_manager(tmp_path, train_cfg(), read_only=read_only)
    assert len(calls) == (vanishes if read_only else 1)


# --- the Trainer's guard -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compile, compile_cache):
  del fast_compile, compile_cache
  workdir = tmp_path_factory.mktemp("trained")
  train.Trainer(smoke_config(), workdir).train()
  return workdir


def test_refuses_to_resume_a_different_model(trained):
  config = smoke_config()
  config.model.hidden_size = 4
  before = sorted(train.Trainer(smoke_config(), trained).manager.all_steps())
  with pytest.raises(errors.WorkdirMismatchError, match=r"model\.hidden_size: 8 -> 4") as e:
    train.Trainer(config, trained).train()
  assert "--force_fresh" in str(e.value)
  # Nothing was touched.
  assert json.loads((trained / "config.json").read_text())["model"]["hidden_size"] == 8
  assert sorted(train.Trainer(smoke_config(), trained).manager.all_steps()) == before


def test_force_fresh_starts_over(trained, tmp_path):
  config = smoke_config(num_steps=3)
  config.seed = 1
  with pytest.raises(errors.WorkdirMismatchError, match="seed: 0 -> 1"):
    train.Trainer(config, trained).train()
  calls = []
  trainer = train.Trainer(config, trained)
  original = trainer.task.train_batch
  trainer.task.train_batch = lambda step: calls.append(step) or original(step)
  results = trainer.train(force_fresh=True)
  assert calls[-3:] == [0, 1, 2], calls
  assert results["steps"] == 3
  assert json.loads((trained / "config.json").read_text())["seed"] == 1
  rows = metrics_lib.read_metrics(trained / "metrics.jsonl")
  assert [r["step"] for r in rows] == [3], rows
  assert sorted(trainer.manager.all_steps()) == [3]
  # ... and the new run resumes normally afterwards.
  assert train.Trainer(config, trained).restore_or_init()["step"] == 3
