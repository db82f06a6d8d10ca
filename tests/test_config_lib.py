"""Config validation: every experiment config loads (default and :smoke) and is valid; an
impossible value fails before any compute with a message naming its key."""

import json
import importlib
import pathlib
import pkgutil

import ml_collections
import pytest

from birnn_jax.training import config_lib
from birnn_jax.training import optim
from birnn_jax import tasks
from birnn_jax.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


def smoke_config() -> ml_collections.ConfigDict:
  return config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")


def test_every_task_has_an_experiment():
  modules = [m.name for m in pkgutil.iter_modules(tasks.__path__)]
  task_names = {name for name in modules if name != "base" and isinstance(
      getattr(importlib.import_module(f"birnn_jax.tasks.{name}"), "Task", None), type)}
  assert {"synthetic", "pos", "ner", "bilm"} <= task_names
  configured = {config_lib.load_experiment(p).task for p in EXPERIMENTS}
  assert configured == task_names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_experiment_config_is_valid(path, arg):
  config = config_lib.load_experiment(path, arg)
  config_lib.validate(config)
  task_class = tasks.get_task_class(config.task)
  assert task_class.__module__.startswith(f"birnn_jax.tasks.{config.task}")
  # The shared groups are all there and every base key is declared (no config.get defaults).
  base = config_lib.base_config()
  for group in ("model", "data", "optim", "train", "mesh"):
    assert set(base[group].keys()) <= set(config[group].keys()), group


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_smoke_is_small(path):
  full, smoke = config_lib.load_experiment(path), config_lib.load_experiment(path, "smoke")
  assert smoke.train.num_steps <= 100 and smoke.train.num_steps < full.train.num_steps
  assert smoke.model.hidden_size <= full.model.hidden_size


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_unknown_config_arg_is_an_error(path):
  with pytest.raises(ValueError, match="bogus"):
    config_lib.load_experiment(path, "bogus")


def test_base_config_is_valid_once_a_task_is_named():
  config = config_lib.base_config()
  with pytest.raises(ValueError, match=r"config\.task"):
    config_lib.validate(config)
  config.task = "synthetic"
  config_lib.validate(config)


BAD_VALUES = [
    ("model.hidden_size", -3),
    ("model.hidden_size", 0),
    ("model.num_layers", 0),
    ("model.embed_size", -1),
    ("model.cell", "transformer"),
    ("model.activation", "gelu"),
    ("model.dropout", 1.5),
    ("model.dropout", 1.0),
    ("model.dropout", -0.1),
    ("model.merge", "max"),
    ("model.impl", "cuda"),
    ("model.dtype", "float16"),
    ("optim.name", "lamb"),
    ("optim.schedule", "step"),
    ("optim.learning_rate", 0.0),
    ("optim.clip_norm", -1.0),
    ("optim.warmup_steps", -1),
    ("train.batch_size", 0),
    ("train.num_steps", 0),
    ("train.log_every", 0),
    ("train.eval_every", -5),
    ("train.checkpoint_every", 0),
    ("train.keep_checkpoints", 0),
    ("train.best_mode", "best"),
    ("train.nan_policy", "ignore"),
    ("mesh.data", 0),
]


def set_key(config, key, value):
  group, name = key.split(".")
  config[group][name] = value


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_validate_names_the_bad_key(key, value):
  config = smoke_config()
  set_key(config, key, value)
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  assert f"config.{key}=" in str(e.value), str(e.value)


def test_merge_none_is_refused_for_a_bidirectional_head():
  config = smoke_config()
  config.model.merge = "none"
  with pytest.raises(ValueError, match=r"config\.model\.merge"):
    config_lib.validate(config)
  config.model.bidirectional = False
  config_lib.validate(config)


@pytest.mark.parametrize("key,value", [("model.hidden_size", -3), ("model.cell", "transformer"),
                                       ("optim.name", "lamb"), ("model.dropout", 1.5),
                                       ("train.batch_size", 0)])
def test_trainer_fails_fast_before_touching_the_workdir(tmp_path, key, value):
  config = smoke_config()
  set_key(config, key, value)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=rf"config\.{key.replace('.', r'.')}"):
    train.Trainer(config, workdir)
  with pytest.raises(ValueError, match=rf"config\.{key.replace('.', r'.')}"):
    train.run_experiment(config, workdir)
  assert not workdir.exists()


def test_unknown_task_names_the_key(tmp_path):
  config = smoke_config()
  config.task = "no_such_task"
  with pytest.raises(ValueError, match=r"config\.task='no_such_task'"):
    tasks.get_task_class(config.task)
  with pytest.raises(ValueError, match=r"config\.task"):
    train.run_experiment(config, tmp_path / "run")
  with pytest.raises(ValueError, match=r"config\.task"):
    train.Trainer(config, tmp_path / "run2")


