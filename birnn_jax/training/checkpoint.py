"""Checkpoints with orbax: the last N steps plus the best by a metric, atomic saves (a killed
save is never loaded), automatic resume, and a guard against resuming a different config.

What survives what:
- orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a
  kill -9 mid-save leaves only a tmp folder, which is never loaded and is removed when the next
  manager opens the folder (`cleanup_tmp_directories`).
- Saves may finish in the background (`save(..., wait=False)`, orbax's async checkpointing):
  the state is copied to host memory before `save` returns, so training goes on (and may
  donate the state's buffers) while the files are written; the step still appears only once
  complete. The next `save`, or `wait_for_saves`, waits for it and reports its errors.
- A step folder that exists but cannot be read (a deletion cut short, a damaged disk) is moved
  aside to `<step>.unreadable-<timestamp>` by `restore`, which then resumes from the step
  before.
- Host-side values that belong with a step (the trainer's partial metric sums since the last
  log row) go to `checkpoints/host_state.json`, written atomically *before* the step's save
  starts (and after the previous save has finished), so every complete checkpoint has its
  entry.
- An unwritable or full workdir raises `WorkdirError` naming the folder, not a traceback from
  deep inside orbax or tensorstore.
"""

import contextlib
import json
import os
import pathlib
import re
import time

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from birnn_jax import errors
from birnn_jax.errors import WorkdirError  # re-exported

HOST_STATE = "host_state.json"
READER_RETRIES = 10   # a reader lists the steps again while a live run deletes old ones




def io_problem(error: BaseException) -> str | None:
  """'No space left on device' etc. when `error` (or what caused it) is a file-system error;
  None for anything else. tensorstore reports OS errors as ValueError('... [os_error_code=28]')."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and not isinstance(error, WorkdirError):
      return error.strerror or str(error)
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
      return os.strerror(int(match.group(1)))
    error = error.__cause__ or error.__context__
  return None


def ensure_writable(workdir: str | pathlib.Path, probe: bool = True) -> pathlib.Path:
  """Creates `workdir` if needed and (with `probe`) proves it writable with a small probe
  file, written, synced and removed. Raises WorkdirError naming the folder otherwise."""
  workdir = pathlib.Path(workdir)
  probe_file = workdir / f".write_probe.{os.getpid()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if probe:
      with open(probe_file, "wb") as f:
        f.write(b"birnn_jax write probe\n")
        f.flush()
        os.fsync(f.fileno())
  except OSError as e:
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(workdir) else ""
    raise WorkdirError(f"cannot write to the workdir {workdir}: {e.strerror or e}{where}. "
                       "Pick a writable --workdir, or free some space.") from e
  finally:
    if probe:
      with contextlib.suppress(OSError):
        probe_file.unlink()
  return workdir


def make_manager(workdir: str | pathlib.Path, train: ml_collections.ConfigDict,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """workdir/checkpoints, keeping `train.keep_checkpoints` latest plus the best by
  `train.best_metric` (`train.best_mode` 'min' | 'max'). Leftover tmp folders of saves that
  were killed are removed, except with `read_only` (a reader, e.g. eval, of a workdir that
  a live run may be saving into: its tmp folder is a save in progress), which creates
  nothing either. A read-only manager must not be saved with."""
  policies = ocp.checkpoint_managers
  best = policies.BestN(get_metric_fn=lambda m: m[train.best_metric],
                        reverse=train.best_mode == "min", n=1,
                        keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(
          [policies.LatestN(train.keep_checkpoints), best]),
      create=not read_only, enable_async_checkpointing=True,
      cleanup_tmp_directories=not read_only)
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  for attempt in range(READER_RETRIES):
    try:
      return ocp.CheckpointManager(directory, options=options)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if (problem := io_problem(e)) is None:
        raise
      # A live run deletes its old steps while a reader lists them: list again.
      if read_only and attempt + 1 < READER_RETRIES and _vanished(e) and directory.is_dir():
        time.sleep(0.05 * (attempt + 1))
        continue
      raise WorkdirError(f"cannot open the checkpoint folder {directory}: {problem}.") from e


def _vanished(error: BaseException) -> bool:
  """Whether `error` (or what caused it) says a path is gone (a step deleted meanwhile)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
      return True
    error = error.__cause__ or error.__context__
  return False


def save(manager: ocp.CheckpointManager, step: int, state, metrics: dict | None = None,
         host_state: dict | None = None, wait: bool = True):
  """Saves `state` (a pytree) at `step`; `metrics` rank it for the best-checkpoint policy;
  `host_state` (JSON) is returned by `restored_host_state(manager, step)`. With `wait=False`
  it returns once `state` is copied to host memory and the files are written in the
  background (see the module docstring).

  Raises WorkdirError naming the folder and step when the disk refuses the write (of this
  step, or of the previous one still in the background); the earlier checkpoints stay
  intact: a step only appears once completely written."""
  wait_for_saves(manager)  # first, so host_state.json never races a write in flight
  with _disk_errors_named(manager, step):
    if host_state is not None and jax.process_index() == 0:
      _write_host_state(manager, step, host_state)
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  if wait:
    wait_for_saves(manager)


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
  """Blocks until a save still writing in the background is complete; WorkdirError naming
  its step if the disk refused it."""
  with _disk_errors_named(manager, manager.latest_step()):  # one in flight is the latest
    manager.wait_until_finished()


