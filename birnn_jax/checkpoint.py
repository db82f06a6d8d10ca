"""Checkpoints with orbax: the last N steps plus the best by a metric, atomic saves (a killed
save is never loaded), automatic resume, and a guard against resuming a different config."""

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

# Keys that may change between a run and its resumption (how long, how often, where).
RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "data.dir",
                     "mesh.data", "mesh.distributed", "mesh.coordinator_address",
                     "mesh.num_processes", "mesh.process_id")


def make_manager(workdir: str | pathlib.Path,
                 train: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """workdir/checkpoints, keeping `train.keep_checkpoints` latest plus the best by
  `train.best_metric` (`train.best_mode` 'min' | 'max')."""
  policies = ocp.checkpoint_managers
  best = policies.BestN(get_metric_fn=lambda m: m[train.best_metric],
                        reverse=train.best_mode == "min", n=1,
                        keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(
          [policies.LatestN(train.keep_checkpoints), best]),
      create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints",
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state, metrics: dict | None = None):
  """Saves `state` (a pytree) at `step`; `metrics` rank it for the best-checkpoint policy."""
  manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, target, step: int | None = None):
  """Restores the latest (or given) step into the structure and shardings of `target`."""
  step = manager.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  items = config.items() if isinstance(config, dict) else config.to_dict().items()
  out = {}
  for k, v in items:
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v if isinstance(v, dict) else v.to_dict(), f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'key: saved -> now' for every key that differs and matters for resuming."""
  old, new = flatten(saved), flatten(json.loads(config.to_json()))
  keys = sorted((set(old) | set(new)) - set(RESUMABLE_CHANGES))
  return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
          for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]
