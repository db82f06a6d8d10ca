"""A trained run read back from its workdir alone: its config, its task and its parameters.

For readers that need no trainer: frozen features of another run (POS on a biLM), and any
code that wants a trained model. Nothing is written into the workdir (a live run may own it).
"""

import json
import pathlib

import jax
import ml_collections

from birnn_jax import errors
from birnn_jax import tasks
from birnn_jax.tasks import config_keys
from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import ensemble
from birnn_jax.training import optim


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`.

  Raises:
    birnn_jax.errors.NoCheckpointError: the workdir has no config.json.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise errors.NoCheckpointError(
        f"{path} does not exist: expected the workdir of a trained run (python launch.py "
        "--config=experiments/<name>.py --workdir=...).")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_run(workdir: str | pathlib.Path, task: str | None = None,
                inference: bool = False, config: ml_collections.ConfigDict | None = None,
                member: int | str | None = None):
  """(task, params) of the trained run in `workdir`: its saved config, its task built from
  it, and the latest checkpoint's parameters (the moving average when the run kept one).

  Args:
    workdir: a trained run's workdir.
    task: the task the run must be (e.g. 'bilm'); checked before anything is built.
    inference: build the task for predicting only, from the workdir alone (its saved
      vocabularies): no corpus is read.
    config: the run's config (e.g. with predict.* keys changed on the command line);
      None reads the one the run saved.
    member: of a run of several members (`train.num_seeds` > 1), which one: its index
      (0 = the first seed), 'best' (the best on the first eval split by
      `train.best_metric`, from the run's results.json) or 'ensemble' (all of them as one
      model, `ensemble.Ensemble`: the params are the members' stacked [N, ...] and the
      task predicts with the ensemble); None is the ensemble for a tagger, and must name
      one member for other tasks. A one-seed run is member 0 whatever is named.

  Raises:
    errors.NoCheckpointError: no config.json or no checkpoint in the workdir.
    errors.WorkdirMismatchError: the run is of another task than `task`.
    errors.InputError: no such member, or none named for a run of several.
  """
  config = read_config(workdir) if config is None else config
  if task is not None and config.get("task") != task:  # a saved run's JSON: may lack keys
    raise errors.WorkdirMismatchError(
        f"{pathlib.Path(workdir) / 'config.json'} is a {config.get('task')!r} run, not a "
        f"{task!r} run.")
  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
    raise errors.NoCheckpointError(f"no checkpoint in {pathlib.Path(workdir) / 'checkpoints'}; "
                                   "train first (--mode=train) with the same --workdir.")
  seeds = config_keys.added_key(config.train, "train.num_seeds")
  index = member_index(workdir, config, member)
  run_task = tasks.get_task_class(config.task)(config, workdir, restore_run=restore_run,
                                               inference=inference)
  model = run_task.model()
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  ema = config_keys.added_key(config.train, "train.ema_decay") > 0
  inputs = run_task.model_inputs(run_task.example_batch())
  abstract = jax.eval_shape(lambda key: optim.init_state(model, tx, inputs, key, ema=ema),
                            jax.random.key(0))
  if seeds > 1:   # the checkpoint holds every member: [N, ...]
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((seeds, *a.shape), a.dtype),
                            abstract)
  if index == ensemble.NAME and not ensemble.supports(run_task):
    raise errors.InputError(
        f"{pathlib.Path(workdir)} holds {seeds} members of a {config.task!r} run, whose "
        f"members do not predict as an ensemble (only the taggers' do): name one, "
        f"--member= {_member_names(config, with_ensemble=False)}.")
  state = ckpt_lib.restore_latest(workdir, config.train, abstract)
  if index == ensemble.NAME:
    ensemble.use_ensemble(run_task)
  elif seeds > 1:
    state = jax.tree.map(lambda x: x[index], state)
  return run_task, optim.eval_params(state)


def _member_names(config, with_ensemble: bool = True) -> str:
  """What `member` can name in a run of `config`, for messages."""
  seeds = config_keys.added_key(config.train, "train.num_seeds")
  indices = f"0..{seeds - 1} (seeds {config.seed}..{config.seed + seeds - 1})"
  return f"{indices}, 'best' or 'ensemble'" if with_ensemble else f"{indices} or 'best'"


def member_index(workdir, config: ml_collections.ConfigDict, member: int | str | None
                 ) -> int | str:
  """The index of `member` (see `restore_run`) in the run of `workdir`, or
  `ensemble.NAME` for the ensemble of its members (`member` None or 'ensemble').

  Raises:
    errors.InputError: no such member.
  """
  seeds = config_keys.added_key(config.train, "train.num_seeds")
  names = _member_names(config)
  if seeds == 1 and member in (None, ensemble.NAME):
    return 0
  if member in (None, ensemble.NAME):
    return ensemble.NAME
  if member == "best":
    results = pathlib.Path(workdir) / "results.json"
    if not results.is_file():
      raise errors.InputError(f"member='best' needs {results}: the run has not finished.")
    per_member = json.loads(results.read_text()).get("members") or [{"best_value": 0.0}]
    values = [m.get("best_value") for m in per_member]
    if None in values:
      raise errors.InputError(f"member='best': {results} has no member's best evaluation.")
    pick = max if config.train.best_mode == "max" else min
    return values.index(pick(values))
  try:
    index = int(member)
  except ValueError:
    index = -1
  if not 0 <= index < seeds:
    raise errors.InputError(f"member={member!r}: {pathlib.Path(workdir)} holds members {names}.")
  return index