@contextlib.contextmanager
def _disk_errors_named(manager: ocp.CheckpointManager, step: int | None):
  """File-system errors inside become a WorkdirError naming the folder and `step`."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-exception-caught
    if (problem := io_problem(e)) is None:
      raise
    raise WorkdirError(
        f"could not save the checkpoint of step {step} in {manager.directory}: {problem}. "
        "Earlier checkpoints are intact; fix the disk and re-run the same command to "
        "resume.") from e


def restore(manager: ocp.CheckpointManager, target, step: int | None = None,
            read_only: bool = False):
  """Restores the latest (or given) step into the structure and shardings of `target`.

  Without `step`: if the latest step cannot be read, it is moved aside (`<step>.unreadable`)
  with a warning and the step before is tried, and so on. If no step can be read, raises the
  latest step's error and moves nothing (then the cause is the code or config, not the disk).
  With `read_only` (a reader of a workdir that a live run may be writing) nothing is moved,
  and a step that the run deleted while it was read (keep_checkpoints) is not held against
  it: the steps are listed again.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  load = lambda s: manager.restore(s, args=ocp.args.StandardRestore(abstract))
  if step is not None:
    return load(step)
  if read_only:
    manager.reload()  # the steps listed when it was opened may be gone by now
  if manager.latest_step() is not None:
    check_fits(manager, manager.latest_step(), abstract)
  failed, steps, relisted = [], sorted(manager.all_steps(), reverse=True), 0
  while steps:
    s = steps.pop(0)
    try:
      restored = load(s)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if read_only and relisted < 10:
        manager.reload()
        if s not in manager.all_steps():
          relisted += 1
          done = {f for f, _ in failed}
          steps = [t for t in sorted(manager.all_steps(), reverse=True) if t not in done]
          continue
      logging.warning("Checkpoint %d in %s cannot be read (%s: %s); trying the one before.",
                      s, manager.directory, type(e).__name__, str(e).splitlines()[0][:300])
      failed.append((s, e))
      continue
    if failed and not read_only:
      _move_aside(manager, [f for f, _ in failed])
    return restored
  if failed:
    raise failed[0][1]
  raise errors.NoCheckpointError(f"no checkpoint in {manager.directory}.")


def _leaf_names(tree) -> dict[str, tuple]:
  """{'params.dense.kernel': shape} of a state's arrays (or their saved metadata)."""
  def part(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {".".join(part(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if hasattr(leaf, "shape")}


def check_fits(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
  """Refuses a checkpoint that is readable but holds another model than `abstract_state`
  (other shapes or arrays, e.g. a run of another config): that is not a damaged step, so
  no older one is tried. A step whose metadata cannot be read is left to `restore`.

  Raises:
    errors.WorkdirMismatchError: listing the first differing arrays.
  """
  try:   # the saved item's own metadata (`save` writes the state as the item 'default')
    path = pathlib.Path(manager.directory) / str(step) / "default"
    stored = _leaf_names(ocp.StandardCheckpointHandler().metadata(path))
  except Exception:  # pylint: disable=broad-exception-caught
    return
  if not stored:
    return
  wanted = _leaf_names(abstract_state)
  names = sorted(set(stored) | set(wanted), key=lambda n: (not n.startswith("params."), n))
  diffs = [f"{name}: saved {stored.get(name, 'absent')} -> this model "
           f"{wanted.get(name, 'absent')}" for name in names
           if stored.get(name) != wanted.get(name)]
  if diffs:
    more = f"\n  ... and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise errors.WorkdirMismatchError(
        f"checkpoint {step} in {manager.directory} holds another model than the one "
        f"requested (its config differs); {len(diffs)} arrays differ:\n  " +
        "\n  ".join(diffs[:8]) + more)


def restore_latest(workdir: str | pathlib.Path, train: ml_collections.ConfigDict,
                   abstract_state):
  """The latest checkpoint of `workdir`, read without writing anything there (a live run may
  own it), into `abstract_state` (e.g. `jax.eval_shape(optim.init_state, ...)`), placed on
  the default device. For readers that need no trainer (frozen features of another run).

  Raises:
    errors.NoCheckpointError: the workdir has no checkpoint.
  """
  manager = make_manager(workdir, train, read_only=True)
  if manager.latest_step() is None:
    raise errors.NoCheckpointError(f"no checkpoint in {manager.directory}; train first "
                                   "(--mode=train) with the same --workdir.")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        abstract_state)
  return restore(manager, target, read_only=True)


def restored_host_state(manager: ocp.CheckpointManager, step: int) -> dict:
  """The `host_state` saved with `step`, or {} (none saved, or saved by an older version)."""
  try:
    entries = json.loads((pathlib.Path(manager.directory) / HOST_STATE).read_text())
  except (OSError, ValueError):
    return {}
  return entries.get(str(step), {})


def _write_host_state(manager: ocp.CheckpointManager, step: int, host_state: dict) -> None:
  path = pathlib.Path(manager.directory) / HOST_STATE
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError):
    entries = {}
  keep = {str(s) for s in manager.all_steps()}
  entries = {k: v for k, v in entries.items() if k in keep}
  entries[str(step)] = host_state
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(entries, sort_keys=True) + "\n")
  tmp.replace(path)


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  if jax.process_index() == 0:
    for s in steps:
      src = pathlib.Path(manager.directory) / str(s)
      dst = src.with_name(f"{s}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
      try:
        src.rename(dst)
        logging.warning("Moved the unreadable checkpoint %s aside to %s.", src, dst.name)
      except OSError as e:
        logging.warning("Could not move the unreadable checkpoint %s aside: %s", src, e)
  manager.reload()
