"""The generic trainer: `train_and_evaluate(config, workdir)` and friends.

It knows no task by name: `config.task` names a module under `birnn_jax.tasks` whose `Task`
provides data, model and metrics (see `tasks/base.py`). The train state is a plain dict
`{"step", "params", "opt_state"}` that orbax saves; steps are pure jitted functions with
explicit shardings on a ("data",) mesh. Resume order: the workdir's latest checkpoint, else
a fresh start.
"""

import contextlib
import json
import pathlib
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from birnn_jax import checkpoint as ckpt_lib
from birnn_jax import config_lib
from birnn_jax import losses
from birnn_jax import metrics as metrics_lib
from birnn_jax import optim
from birnn_jax import sharding
from birnn_jax import tasks
from birnn_jax import workdir_lock


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN/Inf; the last good checkpoint is left as it was."""


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different config."""


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


def make_steps(task, model, tx, nan_policy: str):
  """(train_step, eval_step), pure functions of arrays."""

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      outputs = model.apply({"params": params}, *task.model_inputs(batch),
                            deterministic=False, rngs={"dropout": rng})
      sums = task.metric_sums(outputs, batch)
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Finite loss and gradients can still give overflowing parameters (a huge learning rate).
    params_finite = jax.tree.reduce(
        jnp.logical_and, jax.tree.map(lambda p: jnp.all(jnp.isfinite(p)), params), True)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite
    if nan_policy == "skip":
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, {**sums, "grad_norm": grad_norm, "finite": finite,
                       "params_finite": params_finite}

  def eval_step(params, batch):
    outputs = model.apply({"params": params}, *task.model_inputs(batch), deterministic=True)
    return task.metric_sums(outputs, batch)

  return train_step, eval_step


