"""Runs an experiment: python launch.py --config=experiments/<name>.py[:smoke] [--mode=...].

Modes: train (then evaluate; the default), eval (the latest checkpoint on the eval splits, or
with --input on any file of the task's format), predict (--text, or --input/--output files),
export (--output=DIR: the tagger serialised with jax.export, which runs with jax, numpy and
flatbuffers) and report (a sweep's table; `--sweep` trains the settings an experiment file
declares, each in its own workdir, here or through submitit). eval, predict and export use a
trained workdir alone (`--workdir=runs/x --mode=predict ...`): its saved config decides, and
a --config given is checked against it. An output never replaces its input.

Only parses flags and calls the driver (`birnn_jax.training.train.run`). Errors the user can
fix (an unknown or invalid config key, malformed data, a workdir of another config, in use
by another training run or that cannot be written, a run whose loss became NaN/Inf) end
with one `launch.py: error: ...` line on stderr and exit status 1; anything else is a bug
and keeps its traceback. SIGTERM/SIGINT during training save a checkpoint and exit 0 (see
`trainer.stop_requested_on_signals`).
"""

import errno
import logging as std_logging
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/synthetic_tagging.py:smoke; "
    "needed to train, optional for eval/predict/export (the workdir's config.json decides).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and results go (default: runs/<experiment>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export", "report"],
                          "train (then evaluate), eval (latest checkpoint), predict, export, "
                          "or report (a sweep's table: --workdir=<the sweep's folder>).")
_TEXT = flags.DEFINE_string("text", None, "Input for --mode=predict.")
_INPUT = flags.DEFINE_string(
    "input", None, "--mode=predict or eval: a file of the task's format ('-' = stdin): POS "
    "CoNLL-U or plain text, NER IOB2 or plain text, masked LM / LM plain text.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "--mode=predict --input: the output file ('-' = stdout, the default); "
    "--mode=eval --input: the folder for its JSON and confusion plot (default <workdir>/eval); "
    "--mode=export: the artifact's folder.")
_FORMAT = flags.DEFINE_string(
    "format", None, "The --input format when its name does not say (conllu, iob2, txt).")
_PREFIX = flags.DEFINE_string("prefix", None, "Alias of --text for generation tasks.")
_MEMBER = flags.DEFINE_string(
    "member", None, "--mode=eval --input/predict/export on a run of several members "
    "(train.num_seeds): which one, an index (0 = the first seed), 'best' (on dev) or "
    "'ensemble' (all of them as one model, the default for POS and NER).")
_SWEEP = flags.DEFINE_bool(
    "sweep", False, "Train every setting of the experiment file's sweep (get_hyper), each in "
    "<workdir>/<setting>; finished ones are skipped, interrupted ones resume.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "--sweep: list the settings, run nothing.")
_SWEEP_LAUNCHER = flags.DEFINE_enum(
    "sweep_launcher", "local", ["local", "submitit_local", "slurm"],
    "--sweep: run here one after another (local), as submitit's local job array, or as one "
    "Slurm job array through submitit (slurm; see docs/devices.md).")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "--sweep_launcher=slurm: "
                                       "the partition.")
_SLURM_TIME = flags.DEFINE_integer("slurm_time_min", 240, "--sweep_launcher=slurm or "
                                   "submitit_local: minutes each job may run.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_job", 0, "--sweep_launcher=slurm: GPUs "
                                   "per job (0: none requested).")
_SLURM_PARALLEL = flags.DEFINE_integer("slurm_parallelism", 0, "--sweep_launcher=slurm: at "
                                       "most this many jobs at once (0: no cap).")
_FORCE_FRESH = flags.DEFINE_bool(
    "force_fresh", False, "Start over in a workdir that holds a run of another config.")
_VARIANT = flags.DEFINE_string(
    "variant", None, "--mode=eval/predict/export: the variant of an experiment of several "
    "(e.g. NER's crf, softmax, crf_forward) to use; default: eval scores every variant, "
    "predict and export use the first.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Folder of JAX's persistent compilation cache, so a later run of "
    "the same programs compiles nothing (default: $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/birnn_jax/xla); 'off' disables it.")

# OS errors that mean "this disk or folder refuses the write", not a bug.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EIO}


def default_workdir() -> str:
  """runs/<experiment file name>[_<config arg>]."""
  if flags.FLAGS["config"].value is None:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir=<a trained run's folder> "
                         "(or --config, whose default workdir it then uses).")
  name, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
  return os.path.join("runs", pathlib.Path(name).stem + (f"_{arg}" if arg else ""))


