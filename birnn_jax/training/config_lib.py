"""The keys every experiment shares, their defaults, and their validation.

Experiment files (`experiments/*.py`) start from `base_config()` and add their own keys;
`validate(config)` runs before any compute and names the offending key.
"""

import dataclasses
import difflib
import json
import importlib.util
import math
import os
import re

import ml_collections

from birnn_jax import errors
from birnn_jax.core import cells
from birnn_jax.core import layers
from birnn_jax.tasks.config_keys import (  # noqa: F401 (re-exported)
    ADDED_KEYS, added_key, check, check_at_least)
from birnn_jax.training import optim as optim_lib

DTYPES = ("float32", "bfloat16")
def base_config() -> ml_collections.ConfigDict:
  """The keys every experiment shares (groups `model`, `data`, `optim`, `train`, `mesh`).

  An experiment file's `get_config(arg)` starts from it and declares its own keys.

  Returns:
    A fresh, unlocked ConfigDict.

  Example:
    >>> from birnn_jax.training import config_lib
    >>> config = config_lib.base_config()
    >>> config.model.cell, config.train.batch_size, config.mesh.data
    ('lstm', 32, -1)
  """
  c = ml_collections.ConfigDict()
  c.task = ""             # module name under birnn_jax.tasks
  c.seed = 0
  # True in every experiment's `:smoke` config: a tiny model trained a few steps, to test
  # the code path; what it predicts means nothing, and loading it says so.
  c.smoke = False

  c.model = ml_collections.ConfigDict()
  c.model.cell = "lstm"   # rnn | gru | lstm
  c.model.activation = "tanh"
  c.model.hidden_size = 128
  c.model.num_layers = 1
  c.model.bidirectional = True
  c.model.merge = "concat"
  c.model.dropout = 0.0
  c.model.variational_dropout = False
  c.model.residual = False
  c.model.impl = "scan"
  c.model.unroll = 1
  c.model.remat = False   # impl='fused': recompute activations in backprop (less memory)
  c.model.dtype = "float32"
  c.model.embed_size = 64

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""         # '' = $BIRNN_DATA_DIR, then ~/.cache/birnn_jax

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 1.0   # global-norm clipping (D2L clips at 1); 0 disables
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.num_epochs = 0.0       # > 0: train this many passes over the training set instead
  c.train.batch_size = 32  # global, over all devices
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  # > 0: the interval in epochs instead (0.25 = four times per epoch), so one config serves
  # training sets of any size; see `resolve_schedule`.
  c.train.log_every_epochs = 0.0
  c.train.eval_every_epochs = 0.0
  c.train.checkpoint_every_epochs = 0.0
  c.train.keep_checkpoints = 2   # the last N, plus the best by best_metric
  c.train.best_metric = "eval_loss"
  c.train.best_mode = "min"
  c.train.nan_policy = "stop"    # stop | skip (skip the update of a non-finite step)
  # > 0: evaluate (and save alongside) an exponential moving average of the parameters
  # with this decay per step (Polyak averaging; `train.ema_decay_at`); 0 = off.
  c.train.ema_decay = 0.0
  # > 0: adversarial training (`steps.adversarial_perturbation`): each step also trains on
  # the input embeddings moved by this root-mean-square per entry in the loss's steepest
  # direction; a step runs two forward and backward passes. 0 = off.
  c.train.adversarial_epsilon = 0.0
  # Members: train this many models, seeds seed .. seed + num_seeds - 1, in one compiled
  # program (`members.MembersTrainer`); each equals the one-seed run of its seed.
  c.train.num_seeds = 1

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1        # devices on the ("data",) axis; -1 = all (of a "members" row)
  # > 1: a ("members", "data") mesh, the members (train.num_seeds, which must divide by it)
  # split over this many rows of devices; 1: every member on every device.
  c.mesh.members = 1
  c.mesh.distributed = False   # call jax.distributed.initialize()
  c.mesh.coordinator_address = ""
  c.mesh.num_processes = 0
  c.mesh.process_id = -1
  return c