@pytest.mark.parametrize("key,value", [("data.num_ambiguous", 0), ("data.num_ambiguous", 24),
                                       ("data.min_length", 0), ("data.max_length", 3),
                                       ("data.num_classes", 1),
                                       ("data.num_test_sequences", 0)])
def test_synthetic_data_keys_are_checked(tmp_path, key, value):
  config = smoke_config()
  set_key(config, key, value)
  with pytest.raises(ValueError, match=rf"config\.{key.replace('.', r'.')}"):
    tasks.get_task_class("synthetic")(config, tmp_path)


def test_unknown_optimizer_in_make_optimizer():
  config = smoke_config()
  config.optim.name = "lamb"
  with pytest.raises(ValueError, match=r"config\.optim\.name='lamb'"):
    optim.make_optimizer(config.optim, 10)
  config.optim.name, config.optim.schedule = "adam", "step"
  with pytest.raises(ValueError, match=r"config\.optim\.schedule='step'"):
    optim.make_optimizer(config.optim, 10)




# --- training length in epochs ---------------------------------------------------------------

def test_schedule_in_epochs_scales_with_the_training_set():
  config = config_lib.base_config()
  config.train.num_epochs = 10
  config.train.log_every_epochs = 0.25
  config.train.eval_every_epochs = 1
  config.train.checkpoint_every_epochs = 2
  ewt = config_lib.resolve_schedule(config.train, 392)      # 12,544 sentences / 32
  assert (ewt.num_steps, ewt.log_every, ewt.eval_every, ewt.checkpoint_every) == (
      3920, 98, 392, 784)
  small = config_lib.resolve_schedule(config.train, 50)     # 1,600 sentences / 32
  assert (small.num_steps, small.log_every, small.eval_every, small.checkpoint_every) == (
      500, 12, 50, 100)
  assert small.num_epochs == 10


def test_schedule_rounding_and_step_fallback():
  config = config_lib.base_config()
  config.train.num_epochs = 2.5
  config.train.log_every_epochs = 0.01
  s = config_lib.resolve_schedule(config.train, 7)
  assert s.num_steps == 18                  # ceil(17.5): never stops short of the epochs
  assert s.log_every == 1                   # an interval is at least one step
  assert (s.eval_every, s.checkpoint_every) == (config.train.eval_every,
                                                config.train.checkpoint_every)
  config.train.num_epochs = config.train.log_every_epochs = 0
  assert config_lib.resolve_schedule(config.train, 7).num_steps == config.train.num_steps
  assert config_lib.resolve_schedule(config.train, None).num_epochs is None


@pytest.mark.parametrize("key", ["num_epochs", "eval_every_epochs"])
def test_schedule_errors_name_the_key(key):
  config = config_lib.base_config()
  config.train[key] = 1.0
  with pytest.raises(ValueError, match=rf"config\.train\.{key}=1\.0 .*no epochs"):
    config_lib.resolve_schedule(config.train, None)
  config.train[key] = -1.0
  with pytest.raises(ValueError, match=rf"config\.train\.{key}=-1\.0"):
    config_lib.resolve_schedule(config.train, 10)


# --- hints for overrides of keys a config lacks --------------------------------------------------

def test_unknown_override_hints_name_the_key_and_a_close_one():
  argv = ["launch.py", "--config=experiments/synthetic_tagging.py:smoke",
          "--config.train.batchsize=4", "--config.model.hidden_size=8", "--config.nope.x=1"]
  hints = config_lib.unknown_override_hints(argv)
  assert hints == ["--config.train.batchsize: config.train has no key 'batchsize' "
                   "(did you mean 'batch_size'?)",
                   "--config.nope.x: config has no key 'nope'"]
  assert config_lib.unknown_override_hints(["launch.py", "--config.train.x=1"]) == []


# --- what a trained model's --config may differ in ------------------------------------------

def test_model_differences_name_what_changes_the_model_only():
  config = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py", "smoke")
  saved = json.loads(config.to_json())
  # Training-only keys and settings that compute the same numbers are not the model.
  config.train.num_steps, config.optim.learning_rate, config.seed = 9, 0.5, 3
  config.model.impl, config.model.dropout, config.data.eval_batch_size = "scan", 0.7, 3
  config.data.dir, config.smoke = "/elsewhere", False
  assert config_lib.model_differences(saved, config) == []
  config.model.hidden_size, config.data.max_chars = 99, 5
  assert config_lib.model_differences(saved, config) == [
      "data.max_chars: 8 -> 5", "model.hidden_size: 16 -> 99"]
  other = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", "smoke")
  assert "task: 'pos' -> 'ner'" in config_lib.model_differences(saved, other)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_only_smoke_configs_say_they_are_smoke(path):
  """What `birnn_jax.load` reads to warn that a `:smoke` model's predictions mean nothing."""
  assert config_lib.load_experiment(path, "smoke").smoke is True
  assert config_lib.load_experiment(path).smoke is False
