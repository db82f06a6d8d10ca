"""The experiment driver: what `launch.py` calls (`run`), and the entry points for scripts
and notebooks: train every variant of an experiment (`run_experiment`), evaluate
(`evaluate_experiment`), predict (`predict`, `predictor`) and export.

An experiment is one or several models (the task's `variants`, e.g. NER's crf / softmax /
crf_forward), each trained by a `trainer.Trainer` in a folder of its own; the driver holds
the workdir's lock, compiles every variant's steps ahead, and writes the experiment's
summary. A trained workdir is used from its saved config (`inference`): eval, predict and
export need the workdir alone.
"""

import json
import pathlib
import sys

from absl import logging
import ml_collections

from birnn_jax import errors
from birnn_jax import tasks
from birnn_jax.training import checkpoint as ckpt_lib
from birnn_jax.training import compile_cache
from birnn_jax.training import compile_log
from birnn_jax.training import config_lib
from birnn_jax.training import export
from birnn_jax.training import inference
from birnn_jax.training import members
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import optim
from birnn_jax.training import sharding
from birnn_jax.training import stats
from birnn_jax.training import workdir_lock
from birnn_jax.training.ahead_of_time import AheadOfTime
from birnn_jax.training.trainer import Trainer, is_main_process, write_json  # noqa: F401

MODES = ("train", "eval", "predict", "export", "report")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       force_fresh: bool = False) -> dict:
  """Trains one model as configured (resuming from the workdir's last checkpoint) and logs
  what it compiled (`compile_log.logged`).

  Args:
    config: the model's config (one variant of an experiment).
    workdir: where its checkpoints, metrics and results go.
    force_fresh: start over in a workdir that holds a run of another config.

  Returns:
    The final metrics (what the variant's results.json holds).
  """
  return _train_logged(members.make_trainer(config, workdir), force_fresh)


def _train_logged(trainer: Trainer, force_fresh: bool) -> dict:
  """`trainer.train`, then what was built for it (`compile_log.logged`)."""
  with compile_log.logged(f"the training run in {trainer.workdir}", of=trainer.compile_label):
    return trainer.train(force_fresh)


def load_trained(config, workdir):
  """(trainer, params) from the workdir's latest checkpoint, only reading the workdir (a
  training run may be writing it); the moving average when the run kept one."""
  trainer = members.make_trainer(config, workdir, read_only=True)
  state = ckpt_lib.restore(trainer.manager, trainer.init_state(), read_only=True)
  return trainer, optim.eval_params(state)


def variant_dirs(config, workdir) -> dict[str, tuple[ml_collections.ConfigDict, pathlib.Path]]:
  task_class = tasks.get_task_class(config.task)
  workdir = pathlib.Path(workdir)
  return {name: (cfg, workdir / name if name else workdir)
          for name, cfg in task_class.variants(config).items()}


def run_experiment(config, workdir, force_fresh: bool = False) -> dict:
  """Trains every variant the task asks for, then writes the experiment's results.json
  and prints a summary table and verdict: what `launch.py --mode=train` runs.

  Holds the workdir's training lock throughout (`workdir_lock`): a second run on it is
  refused before it writes anything. A run that finds checkpoints resumes from them. See
  :doc:`/trained` for an example.

  Args:
    config: the experiment's config (`config_lib.load_experiment`).
    workdir: the experiment's workdir (each variant trains in a folder of its name).
    force_fresh: start over in a workdir that holds a run of another config.

  Returns:
    The experiment's summary (the contents of results.json).

  Raises:
    birnn_jax.errors.BirnnError: an error the user can fix (config, data, workdir,
      NaN/Inf), with a one-line message.
  """
  config_lib.validate(config)
  variants = variant_dirs(config, workdir)  # an unknown task fails before the workdir exists
  sharding.maybe_initialize_distributed(config.mesh)  # process 0 takes the lock
  with workdir_lock.held(workdir):
    results = {}
    trainers = {}
    compiler = AheadOfTime()   # every variant's steps compile while the first ones train
    try:
      for name, (cfg, vdir) in variants.items():
        trainers[name] = members.make_trainer(cfg, vdir)
        if len(variants) > 1:
          trainers[name].prepare(force_fresh, compiler)
      for name, trainer in trainers.items():
        if name:
          logging.info("=== Training variant %r in %s ===", name, trainer.workdir)
        results[name] = _train_logged(trainer, force_fresh)
        if "stopped_at_step" in results[name]:
          return results[name]
    finally:
      compiler.cancel()
    task_class = tasks.get_task_class(config.task)
    summary, verdict = task_class.summarize(config, results)
    if members.num_members(config) > 1:
      summary, verdict = task_class.judge_over_seeds(
          members.experiment_statistics(summary, results), verdict)
      # The headline over seeds: the test split's best_metric (e.g. test_f1).
      headline = "test_" + config.train.best_metric.removeprefix("eval_")
      verdict = " ".join(filter(None, [verdict, members.seeds_verdict(summary, headline)]))
    if is_main_process():
      pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
      write_json(pathlib.Path(workdir) / "results.json", summary)
      print_summary(summary, verdict)
    return summary