def fail(message: str, status: int = 1):
  """One line on stderr (after whatever was logged), no traceback."""
  sys.stdout.flush()
  sys.stderr.write(f"launch.py: error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


def is_expected(error: BaseException) -> bool:
  """Whether `error` is one the user can fix from its message alone: the library's own
  (`birnn_jax.errors.BirnnError`), or the disk refusing a write."""
  from birnn_jax import errors  # pylint: disable=g-import-not-at-top
  if isinstance(error, errors.BirnnError):
    return True
  return isinstance(error, OSError) and error.errno in _DISK_ERRNOS


def main(argv):
  del argv
  from birnn_jax import errors  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import compile_log  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  compile_log.install()   # before anything compiles: the count below is the whole run's
  try:
    config = _CONFIG.value
    task = config.task if config is not None else "saved in the workdir"  # a bad file raises
  except OSError as e:
    fail(f"cannot load --config: {e}")
  if config is None and _MODE.value == "train":
    raise app.UsageError("--mode=train needs --config=experiments/<name>.py.")
  if _MODE.value == "export" and not _OUTPUT.value:
    raise app.UsageError("--mode=export needs --output=DIR.")
  text = _TEXT.value or _PREFIX.value
  if _MODE.value == "predict" and text is None and _INPUT.value is None:
    raise app.UsageError("--mode=predict needs --text (or --prefix) or --input.")
  if _MODE.value == "report" and not _WORKDIR.value:
    raise app.UsageError("--mode=report needs --workdir=<a sweep's folder>.")
  if _SWEEP.value and (config is None or _MODE.value != "train"):
    raise app.UsageError("--sweep trains: it needs --config=experiments/<name>.py and "
                         "--mode=train.")
  workdir = _WORKDIR.value or default_workdir()
  sweep = None
  if _SWEEP.value:
    sweep = {"experiment_file": config_flags.get_config_filename(
                 flags.FLAGS["config"]).partition(":")[0],
             "launcher": _SWEEP_LAUNCHER.value, "dry_run": _DRY_RUN.value,
             "slurm": {"slurm_partition": _SLURM_PARTITION.value,
                       "timeout_min": _SLURM_TIME.value, "gpus_per_node": _SLURM_GPUS.value,
                       "slurm_array_parallelism": _SLURM_PARALLEL.value}}
  logging.info("Experiment %s, workdir %s, mode %s", task, workdir, _MODE.value)
  try:
    train.run(_MODE.value, config, workdir, text=text, input_path=_INPUT.value,
              output=_OUTPUT.value, fmt=_FORMAT.value, variant=_VARIANT.value,
              member=_MEMBER.value,
              force_fresh=_FORCE_FRESH.value, compile_cache_dir=_COMPILE_CACHE.value,
              sweep=sweep)
  except KeyboardInterrupt:
    fail("interrupted (outside the training loop, so no new step was lost); re-run the "
         "same command to resume from the last checkpoint.", status=130)
  except Exception as e:  # pylint: disable=broad-exception-caught
    if not is_expected(e):
      raise
    message = str(e)
    if isinstance(e, OSError) and not isinstance(e, errors.BirnnError):
      message += f" (workdir {workdir})"
    fail(message)
  logging.info("Compilation in this run: %s.", compile_log.snapshot())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, plus a one-line error for an override of a key the config lacks
  (ml_collections raises a KeyError/AttributeError with a traceback for those)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
    try:
      bad = config_lib.unknown_override_hints(argv)
    except Exception:  # pylint: disable=broad-exception-caught
      bad = []
    if not bad:
      raise e
    sys.stderr.write("FATAL Flags parsing error: " + "; ".join(bad) + "\n")
    sys.exit(1)


def quiet_libraries(record) -> bool:
  """Keeps orbax's per-save INFO chatter off the console (warnings still show, without the
  tracebacks orbax logs for errors it re-raises: those reach `main`, which reports them),
  and jax's INFO about back ends it looked for and did not find ("Unable to initialize
  backend 'tpu'", which reads as an error on a machine that has no TPU)."""
  if record.name.startswith("jax._src.xla_bridge"):
    return record.levelno >= std_logging.WARNING
  if "orbax" not in record.pathname:
    return True
  record.exc_info, record.exc_text = None, None
  return record.levelno >= std_logging.WARNING


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(quiet_libraries)
  app.run(main, flags_parser=parse_flags)
