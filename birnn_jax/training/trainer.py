"""The generic trainer: one model's run, from its config and workdir (`Trainer`).

It knows no task by name: `config.task` names a module under `birnn_jax.tasks` whose `Task`
provides data, model and metrics (see `tasks/base.py`). The train state is a plain dict
`{"step", "params", "opt_state"}` that orbax saves; steps are pure jitted functions
(`steps.make_steps`) with explicit shardings on a ("data",) mesh, compiled ahead on a
thread (`ahead_of_time`). Resume order: the workdir's latest checkpoint, else a fresh start.

`Trainer.train` keeps the devices busy: between log, eval and save steps the host never
waits for them (batches are made and placed ahead on a thread, `prefetch`; each step's
metrics stay on the devices in a `metrics.MetricWindow`; periodic checkpoints are written
in the background). Non-finite steps are found when the window is settled, before any row
or save, so a non-finite state is never saved. The experiment around one or several such
runs (variants, summaries, eval, predict, export) is the driver's, `train`.
"""

import contextlib
import functools
import itertools
import json
import pathlib
import signal
import threading
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from birnn_jax import errors
from birnn_jax import tasks
from birnn_jax.tasks import losses
from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import compile_log
from birnn_jax.training import config_lib
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import optim
from birnn_jax.training import prefetch
from birnn_jax.training import sharding
from birnn_jax.training import trained
from birnn_jax.training.ahead_of_time import AheadOfTime
from birnn_jax.training.steps import check_best_metric, steps_from_config


NonFiniteError = errors.NonFiniteError
ConfigMismatchError = errors.WorkdirMismatchError   # the workdir holds another config's run


# Per-step metrics kept on the devices at most this long between two fetches (long log
# intervals): bounds their memory and how late a non-finite step is noticed.
MAX_PENDING_STEPS = 256


def is_main_process() -> bool:
  return jax.process_index() == 0


@contextlib.contextmanager
def stop_requested_on_signals():
  """Yields a dict whose 'signal' is set when SIGTERM or SIGINT arrives (so the loop can
  save and exit cleanly instead of dying mid-step)."""
  flag = {"signal": None}
  def handler(signum, frame):
    del frame
    flag["signal"] = signal.Signals(signum).name
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


_TRAINERS = itertools.count()


