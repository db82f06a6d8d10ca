"""Runs an experiment: python launch.py --config=experiments/<name>.py[:smoke] [--mode=...].

Only parses flags and calls the library.
"""

import logging as std_logging
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/synthetic_tagging.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and results go (default: runs/<experiment>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (then evaluate), eval (latest checkpoint) or predict.")
_TEXT = flags.DEFINE_string("text", None, "Input for --mode=predict.")
_PREFIX = flags.DEFINE_string("prefix", None, "Alias of --text for generation tasks.")
_FORCE_FRESH = flags.DEFINE_bool(
    "force_fresh", False, "Start over in a workdir that holds a run of another config.")
flags.mark_flag_as_required("config")


def default_workdir() -> str:
  """runs/<experiment file name>[_<config arg>]."""
  name, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
  return os.path.join("runs", pathlib.Path(name).stem + (f"_{arg}" if arg else ""))


def main(argv):
  del argv
  from birnn_jax import train  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir()
  logging.info("Experiment %s, workdir %s, mode %s", config.task, workdir, _MODE.value)
  if _MODE.value == "train":
    train.run_experiment(config, workdir, force_fresh=_FORCE_FRESH.value)
  elif _MODE.value == "eval":
    train.evaluate_experiment(config, workdir)
  else:
    text = _TEXT.value or _PREFIX.value
    if text is None:
      raise app.UsageError("--mode=predict needs --text (or --prefix).")
    print(train.predict(config, workdir, text))


def quiet_libraries(record) -> bool:
  """Keeps orbax's per-save INFO chatter off the console (warnings still show)."""
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(quiet_libraries)
  app.run(main)