def check_best_metric(best_metric: str, eval_metrics: dict) -> None:
  """A misspelt best metric would silently keep no best checkpoint: fail instead."""
  name = best_metric.removeprefix("eval_")
  if not best_metric.startswith("eval_") or name not in eval_metrics:
    raise ValueError(f"config.train.best_metric={best_metric!r} is not an evaluation "
                     f"metric; expected one of {sorted('eval_' + k for k in eval_metrics)}.")


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
      raise FileNotFoundError(f"no checkpoint in {self.manager.directory}; train first "
                              "(--mode=train) with the same --workdir.")
    self.task = tasks.get_task_class(config.task)(config, self.workdir)
    self.model = self.task.model()
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps)
    repl = sharding.replicated(self.mesh)
    data = sharding.batch_sharding(self.mesh)
    train_step, eval_step = make_steps(self.task, self.model, self.tx,
                                       config.train.nan_policy)
    self.train_step = jax.jit(train_step, in_shardings=(repl, data, repl),
                              out_shardings=(repl, repl), donate_argnums=0)
    self.eval_step = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)

  def init_state(self) -> dict:
    key = jax.random.key(self.config.seed)
    batch = sharding.put_batch(self.task.train_batch(0), self.mesh)

    def init(key, batch):
      variables = self.model.init({"params": key, "dropout": key},
                                  *self.task.model_inputs(batch), deterministic=True)
      params = variables["params"]
      return {"step": jnp.zeros((), jnp.int32), "params": params,
              "opt_state": self.tx.init(params)}

    repl = sharding.replicated(self.mesh)
    return jax.jit(init, out_shardings=repl)(key, batch)

  def restore_or_init(self, force_fresh: bool = False) -> dict:
    """The latest readable checkpoint's state, else a fresh one. A workdir holding a run of
    another config is refused (before any compute) unless `force_fresh`, which deletes that
    run's checkpoints and metrics and starts over; a run of the same config always resumes,
    so re-running an interrupted `--force_fresh` command continues where it stopped."""
    saved_config = self.workdir / "config.json"
    if self.manager.latest_step() is not None and saved_config.exists():
      try:
        diffs = ckpt_lib.config_differences(json.loads(saved_config.read_text()), self.config)
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
    state = self.init_state()
    if self.manager.latest_step() is None:
      return state
    logging.info("Resuming from %s at step %d.", self.manager.directory,
                 self.manager.latest_step())
    return ckpt_lib.restore(self.manager, state)

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Exact means over the whole split (sums accumulated in float64 on the host)."""
    totals: dict[str, float] = {}
    for batch in self.task.eval_batches(split):
      sums = jax.device_get(self.eval_step(params, sharding.put_batch(batch, self.mesh)))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return self.task.derived_metrics(losses.means(totals))

  def train(self, force_fresh: bool = False) -> dict:
    """Trains to config.train.num_steps (resuming if the workdir has a checkpoint).

    Returns the final metrics on every eval split, `{split}_{metric}`, also written to
    workdir/results.json.
    """
    config, train_cfg = self.config, self.config.train
    if is_main_process():
      ckpt_lib.ensure_writable(self.workdir)  # read-only or full: say so before any compute
    state = self.restore_or_init(force_fresh)
    first_step = int(jax.device_get(state["step"]))
    main = is_main_process()
    if main:
      write_json(self.workdir / "config.json", json.loads(config.to_json()))
    writer = metrics_lib.MetricWriter(self.workdir, enabled=main)
    writer.truncate_after(first_step)
    progress = metrics_lib.Progress(first_step, train_cfg.num_steps)
    rng = jax.random.key(config.seed + 1)
    # Metric sums since the last log row. They are saved with each checkpoint, so the rows
    # after a resume equal an uninterrupted run's even if it stopped between two log steps.
    window: dict[str, float] = dict(ckpt_lib.restored_host_state(
        self.manager, first_step).get("window", {})) if first_step else {}
    start = time.monotonic()
    eval_metrics: dict[str, float] = {}
    stopped_by = None

    def check(step, step_metrics):
      if not bool(step_metrics["finite"]):
        what = [k for k in ("loss", "grad_norm") if not np.isfinite(step_metrics[k])]
        if not bool(step_metrics["params_finite"]):
          what.append("the updated parameters")
        message = (f"step {step}: {' and '.join(what) or 'loss'} became non-finite "
                   f"({', '.join(f'{k}={float(step_metrics[k])}' for k in ('loss', 'grad_norm'))}).")
        if train_cfg.nan_policy == "stop":
          raise NonFiniteError(
              message + f" Stopping; the last good checkpoint (step "
              f"{self.manager.latest_step()}) in {self.manager.directory} is untouched.")
        logging.warning("%s Skipped this update (nan_policy='skip').", message)
        window["_skipped"] = window.get("_skipped", 0.0) + 1
        return
      for k, v in step_metrics.items():
        if k not in ("finite", "params_finite"):
          window[k] = window.get(k, 0.0) + float(v)
      window["_steps"] = window.get("_steps", 0.0) + 1

    with stop_requested_on_signals() as stop:
      step = first_step
      while step < train_cfg.num_steps:
        batch = sharding.put_batch(self.task.train_batch(step), self.mesh)
        state, step_metrics = self.train_step(state, batch, rng)
        step += 1
        check(step, jax.device_get(step_metrics))
        is_last = step == train_cfg.num_steps
        logged = {}
        if step % train_cfg.log_every == 0 or is_last:
          num = window.pop("_steps", 0.0)
          skipped = window.pop("_skipped", 0.0)
          if num:  # else nan_policy='skip' skipped every step since the last row
            grad_norm = window.pop("grad_norm", 0.0) / num
            logged = {f"train_{k}": v for k, v in
                      self.task.derived_metrics(losses.means(window)).items()}
            logged["train_grad_norm"] = grad_norm
          if skipped:
            logged["train_skipped_steps"] = skipped
          window = {}
        if step % train_cfg.eval_every == 0 or is_last:
          eval_metrics = self.evaluate(state["params"], self.task.eval_splits[0])
          check_best_metric(train_cfg.best_metric, eval_metrics)
          logged.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        if logged:
          writer.write(step, logged)
          progress.report(step, logged)
        # Every process must stop at the same step, or the next collective hangs.
        stop_now = sharding.any_process(stop["signal"] is not None)
        if step % train_cfg.checkpoint_every == 0 or is_last or stop_now:
          has_eval = train_cfg.best_metric.removeprefix("eval_") in eval_metrics and (
              step % train_cfg.eval_every == 0 or is_last)
          metrics = {train_cfg.best_metric: eval_metrics[
              train_cfg.best_metric.removeprefix("eval_")]} if has_eval else None
          ckpt_lib.save(self.manager, step, state, metrics, host_state={"window": window})
        if stop_now:
          stopped_by = stop["signal"] or "a stop signal on another process"
          break
    writer.close()
    elapsed = time.monotonic() - start
    if stopped_by:
      logging.warning("Received %s at step %d: saved a checkpoint in %s. Re-run the same "
                      "command to resume from step %d.", stopped_by, step,
                      self.manager.directory, step)
      return {"stopped_at_step": step, "stopped_by": stopped_by}
    results = {"steps": step, "train_seconds": round(elapsed, 2)}
    for split in self.task.eval_splits:
      results.update({f"{split}_{k}": v
                      for k, v in self.evaluate(state["params"], split).items()})
    results.update(self.task.extra_results(state["params"], self.evaluate))
    if main:
      write_json(self.workdir / "results.json", results)
      metrics_lib.plot_curves(self.workdir)
    return results


def write_json(path: pathlib.Path, obj) -> None:
  """Atomically (write then rename), so a kill never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       force_fresh: bool = False) -> dict:
  """Trains one model as configured and returns its final metrics."""
  return Trainer(config, workdir).train(force_fresh)