def load_experiment(path: str | os.PathLike, arg: str | None = None
                    ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of an experiment file, as `--config=<path>:<arg>` loads it.

  For notebooks and tests; launch.py uses ml_collections' config_flags.

  Args:
    path: an experiment config file, e.g. 'experiments/pos_ewt.py'.
    arg: the config arg (what follows ':' on the command line), e.g. 'smoke'.

  Returns:
    The experiment's ConfigDict.

  Example:
    >>> from birnn_jax.training import config_lib
    >>> config = config_lib.load_experiment("experiments/pos_ewt.py", "smoke")
    >>> config.task, config.model.hidden_size
    ('pos', 16)
  """
  return load_module(path).get_config(arg)


def load_module(path: str | os.PathLike):
  """An experiment file as a module (its `get_config`, and `get_hyper` for a sweep)."""
  path = os.fspath(path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def unknown_override_hints(argv: list[str]) -> list[str]:
  """The `--config.<key>=...` overrides in `argv` whose key the `--config=<file>[:arg]` file
  does not declare, each as a line with a 'did you mean' hint when a key is close.
  (ml_collections' own error for these is a KeyError with a traceback.)"""
  spec = next((a.split("=", 1)[1] for a in argv if re.match(r"^--?config=", a)), None)
  if spec is None:
    return []
  path, _, arg = spec.partition(":")
  config = load_experiment(path, arg or None)
  bad = []
  for a in argv:
    match = re.match(r"^--?config\.([^=]+)", a)
    if not match:
      continue
    node, parts = config, match.group(1).split(".")
    for i, part in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, known, n=1)
      where = ".".join(["config"] + parts[:i])
      bad.append(f"--config.{match.group(1)}: {where} has no key {part!r}" +
                 (f" (did you mean {close[0]!r}?)" if close else ""))
      break
  return bad


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long a run trains and how often it logs, evaluates and saves, in steps."""
  num_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  steps_per_epoch: int | None = None   # None: the task has no notion of an epoch

  @property
  def num_epochs(self) -> float | None:
    return None if not self.steps_per_epoch else self.num_steps / self.steps_per_epoch


INTERVALS = ("log_every", "eval_every", "checkpoint_every")


def resolve_schedule(train: ml_collections.ConfigDict, steps_per_epoch: int | None
                     ) -> Schedule:
  """The run's schedule in steps from `config.train` and the task's batches per epoch.

  `num_epochs > 0` gives num_steps = ceil(num_epochs * steps_per_epoch) (it wins over
  `num_steps`); `<name>_epochs > 0` gives that interval as max(1, round(x * steps_per_epoch))
  steps. Raises ValueError naming the key when epochs are asked of a task without epochs.
  """
  wanted = {k: train[k] for k in ["num_epochs"] + [f"{n}_epochs" for n in INTERVALS]}
  for key, value in wanted.items():
    check(value >= 0, f"train.{key}", value, ">= 0 (0 = use the step count)")
    check(not value or steps_per_epoch, f"train.{key}", value,
          "0: this task has no epochs (give the count in steps)")
  def steps(epochs: float, default: int, rounding) -> int:
    return max(1, int(rounding(epochs * steps_per_epoch))) if epochs else default
  return Schedule(
      num_steps=steps(train.num_epochs, train.num_steps, math.ceil),
      **{n: steps(train[f"{n}_epochs"], train[n], round) for n in INTERVALS},
      steps_per_epoch=steps_per_epoch)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the shared keys before any compute.

  Args:
    config: an experiment's config.

  Raises:
    birnn_jax.errors.ConfigError: naming `config.<key>=<value>` and what it must be, for
      any impossible value (a `ValueError`).

  Example:
    >>> from birnn_jax.training import config_lib
    >>> config = config_lib.load_experiment("experiments/synthetic_tagging.py", "smoke")
    >>> config.model.dropout = 1.5
    >>> config_lib.validate(config)
    Traceback (most recent call last):
    ...
    birnn_jax.errors.ConfigError: config.model.dropout=1.5 is invalid: expected a rate in [0, 1).
  """
  m, t, o = config.model, config.train, config.optim
  check(bool(config.task), "task", config.task, "a task module name")
  check(m.cell in cells.CELLS, "model.cell", m.cell, f"one of {sorted(cells.CELLS)}")
  check(m.activation in cells.ACTIVATIONS, "model.activation", m.activation,
        f"one of {sorted(cells.ACTIVATIONS)}")
  for key in ("hidden_size", "num_layers", "embed_size", "unroll"):
    check(m[key] > 0, f"model.{key}", m[key], "a positive integer")
  check(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "a rate in [0, 1)")
  check(m.merge in layers.MERGES, "model.merge", m.merge,
        f"one of {layers.MERGES}")
  check(m.merge != "none" or not m.bidirectional, "model.merge", m.merge,
        "a merge that gives one array ('none' returns a pair, which a head cannot read)")
  check(m.impl in layers.IMPLS, "model.impl", m.impl,
         f"one of {layers.IMPLS}")
  check(m.dtype in DTYPES, "model.dtype", m.dtype, f"one of {DTYPES}")
  check(o.name in optim_lib.OPTIMIZERS, "optim.name", o.name,
        f"one of {optim_lib.OPTIMIZERS}")
  check(o.schedule in optim_lib.SCHEDULES, "optim.schedule", o.schedule,
        f"one of {optim_lib.SCHEDULES}")
  check(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "> 0")
  check(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, ">= 0 (0 disables)")
  check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0")
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints"):
    check(t[key] > 0, f"train.{key}", t[key], "a positive integer")
  check(t.best_mode in ("min", "max"), "train.best_mode", t.best_mode, "'min' or 'max'")
  check(t.nan_policy in ("stop", "skip"), "train.nan_policy", t.nan_policy,
         "'stop' or 'skip'")
  num_seeds = added_key(t, "train.num_seeds")
  check(isinstance(num_seeds, int) and num_seeds >= 1, "train.num_seeds", num_seeds,
        "a positive number of members")
  ema_decay = added_key(t, "train.ema_decay")
  check(0.0 <= ema_decay < 1.0, "train.ema_decay", ema_decay,
        "a decay in [0, 1) (0 disables)")
  epsilon = added_key(t, "train.adversarial_epsilon")
  check(epsilon >= 0, "train.adversarial_epsilon", epsilon, ">= 0 (0 disables)")
  check(config.mesh.data == -1 or config.mesh.data > 0, "mesh.data", config.mesh.data,
        "-1 (all devices) or a positive count")
  mesh_members = added_key(config.mesh, "mesh.members")
  check(isinstance(mesh_members, int) and mesh_members >= 1, "mesh.members", mesh_members,
        "a positive count of devices (1: members on every device)")
  if num_seeds % mesh_members:
    raise errors.ConfigError(
        f"config.train.num_seeds={num_seeds} must divide by config.mesh.members="
        f"{mesh_members}: the members are split evenly over the mesh's 'members' axis.")


# Keys that may change between a run and its resumption (how long, how often, where).
RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "data.dir",
                     "train.num_epochs", "train.log_every_epochs", "train.eval_every_epochs",
                     "train.checkpoint_every_epochs", "smoke",
                     "mesh.data", "mesh.members", "mesh.distributed", "mesh.coordinator_address",
                     "mesh.num_processes", "mesh.process_id")


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  items = config.items() if isinstance(config, dict) else config.to_dict().items()
  out = {}
  for k, v in items:
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v if isinstance(v, dict) else v.to_dict(), f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