class Trainer:
  """Holds what one run needs: task, model, mesh, jitted steps, checkpoint manager."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
               read_only: bool = False):
    """`read_only` (eval, predict, frozen features): the workdir is only read, so it may be a
    live training run's: nothing is made or cleaned up there, and a workdir without a
    checkpoint is refused before the task is built (tasks save vocabularies on first use)."""
    config_lib.validate(config)
    sharding.maybe_initialize_distributed(config.mesh)  # before any other use of JAX
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.read_only = read_only
    self.mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.train.batch_size, self.mesh)
    if is_main_process() and not read_only:
      # A clear error now, not deep inside orbax later. Only train() proves it writable.
      ckpt_lib.ensure_writable(self.workdir, probe=False)
    self.manager = ckpt_lib.make_manager(self.workdir, config.train, read_only=read_only)
    if read_only and self.manager.latest_step() is None:
      raise errors.NoCheckpointError(f"no checkpoint in {self.manager.directory}; train first "
                                     "(--mode=train) with the same --workdir.")
    self.task = tasks.get_task_class(config.task)(config, self.workdir,
                                                  restore_run=trained.restore_run)
    self.model = self.task.model()
    self.schedule = config_lib.resolve_schedule(config.train, self.task.steps_per_epoch())
    if self.schedule.steps_per_epoch:
      logging.info("%d steps per epoch (global batch %d): training %d steps (%.2f epochs).",
                   self.schedule.steps_per_epoch, config.train.batch_size,
                   self.schedule.num_steps, self.schedule.num_epochs)
    self.tx = optim.make_optimizer(config.optim, self.schedule.num_steps)
    repl = sharding.replicated(self.mesh)
    data = sharding.batch_sharding(self.mesh)
    train_step, eval_step = steps_from_config(self.task, self.model, self.tx, config.train)
    self.train_step = jax.jit(train_step, in_shardings=(repl, data, repl),
                              out_shardings=(repl, repl), donate_argnums=0)
    self.eval_step = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
    self._ready: dict[str, threading.Event] = {}   # step -> compiled ahead (`prepare`)
    self._inputs: tuple | None = None               # what `init_state` starts from
    self._own_compiler: AheadOfTime | None = None
    self.compile_label = f"{self.workdir} (trainer {next(_TRAINERS)})"   # compile_log's
    self._last_eval: dict[str, tuple] = {}     # split -> (params, metrics, ids): `evaluate`

  def init_inputs(self) -> tuple:
    """(key, first training batch on the devices): what `init_state` initialises from."""
    return self.init_key(), self.put(self.train_batch(0))

  # What a run of several members (`members.MembersTrainer`) stacks: the keys, the batches
  # and where they are placed.

  def init_key(self) -> jax.Array:
    """The initialisation's PRNG key."""
    return jax.random.key(self.config.seed)

  def step_rng(self) -> jax.Array:
    """The key each train step folds its step number into (dropout)."""
    return jax.random.key(self.config.seed + 1)

  def train_batch(self, step: int) -> dict:
    """Training batch `step` on the host (the task's, a function of seed and step)."""
    return self.task.train_batch(step)

  def eval_batches(self, split: str) -> list:
    """The split's evaluation batches on the host (the task's)."""
    return self.task.eval_batches(split)

  def put(self, batch):
    """A host batch on the devices, sharded along the batch axis."""
    return sharding.put_batch(batch, self.mesh)

  @functools.cached_property
  def _init(self):
    """The jitted initialiser; one object, so that `prepare`'s trace of it is reused."""
    def init(key, batch):
      return optim.init_state(self.model, self.tx, self.task.model_inputs(batch), key,
                              ema=config_lib.added_key(self.config.train, "train.ema_decay") > 0)
    return jax.jit(init, out_shardings=sharding.replicated(self.mesh))

  def init_state(self, inputs: tuple | None = None) -> dict:
    """A fresh state (`optim.init_state`) from `inputs` (default `init_inputs()`)."""
    return self._init(*(inputs or self.init_inputs()))

  def batch_spec(self, batch):
    """The shapes, dtypes and data sharding that `sharding.put_batch` gives `batch`."""
    data = sharding.batch_sharding(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), jax.dtypes.canonicalize_dtype(np.asarray(x).dtype), sharding=data), batch)

  def prepare(self, force_fresh: bool = False, compiler: AheadOfTime | None = None) -> None:
    """What `train` does before it computes: checks that the workdir can be written and holds
    no run of another config (`check_workdir`), makes the initial inputs, and queues the train step's compile, then the eval step's, on
    `compiler` (one of its own by default), for a state initialised from those inputs and
    batches shaped like theirs. XLA then compiles them while this thread initialises
    (compiles `init`, restores) and the first steps train; `run_experiment` queues every
    variant's on one compiler, so the next variant compiles while this one trains (2 cores,
    compilation cache off: POS `:smoke`'s first step 23 -> 17 s; NER `:smoke`'s three
    variants 65 -> 49 s). The jitted steps then find the programs in JAX's own caches."""
    with compile_log.attributed_to(self.compile_label):
      self._prepare(force_fresh, compiler)

  def _prepare(self, force_fresh: bool, compiler: AheadOfTime | None) -> None:
    if is_main_process():
      ckpt_lib.ensure_writable(self.workdir)  # read-only or full: say so before any compute
    self.check_workdir(force_fresh)
    self._inputs = inputs = self.init_inputs()
    # One of its own is cancelled when `train` returns; a shared one, by whoever shares it.
    self._own_compiler = AheadOfTime() if compiler is None else None
    compiler = compiler or self._own_compiler
    state = jax.eval_shape(self._init, *inputs)
    rng = self.step_rng()
    eval_batch = next(iter(self.eval_batches(self.task.eval_splits[0])), None)

    def attributed(compile_fn):
      def run():
        with compile_log.attributed_to(self.compile_label):
          compile_fn()
      return run
    self._ready = {"train": compiler.add(attributed(
        lambda: self.train_step.lower(state, inputs[1], rng).compile()))}
    if eval_batch is not None:
      self._ready["eval"] = compiler.add(attributed(lambda: self.eval_step.lower(
          optim.eval_params(state), self.batch_spec(eval_batch)).compile()))

  def _compiled(self, step: str) -> None:
    """Waits for `step`'s compile ahead, if one was queued (else XLA compiles it twice)."""
    if step in self._ready:
      self._ready[step].wait()

  def restore_or_init(self, force_fresh: bool = False) -> dict:
    """The latest readable checkpoint's state, else a fresh one; the workdir is checked
    first (`check_workdir`)."""
    self.check_workdir(force_fresh)
    return self._restore_or_init(self.init_inputs())

  def _restore_or_init(self, inputs: tuple) -> dict:
    state = self.init_state(inputs)
    if self.manager.latest_step() is None:
      return state
    logging.info("Resuming from %s at step %d.", self.manager.directory,
                 self.manager.latest_step())
    return ckpt_lib.restore(self.manager, state)

  def check_workdir(self, force_fresh: bool = False) -> None:
    """A workdir holding a run of another config is refused (before any compute) unless
    `force_fresh`, which deletes that run's checkpoints and metrics and starts over; a run of
    the same config always resumes, so re-running an interrupted `--force_fresh` command
    continues where it stopped."""
    saved_config = self.workdir / "config.json"
    if self.manager.latest_step() is not None and saved_config.exists():
      try:
        diffs = config_lib.config_differences(json.loads(saved_config.read_text()), self.config)
      except ValueError as e:  # e.g. cut short by a kill under an older, non-atomic writer
        diffs = [f"{saved_config} is unreadable: {e}"]
      if diffs and not force_fresh:
        raise ConfigMismatchError(
            f"{self.workdir} holds a run of a different config; refusing to resume. "
            "Differences (saved -> now):\n  " + "\n  ".join(diffs) +
            "\nUse another --workdir, or --force_fresh to start over in this one.")
      if diffs:
        logging.warning("--force_fresh: deleting the run of another config in %s.",
                        self.workdir)
        for step in self.manager.all_steps():
          self.manager.delete(step)
        for name in ("metrics.jsonl", "results.json"):
          if is_main_process():
            (self.workdir / name).unlink(missing_ok=True)

  def evaluate(self, params, split: str, predictions: bool = False):
    """Exact means over the whole split (sums accumulated in float64 on the host); with
    `predictions`, (means, the task's `eval_ids` of each batch on the host). The last pass
    over each split is kept, so asking again for the same params reads it."""
    def run():
      self._compiled("eval")
      totals, ids = sum_batches(self.eval_step, params, self.eval_batches(split), self.put)
      return self.task.derived_metrics(losses.means(totals)), ids
    means, ids = kept_evaluation(self._last_eval, split, params, run)
    return (dict(means), ids) if predictions else dict(means)

  def eval_metric_names(self, params) -> list[str] | None:
    """The metrics `evaluate` reports, from the shapes of the eval step's outputs alone
    (nothing runs), so that `train` can check `best_metric` before the first step; None
    for an empty eval split."""
    batch = next(iter(self.eval_batches(self.task.eval_splits[0])), None)
    if batch is None:
      return None
    # With the batch's sharding, the first real evaluation reuses this trace.
    sums, _ = jax.eval_shape(self.eval_step, params, self.batch_spec(batch))
    return list(self.task.derived_metrics(losses.means({k: 1.0 for k in sums})))

  def train(self, force_fresh: bool = False) -> dict:
    """Trains to self.schedule.num_steps (resuming if the workdir has a checkpoint).

    Returns the final metrics on every eval split, `{split}_{metric}`, also written to
    workdir/results.json; after SIGTERM/SIGINT, `{"stopped_at_step", "stopped_by"}`.
    """
    try:
      with compile_log.attributed_to(self.compile_label):
        return self._train(force_fresh)
    finally:   # stopped early (an error, a signal): compile nothing more for it
      if self._own_compiler is not None:
        self._own_compiler.cancel()

  def _train(self, force_fresh: bool) -> dict:
    if not self._ready:
      self.prepare(force_fresh)
    state = self._restore_or_init(self._inputs)   # `prepare` checked the workdir
    names = self.eval_metric_names(state["params"])
    if names is not None:  # a misspelt best metric fails now, not at the first evaluation
      check_best_metric(self.config.train.best_metric, names)
    first_step = int(np.ravel(jax.device_get(state["step"]))[0])   # members: all equal
    if is_main_process():
      write_json(self.workdir / "config.json", json.loads(self.config.to_json()))
    writer = self.metric_writer()
    writer.truncate_after(first_step)
    # The metric sums since the last log row travel with each checkpoint, so the rows after
    # a resume equal an uninterrupted run's even if it stopped between two log steps.
    host_state = ckpt_lib.restored_host_state(self.manager, first_step) if first_step else {}
    window = self.metric_window(host_state.get("window", {}))
    self.restore_host_state(host_state)
    # Training time is summed over resumes: each checkpoint holds the time up to it, and
    # the results report the last one's (the last step is always saved).
    self._clock = (time.monotonic(), float(host_state.get("train_seconds", 0.0)))
    self._seconds_saved = self._clock[1]
    try:
      state, step, stopped_by = self._loop(state, first_step, window, writer)
    finally:
      writer.close()
    if stopped_by:
      logging.warning("Received %s at step %d: saved a checkpoint in %s. Re-run the same "
                      "command to resume from step %d.", stopped_by, step,
                      self.manager.directory, step)
      return {"stopped_at_step": step, "stopped_by": stopped_by}
    return self._final_results(optim.eval_params(state), step, self._seconds_saved)

  def _train_seconds(self) -> float:
    """Seconds spent training up to now, summed over every process that resumed the run."""
    start, before = self._clock
    return before + time.monotonic() - start

  def restore_host_state(self, host_state: dict) -> None:
    """What else a subclass keeps on the host between checkpoints, from the `host_state`
    saved with the checkpoint it resumes from (`extra_host_state`)."""
    del host_state

  def extra_host_state(self) -> dict:
    """What a subclass saves with each checkpoint beside the metric window (JSON)."""
    return {}

  def metric_writer(self) -> metrics_lib.MetricWriter:
    """Where the run's metric rows go (metrics.jsonl, TensorBoard)."""
    return metrics_lib.MetricWriter(self.workdir, enabled=is_main_process())

  def metric_window(self, saved: dict) -> metrics_lib.MetricWindow:
    """The training metrics since the last row, from a checkpoint's `saved` window."""
    return metrics_lib.MetricWindow.restore(saved)

  def _loop(self, state, step: int, window: metrics_lib.MetricWindow,
            writer: metrics_lib.MetricWriter) -> tuple[dict, int, str | None]:
    """Trains from `step` to the end: (state, last step, the stop signal's name or None).

    The host waits for the devices only at log, eval and save steps: batches come from a
    prefetch thread, each step's metrics stay on the devices in `window` until one of those
    steps, and periodic checkpoints are written in the background.
    """
    num_steps = self.schedule.num_steps
    progress = metrics_lib.Progress(step, num_steps)
    rng = self.step_rng()
    feed = prefetch.Prefetcher(self.train_batch, self.put, step, num_steps)
    with stop_requested_on_signals() as stop, feed, self._saves_finished():
      while step < num_steps:
        self._compiled("train")
        state, step_metrics = self.train_step(state, feed.get(step), rng)
        step += 1
        window.add(step, step_metrics)
        # Every process must stop at the same step, or the next collective hangs.
        stop_now = sharding.any_process(stop["signal"] is not None)
        due = self._due(step, stop_now)
        if due or window.num_pending >= MAX_PENDING_STEPS:
          # Before any row or save: under nan_policy='stop' a non-finite step raises here,
          # so a non-finite state is never logged, evaluated or saved.
          window.settle(self._accept)
        if not due:
          continue
        # Rows wait for the checkpoints before them to be complete: a background write
        # then never spans more than one log interval.
        ckpt_lib.wait_for_saves(self.manager)
        eval_metrics = self._log(step, optim.eval_params(state), window, writer, progress, due)
        if "save" in due:
          self._save(step, state, window, eval_metrics, wait=stop_now or step == num_steps)
        if stop_now:
          return state, step, stop["signal"] or "a stop signal on another process"
    return state, step, None

  def _due(self, step: int, stop_now: bool) -> set[str]:
    """What follows step `step`: any of 'log', 'eval', 'save' (all at the last step; a
    save when stopping)."""
    sched, last = self.schedule, step == self.schedule.num_steps
    due = {name for name, every in (("log", sched.log_every), ("eval", sched.eval_every),
                                    ("save", sched.checkpoint_every))
           if last or step % every == 0}
    return (due | {"save"}) if stop_now else due

  def _accept(self, step: int, step_metrics: dict) -> bool:
    """Whether step `step`'s update counts (`MetricWindow.settle`): False for a non-finite
    step, skipped under nan_policy='skip' (with a warning); under 'stop', NonFiniteError
    naming the step and what became non-finite."""
    if bool(step_metrics["finite"]):
      return True
    what = [k for k in ("loss", "grad_norm") if not np.isfinite(step_metrics[k])]
    if not bool(step_metrics["params_finite"]):
      what.append("the updated parameters")
    values = ", ".join(f"{k}={float(step_metrics[k])}" for k in ("loss", "grad_norm"))
    message = f"step {step}: {' and '.join(what) or 'loss'} became non-finite ({values})."
    if self.config.train.nan_policy == "stop":
      # A save still in flight is of a finite state; _saves_finished completes it.
      raise NonFiniteError(
          message + f" Stopping; the last good checkpoint (step "
          f"{self.manager.latest_step()}) in {self.manager.directory} is untouched.")
    logging.warning("%s Skipped this update (nan_policy='skip').", message)
    return False

  def _log(self, step: int, params, window: metrics_lib.MetricWindow,
           writer: metrics_lib.MetricWriter, progress: metrics_lib.Progress,
           due: set[str]) -> dict[str, float]:
    """Writes step `step`'s metrics row (the window's train means at log steps, the first
    eval split's metrics at eval steps) to the workdir and console; returns the eval
    metrics ({} when not evaluated)."""
    row = window.row(self.task.derived_metrics) if "log" in due else {}
    eval_metrics = {}
    if "eval" in due:
      eval_metrics = self.evaluate(params, self.task.eval_splits[0])
      row.update({f"eval_{k}": v for k, v in eval_metrics.items()})
    if row:
      writer.write(step, row)
      progress.report(step, row)
    return eval_metrics

  def _save(self, step: int, state, window: metrics_lib.MetricWindow,
            eval_metrics: dict[str, float], wait: bool) -> None:
    """Checkpoints `state` with the window's unlogged sums; ranked by the best metric
    when this step was evaluated. Without `wait` the files are written in the background."""
    best = self.config.train.best_metric
    name = best.removeprefix("eval_")
    metrics = {best: eval_metrics[name]} if name in eval_metrics else None
    self._seconds_saved = round(self._train_seconds(), 2)
    ckpt_lib.save(self.manager, step, state, metrics, wait=wait, host_state={
        "window": window.saved(), "train_seconds": self._seconds_saved,
        **self.extra_host_state()})

  @contextlib.contextmanager
  def _saves_finished(self):
    """Waits for a checkpoint still being written on the way out of the loop; after an
    error (e.g. NonFiniteError) too, without letting a save error of its own hide it."""
    try:
      yield
    except BaseException:
      with contextlib.suppress(Exception):
        self.manager.wait_until_finished()
      raise
    ckpt_lib.wait_for_saves(self.manager)

  def _final_results(self, params, step: int, train_seconds: float) -> dict:
    """Every eval split's metrics and the task's extra results, written to results.json."""
    results = {"steps": step, "train_seconds": round(train_seconds, 2)}
    if self.schedule.steps_per_epoch:
      results.update(steps_per_epoch=self.schedule.steps_per_epoch,
                     epochs=self.schedule.num_epochs)
    for split in self.task.eval_splits:
      results.update({f"{split}_{k}": v for k, v in self.evaluate(params, split).items()})
    results.update(self.task.extra_results(params, self.evaluate))
    if is_main_process():
      write_json(self.workdir / "results.json", results)
      metrics_lib.plot_curves(self.workdir)
    return results

def sum_batches(eval_step, params, batches, put) -> tuple[dict[str, float], list]:
  """({metric: sum over `batches`} accumulated in float64 on the host, each batch's ids)
  of `eval_step(params, put(batch)) -> (sums, ids)`."""
  totals: dict[str, float] = {}
  ids = []
  for batch in batches:
    sums, batch_ids = jax.device_get(eval_step(params, put(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    ids.append(batch_ids)
  return totals, ids


def kept_evaluation(kept: dict, split: str, params, run) -> tuple:
  """`run()`'s (means, ids) of `split`, kept in `kept`: asking again for the same params
  (the same object) reads it instead of evaluating again."""
  if split not in kept or kept[split][0] is not params:
    kept[split] = (params, *run())
  return kept[split][1:]


def write_json(path: pathlib.Path, obj) -> None:
  """Atomically (write then rename), so a kill never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)
