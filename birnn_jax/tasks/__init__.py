"""Tasks: each module provides a `Task` class (see `base.Task`). The trainer finds a task by
its module name (`config.task`), so adding a task never touches the trainer."""

import importlib

from birnn_jax import errors

from birnn_jax.tasks.base import Task


def get_task_class(name: str) -> type[Task]:
  try:
    module = importlib.import_module(f"birnn_jax.tasks.{name}")
  except ModuleNotFoundError as e:
    if e.name == f"birnn_jax.tasks.{name}":
      raise errors.ConfigError(f"config.task={name!r}: no module birnn_jax/tasks/{name}.py.") from e
    raise
  return module.Task
