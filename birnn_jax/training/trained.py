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
                inference: bool = False, config: ml_collections.ConfigDict | None = None):
  """(task, params) of the trained run in `workdir`: its saved config, its task built from
  it, and the latest checkpoint's parameters (the moving average when the run kept one).

  Args:
    workdir: a trained run's workdir.
    task: the task the run must be (e.g. 'bilm'); checked before anything is built.
    inference: build the task for predicting only, from the workdir alone (its saved
      vocabularies): no corpus is read.
    config: the run's config (e.g. with predict.* keys changed on the command line);
      None reads the one the run saved.

  Raises:
    errors.NoCheckpointError: no config.json or no checkpoint in the workdir.
    errors.WorkdirMismatchError: the run is of another task than `task`.
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
  if seeds > 1:
    raise errors.InputError(
        f"{pathlib.Path(workdir)} holds {seeds} members (train.num_seeds={seeds}): predicting, "
        "evaluating a file, exporting and frozen features read one-seed runs only for now; "
        "--mode=eval (without --input) evaluates every member.")
  run_task = tasks.get_task_class(config.task)(config, workdir, restore_run=restore_run,
                                               inference=inference)
  model = run_task.model()
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  ema = config_keys.added_key(config.train, "train.ema_decay") > 0
  inputs = run_task.model_inputs(run_task.example_batch())
  abstract = jax.eval_shape(lambda key: optim.init_state(model, tx, inputs, key, ema=ema),
                            jax.random.key(0))
  state = ckpt_lib.restore_latest(workdir, config.train, abstract)
  return run_task, optim.eval_params(state)