def load_trained(config, workdir):
  """(trainer, params) from the workdir's latest checkpoint, only reading the workdir (a
  training run may be writing it)."""
  trainer = Trainer(config, workdir, read_only=True)
  state = ckpt_lib.restore(trainer.manager, trainer.init_state(), read_only=True)
  return trainer, state["params"]


def variant_dirs(config, workdir) -> dict[str, tuple[ml_collections.ConfigDict, pathlib.Path]]:
  task_class = tasks.get_task_class(config.task)
  workdir = pathlib.Path(workdir)
  return {name: (cfg, workdir / name if name else workdir)
          for name, cfg in task_class.variants(config).items()}


def run_experiment(config, workdir, force_fresh: bool = False) -> dict:
  """Trains every variant the task asks for, then writes the experiment's results.json
  and prints a summary table and verdict. Holds the workdir's training lock throughout
  (`workdir_lock`): a second run on it is refused before it writes anything."""
  config_lib.validate(config)
  variants = variant_dirs(config, workdir)  # an unknown task fails before the workdir exists
  sharding.maybe_initialize_distributed(config.mesh)  # process 0 takes the lock
  with workdir_lock.held(workdir):
    results = {}
    for name, (cfg, vdir) in variants.items():
      if name:
        logging.info("=== Training variant %r in %s ===", name, vdir)
      results[name] = train_and_evaluate(cfg, vdir, force_fresh)
      if "stopped_at_step" in results[name]:
        return results[name]
    summary, verdict = tasks.get_task_class(config.task).summarize(config, results)
    if is_main_process():
      pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
      write_json(pathlib.Path(workdir) / "results.json", summary)
      print_summary(summary, verdict)
    return summary


def print_summary(summary: dict, verdict: str) -> None:
  flat = ckpt_lib.flatten(summary)
  rows = [("metric", "value")] + [
      (k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(flat.items())]
  print("\n" + metrics_lib.table(rows))
  if verdict:
    print("\n" + verdict)


def evaluate_experiment(config, workdir) -> dict:
  """Evaluates each variant's latest checkpoint on every eval split. Only reads the training
  run's files (it may still be running: variants it has not reached yet are skipped, with a
  warning) and writes workdir/eval_results.json."""
  out = {}
  for name, (cfg, vdir) in variant_dirs(config, workdir).items():
    if out and ckpt_lib.make_manager(vdir, cfg.train, read_only=True).latest_step() is None:
      logging.warning("Variant %r has no checkpoint in %s yet: not evaluated.", name, vdir)
      continue
    trainer, params = load_trained(cfg, vdir)
    out[name] = {f"{split}_{k}": v for split in trainer.task.eval_splits
                 for k, v in trainer.evaluate(params, split).items()}
  summary = out[""] if list(out) == [""] else out
  if is_main_process():
    write_json(pathlib.Path(workdir) / "eval_results.json", summary)
    print_summary(summary, "")
  return summary


def predict(config, workdir, text: str) -> str:
  """The task's prediction for `text`, from the first variant's latest checkpoint."""
  name, (cfg, vdir) = next(iter(variant_dirs(config, workdir).items()))
  trainer, params = load_trained(cfg, vdir)
  return trainer.task.predict(params, text)