# A summary's keys of several members' figures, which the members' table shows instead.
_MEMBER_KEYS = ("members", "statistics", "member_statistics", "paired_differences",
                "ensemble", "ensembles")


def print_summary(summary: dict, verdict: str) -> None:
  """The summary as a table (with several members: their means, then the table of
  statistics a paper takes, `members.statistics_table`), then the verdict."""
  flat = config_lib.flatten({k: v for k, v in summary.items() if k not in _MEMBER_KEYS})
  flat = {k: v for k, v in flat.items() if not any(f".{m}." in f".{k}." for m in _MEMBER_KEYS)}
  rows = [("metric", "value")] + [
      (k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(flat.items())]
  print("\n" + metrics_lib.table(rows))
  table = members.statistics_table(summary)
  if table:
    print("\n" + table)
  if verdict:
    print("\n" + verdict)


def evaluate_experiment(config, workdir, variant: str | None = None) -> dict:
  """Evaluates each variant's latest checkpoint on every eval split: `--mode=eval`.

  Each variant's saved config decides (`inference.run_config`); `config`, where given, is
  checked against it. Only reads the training run's files (it may still be running:
  variants it has not reached yet are skipped, with a warning) and writes
  workdir/eval_results.json.

  Args:
    config: the experiment's config, or None (the workdir's own).
    workdir: the trained experiment's workdir.
    variant: evaluate this variant only (default: every one).

  Returns:
    `{split}_{metric}` values (per variant when the experiment has several).

  Raises:
    birnn_jax.errors.NoCheckpointError: nothing trained in the workdir.
    birnn_jax.errors.WorkdirMismatchError: `config` describes another model.
  """
  runs = ({variant: inference.run_dir(workdir, variant)} if variant
          else inference.trained_runs(workdir) or {"": inference.run_dir(workdir)})
  if config is not None and not variant:
    for name in variant_dirs(config, workdir):
      if name not in runs:
        logging.warning("Variant %r has not started in %s yet: not evaluated.", name, workdir)
  out = {}
  for name, vdir in runs.items():
    cfg = inference.run_config(vdir, config, workdir)
    if out and ckpt_lib.make_manager(vdir, cfg.train, read_only=True).latest_step() is None:
      logging.warning("Variant %r has no checkpoint in %s yet: not evaluated.", name, vdir)
      continue
    trainer, params = load_trained(cfg, vdir)
    evaluated = {split: trainer.evaluate(params, split) for split in trainer.task.eval_splits}
    if isinstance(trainer, members.MembersTrainer):   # each member's, and their mean
      per_member = [{f"{split}_{k}": v for split, ms in evaluated.items()
                     for k, v in ms[i].items()} for i in range(trainer.num_members)]
      out[name] = {**members.mean_results(per_member), "seeds": trainer.seeds,
                   "members": per_member, "statistics": stats.summarize_members(per_member)}
      ensemble_results = trainer.ensemble_results(params)
      if ensemble_results:
        out[name]["ensemble"] = ensemble_results
    else:
      out[name] = {f"{split}_{k}": v for split, ms in evaluated.items()
                   for k, v in ms.items()}
  summary = out[""] if list(out) == [""] else out
  if is_main_process():
    write_json(pathlib.Path(workdir) / "eval_results.json", summary)
    print_summary(summary, "")
  return summary


def predictor(config, workdir, variant: str | None = None,
              member: int | str | None = None) -> inference.Predictor:
  """The trained model of `workdir` (its first variant unless `variant` names one), from
  the workdir alone: its saved config decides, and `config`, where given, is checked
  against it (`inference.load`)."""
  return inference.load(workdir, variant, config, member)


def predict(config, workdir, text: str, variant: str | None = None,
            member: int | str | None = None) -> str:
  """The task's prediction for `text`, from the first variant's latest checkpoint.

  What `--mode=predict --text=...` prints; `birnn_jax.load(workdir)` gives the model
  itself (see :doc:`/trained`).

  Args:
    config: the experiment's config, or None: the workdir's saved config decides either
      way, and a given one is checked against it.
    workdir: the trained experiment's workdir.
    text: the input, in the task's form (a sentence, a sentence with `___`, a prefix).
    variant: the variant to use (default: the first).
    member: of a run of several members, which one (an index or 'best').

  Returns:
    The prediction as text.

  Raises:
    birnn_jax.errors.InputError: a text the task cannot read.
    birnn_jax.errors.NoCheckpointError: nothing trained in the workdir.
    birnn_jax.errors.WorkdirMismatchError: `config` describes another model.
  """
  return predictor(config, workdir, variant, member).predict(text)


def export_experiment(config, workdir, output_dir, variant: str | None = None,
                      member: int | str | None = None) -> dict:
  """`--mode=export`: the trained tagger (`predictor`) serialised to `output_dir`
  (`export.export_tagger`); prints where and how to run it, returns its meta.json."""
  meta = export.export_tagger(predictor(config, workdir, variant, member), output_dir)
  print(f"Exported the {meta['task']} tagger of {meta['trained_run']} to {output_dir} "
        f"(platforms {', '.join(meta['platforms'])}); it runs with "
        f"{export.runtime_requires_text()} (pip install {' '.join(export.RUNTIME_REQUIRES)}):"
        f" python {pathlib.Path(output_dir) / 'predict.py'} < sentences.txt")
  return meta


def run_sweep(config, experiment_file: str, workdir, launcher: str = "local",
              dry_run: bool = False, slurm: dict | None = None) -> dict:
  """`--sweep`: every setting the experiment file's `get_hyper` declares, over `config`,
  each a run in `<workdir>/<setting>` (`sweep.launch`); prints a summary."""
  from birnn_jax.training import sweep  # pylint: disable=g-import-not-at-top
  settings = sweep.settings(config, sweep.declared(config_lib.load_module(experiment_file)))
  out = sweep.launch(workdir, settings, launcher, dry_run=dry_run, slurm=slurm)
  if dry_run:
    print(f"Dry run: {len(settings)} settings in {workdir}; nothing ran.")
  else:
    print(f"Sweep of {out['settings']} settings in {workdir}: {len(out['skipped'])} already "
          f"finished, {len(out['ran'])} ran, {len(out['failed'])} failed" +
          (f", {len(out['submitted'])} submitted ({launcher}: jobs "
           f"{', '.join(out['submitted'])})" if out["submitted"] else "") +
          f". The table: python launch.py --mode=report --workdir={workdir}")
    if out["failed"]:
      raise errors.BirnnError(f"sweep settings failed: {', '.join(out['failed'])} (each one's "
                              f"error is in <setting>/sweep_failed.json and the report).")
  return out


def run(mode: str, config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path, *,
        text: str | None = None, input_path: str | None = None, output: str | None = None,
        fmt: str | None = None, variant: str | None = None, member: str | None = None,
        force_fresh: bool = False, compile_cache_dir: str | None = None,
        sweep: dict | None = None):
  """What `launch.py --mode=<mode>` does, its flags already parsed and checked.

  Args:
    mode: one of `MODES`: train (then evaluate), eval (the eval splits, or `input_path`),
      predict (`text`, or `input_path` into `output`, '-' = stdout), export (`output`) or
      report (a sweep's table, `sweep_report`).
    config: the experiment's config; None for eval, predict and export (the workdir's
      saved config decides either way, a given one is checked against it).
    workdir: the experiment's workdir.
    text: --mode=predict's input text.
    input_path: a file of the task's format ('-' = stdin) to predict or score.
    output: the predicted file, the eval folder (default <workdir>/eval) or the export's.
    fmt: the input format when its name does not say.
    variant: the variant to use (default: the first; eval without it scores each).
    member: of a run of several members, the one predict, eval --input and export use (an
      index or 'best').
    force_fresh: start over in a workdir that holds a run of another config.
    compile_cache_dir: JAX's persistent compilation cache (`compile_cache.configure`).
    sweep: train the experiment file's sweep instead (`run_sweep`'s keyword arguments:
      experiment_file, launcher, dry_run, slurm); --mode=report gathers it.

  Returns:
    What the mode produced: the summary, scores, meta.json or the prediction.

  Raises:
    birnn_jax.errors.BirnnError: an error the user can fix, with a one-line message.
  """
  compile_cache.configure(compile_cache_dir)
  if config is not None:
    config_lib.validate(config)  # before anything touches the workdir or compiles
  if mode == "train" and sweep:
    return run_sweep(config, workdir=workdir, **sweep)
  if mode == "train":
    return run_experiment(config, workdir, force_fresh=force_fresh)
  if mode == "report":
    from birnn_jax.training import sweep_report  # pylint: disable=g-import-not-at-top
    return sweep_report.report(workdir)
  if mode == "eval" and input_path:
    model = predictor(config, workdir, variant, member)
    scores = model.evaluate_file(input_path, output or pathlib.Path(workdir) / "eval")
    print_summary(scores, f"Scored {input_path} with the trained run {model.workdir}.")
    return scores
  if mode == "eval":
    return evaluate_experiment(config, workdir, variant)
  if mode == "export":
    return export_experiment(config, workdir, output, variant, member)
  try:
    if input_path is not None:   # before the model loads: nothing read, nothing lost
      inference.refuse_overwriting(input_path, output or "-")
    model = predictor(config, workdir, variant, member)
    if input_path is None:
      prediction = model.predict(text)
      print(prediction)
      return prediction
    summary = model.predict_file(input_path, output or "-", fmt)
    sys.stderr.write(json.dumps(summary) + "\n")
    return summary
  except errors.InputError as e:  # a task refusing an input it cannot read (no blank, ...)
    raise errors.InputError(f"--mode=predict: {e}") from e