# Keys of the model's own groups that do not change what a trained model computes at
# inference: every implementation gives the same numbers, and dropout is off.
_INFERENCE_SAME = ("model.impl", "model.unroll", "model.remat", "model.dropout",
                   "model.embed_dropout", "model.word_dropout", "model.output_dropout",
                   "model.variational_dropout", "data.dir", "data.eval_batch_size",
                   "data.max_length", "data.word_dropout_alpha", "data.pad_to")


def config_differences(saved: dict, config: ml_collections.ConfigDict,
                       ignore: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
  """'key: saved -> now' for every key that differs and matters for resuming (or, with
  `ignore`, that is not one of those keys)."""
  old, new = flatten(saved), flatten(json.loads(config.to_json()))
  keys = sorted((set(old) | set(new)) - set(ignore))
  # A run saved before a key existed still resumes while the key keeps that meaning.
  value = lambda flat, k: flat.get(k, ADDED_KEYS.get(k, "<absent>"))
  return [f"{k}: {value(old, k)!r} -> {value(new, k)!r}"
          for k in keys if value(old, k) != value(new, k)]


def model_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """`config_differences` in what the trained model computes: the task and the `model` and
  `data` groups, less the keys that only training reads (`_INFERENCE_SAME`). What a given
  `--config` may not change of a trained run that predicts, evaluates or exports."""
  keys = set(flatten(saved)) | set(flatten(json.loads(config.to_json())))
  ignore = tuple(k for k in keys if k in _INFERENCE_SAME
                 or not (k == "task" or k.startswith(("model.", "data."))))
  return config_differences(saved, config, ignore)
