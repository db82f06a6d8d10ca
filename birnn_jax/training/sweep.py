"""Sweeps: the settings an experiment file declares beside its config, each an ordinary run
in a workdir of its own, run here one after another or submitted as one job array through
submitit (Slurm, or its local executor). docs/sweeps.md.

An experiment file may define `get_hyper(h)`, big_vision style, returning a list of
settings built from `h.sweep(key, values)`, `h.product([...])` and `h.zip([...])`:

    def get_hyper(h):
      return h.product([h.sweep("train.batch_size", [16, 32]),
                        h.sweep("model.hidden_size", [64, 100])])

Each setting is `{config key: value}` (any key, shapes included) applied over the config
`--config` gives (its command-line overrides included); its workdir is
`<sweep workdir>/<key=value,...>`, so every guarantee of a run holds per setting: the lock,
exact resume, `--mode=predict/eval/export`, the seed axis (`train.num_seeds`) inside it.
`<sweep workdir>/sweep.json` lists the settings; `sweep_report` gathers their results.
"""

import builtins
import dataclasses
import difflib
import itertools
import json
import pathlib
import re
import shutil
import traceback

from absl import logging
import ml_collections

from birnn_jax import errors
from birnn_jax.training import config_lib

MANIFEST = "sweep.json"
FAILED = "sweep_failed.json"   # in a setting's workdir: why its job failed
LAUNCHERS = ("local", "submitit_local", "slurm")


# Declaring a sweep (what `get_hyper(h)` is given as `h`) -----------------------------------------


def sweep(key: str, values) -> list[dict]:
  """One axis: `[{key: v} for v in values]`."""
  return [{key: v} for v in values]


def _merged(combo) -> dict:
  return dict(itertools.chain.from_iterable(d.items() for d in combo))


def product(axes: list[list[dict]]) -> list[dict]:
  """Every combination of the axes' settings (the first axis varies slowest)."""
  return [_merged(combo) for combo in itertools.product(*axes)]


def zip(axes: list[list[dict]]) -> list[dict]:  # pylint: disable=redefined-builtin
  """The axes' settings side by side (all of one length)."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise errors.ConfigError(f"sweep: h.zip of axes of lengths {sorted(lengths)}; they must "
                             "have one length.")
  return [_merged(combo) for combo in builtins.zip(*axes)]


class _Hyper:
  """The `h` that `get_hyper(h)` receives."""
  sweep = staticmethod(sweep)
  product = staticmethod(product)
  zip = staticmethod(zip)


# The settings of a sweep ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
  """One run of a sweep: its overrides, its folder name and the config they give."""
  name: str
  overrides: dict
  config: ml_collections.ConfigDict

  def workdir(self, root) -> pathlib.Path:
    return pathlib.Path(root) / self.name


def declared(module) -> list[dict]:
  """The settings `module.get_hyper(h)` declares.

  Raises:
    errors.ConfigError: the file declares no sweep, or an empty one.
  """
  if not hasattr(module, "get_hyper"):
    raise errors.ConfigError(f"--sweep: {module.__file__} declares no sweep (a function "
                             "get_hyper(h) returning h.product([...]) or a list of settings).")
  settings = list(module.get_hyper(_Hyper))
  if not settings:
    raise errors.ConfigError(f"--sweep: {module.__file__}'s get_hyper gives no settings (an "
                             "empty product?).")
  return settings


def _key(key: str) -> str:
  return key.removeprefix("config.")


def setting_name(overrides: dict, keys=None) -> str:
  """The folder of a setting: `key=value` of each override in `keys` (default: all; the
  key's last part), joined by ',', with characters a path should not hold replaced by '_'."""
  parts = [f"{_key(k).rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()
           if keys is None or k in keys]
  return re.sub(r"[^A-Za-z0-9=.,_+-]", "_", ",".join(parts)) or "default"


def _varying(declared_settings: list[dict]) -> set[str]:
  """The keys whose value differs between settings (all of them if none does)."""
  keys = {k for d in declared_settings for k in d}
  varying = {k for k in keys
             if len({json.dumps(d.get(k), default=str) for d in declared_settings}) > 1}
  return varying or keys


def apply(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ({dotted key: value}) set.

  Raises:
    errors.ConfigError: a key the config does not have (named, with the closest one).
  """
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    parts = _key(key).split(".")
    node = out
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=1)
        where = ".".join(["config"] + parts[:i])
        raise errors.ConfigError(
            f"sweep: {key!r}: {where} has no key {part!r}" +
            (f" (did you mean {close[0]!r}?)" if close else "") + ".")
      if i < len(parts) - 1:
        node = node[part]
    node[parts[-1]] = value
  return out


def settings(config: ml_collections.ConfigDict, declared_settings: list[dict]) -> list[Setting]:
  """The sweep's settings over `config`, each validated (`config_lib.validate`).

  Raises:
    errors.ConfigError: an unknown key, an invalid value, or two settings that would share a
      workdir.
  """
  out, seen = [], {}
  varying = _varying(declared_settings)   # a key fixed across the sweep names no folder
  for overrides in declared_settings:
    name = setting_name(overrides, varying)
    if name in seen:
      raise errors.ConfigError(f"sweep: the settings {seen[name]} and {overrides} map to the "
                               f"same workdir {name!r}.")
    seen[name] = overrides
    setting_config = apply(config, overrides)
    try:
      config_lib.validate(setting_config)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"sweep setting {name}: {e}") from e
    out.append(Setting(name, dict(overrides), setting_config))
  return out


def _jsonable(overrides: dict) -> dict:
  return json.loads(json.dumps(overrides, default=str))


def update_manifest(root, sweep_settings: list[Setting]) -> dict[str, list[str]]:
  """Writes `<root>/sweep.json` (every setting's name, overrides and config) and returns
  what changed since the last launch: {'new': [...], 'kept': [...], 'dropped': [...]} by
  name. A setting whose name is listed with other overrides is refused: its workdir holds
  another setting's run.
  """
  root = pathlib.Path(root)
  path = root / MANIFEST
  old = {}
  if path.is_file():
    old = {s["name"]: s for s in json.loads(path.read_text())["settings"]}
  for s in sweep_settings:
    if s.name in old and old[s.name]["overrides"] != _jsonable(s.overrides):
      raise errors.ConfigError(f"sweep: {root / s.name} holds the setting "
                               f"{old[s.name]['overrides']}, not {s.overrides}.")
  names = [s.name for s in sweep_settings]
  change = {"new": [n for n in names if n not in old], "kept": [n for n in names if n in old],
            "dropped": [n for n in old if n not in names]}
  root.mkdir(parents=True, exist_ok=True)
  body = {"settings": [{"name": s.name, "overrides": _jsonable(s.overrides),
                        "config": json.loads(s.config.to_json())} for s in sweep_settings],
          "dropped": change["dropped"]}
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(body, indent=1) + "\n")   # the declared order of the keys
  tmp.replace(path)
  return change


def read_manifest(root) -> list[dict]:
  """The settings of the sweep in `root` (`update_manifest`)."""
  path = pathlib.Path(root) / MANIFEST
  if not path.is_file():
    raise errors.NoCheckpointError(f"{path} does not exist: {root} is not a sweep's folder "
                                   "(python launch.py --config=... --sweep --workdir=...).")
  return json.loads(path.read_text())["settings"]


def is_finished(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds the finished run of `config` (results.json, the same config)."""
  saved = [p for p in [workdir / "config.json", *workdir.glob("*/config.json")] if p.is_file()]
  if not (workdir / "results.json").is_file() or not saved:
    return False
  # Every key counts, how long to train included: a shorter run of it is not finished.
  return not config_lib.config_differences(json.loads(saved[0].read_text()),
                                           _variant_config(config, saved[0], workdir),
                                           ignore=())


def _variant_config(config, saved_path: pathlib.Path, workdir: pathlib.Path):
  from birnn_jax import tasks  # pylint: disable=g-import-not-at-top
  if saved_path.parent == workdir:
    return config
  return tasks.get_task_class(config.task).variants(config)[saved_path.parent.name]


# Running it ----------------------------------------------------------------------------------------


def run_setting(config_json: str, workdir: str) -> dict:
  """One setting's run (`train.run_experiment`), as a job runs it: from the config's JSON.
  A failure leaves `<workdir>/sweep_failed.json` (the error) for the report, then raises."""
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  (workdir / FAILED).unlink(missing_ok=True)
  try:
    return train.run_experiment(ml_collections.ConfigDict(json.loads(config_json)), workdir)
  except Exception as e:   # not a Ctrl-C: an interrupted setting is stopped, not failed
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / FAILED).write_text(json.dumps({
        "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}) + "\n")
    raise


def launch(root, sweep_settings: list[Setting], launcher: str = "local",
           dry_run: bool = False, slurm: dict | None = None) -> dict:
  """Runs or submits the sweep's settings: the manifest first, then each setting not yet
  finished (a finished one is skipped; an interrupted one resumes).

  Args:
    root: the sweep's folder (`--workdir`).
    sweep_settings: `settings(...)`.
    launcher: 'local' (one after another in this process), 'submitit_local' (submitit's
      local executor: one job array of subprocesses, waited for) or 'slurm' (one Slurm job
      array through submitit, submitted and not waited for).
    dry_run: print each setting's overrides and workdir, run nothing.
    slurm: submitit's executor parameters for 'slurm' (`slurm_partition`, `timeout_min`,
      `gpus_per_node`, `slurm_array_parallelism`, ...).

  Returns:
    {'settings': n, 'skipped': [finished names], 'ran': [...], 'failed': [...],
     'submitted': [job ids]}.

  Raises:
    errors.ConfigError: an unknown launcher, or submitit / sbatch missing (before anything
      runs).
  """
  root = pathlib.Path(root)
  if launcher not in LAUNCHERS:
    raise errors.ConfigError(f"--sweep_launcher={launcher!r}: expected one of {LAUNCHERS}.")
  executor = None if dry_run or launcher == "local" else _executor(root, launcher, slurm or {})
  for s in sweep_settings:
    print(f"{s.workdir(root)}  {json.dumps(_jsonable(s.overrides))}")
  out = {"settings": len(sweep_settings), "skipped": [], "ran": [], "failed": [],
         "submitted": []}
  if dry_run:
    return out
  change = update_manifest(root, sweep_settings)
  if change["kept"] and (change["new"] or change["dropped"]):
    logging.info("Sweep in %s changed: new settings %s; dropped %s (their runs stay on disk); "
                 "%d kept.", root, change["new"] or "none", change["dropped"] or "none",
                 len(change["kept"]))
  todo = []
  for s in sweep_settings:
    if is_finished(s.workdir(root), s.config):
      out["skipped"].append(s.name)
    else:
      todo.append(s)
  logging.info("Sweep of %d settings in %s: %d finished, %d to run (%s).", len(sweep_settings),
               root, len(out["skipped"]), len(todo), launcher)
  if launcher == "local":
    for i, s in enumerate(todo, 1):
      logging.info("=== Sweep setting %d/%d: %s ===", i, len(todo), s.name)
      try:
        result = run_setting(s.config.to_json(), str(s.workdir(root)))
      except errors.BirnnError as e:
        logging.error("Sweep setting %s failed: %s", s.name, e)
        out["failed"].append(s.name)
        continue
      if "stopped_at_step" in result:   # a signal: stop the sweep too, resumable
        logging.warning("Sweep stopped in setting %s; re-run the same command to resume.",
                        s.name)
        break
      out["ran"].append(s.name)
    return out
  if not todo:
    return out
  jobs = executor.map_array(run_setting, [s.config.to_json() for s in todo],
                            [str(s.workdir(root)) for s in todo])
  out["submitted"] = [job.job_id for job in jobs]
  logging.info("Submitted %d jobs (%s): %s.", len(jobs), launcher, ", ".join(out["submitted"]))
  if launcher == "submitit_local":
    for s, job in builtins.zip(todo, jobs):
      try:
        job.result()
        out["ran"].append(s.name)
      except Exception:  # pylint: disable=broad-exception-caught
        out["failed"].append(s.name)
  return out


def _executor(root: pathlib.Path, launcher: str, slurm: dict):
  """submitit's executor for `launcher`, its logs in `<root>/submitit/`."""
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError(f"--sweep_launcher={launcher} needs submitit: pip install "
                             "'birnn_jax[train]' (or pip install submitit).") from e
  folder = root / "submitit" / "%j"
  if launcher == "submitit_local":
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=int(slurm.get("timeout_min", 60)))
    return executor
  missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
  if missing:
    raise errors.ConfigError(f"--sweep_launcher=slurm: no {' or '.join(missing)} on PATH (is "
                             "this a Slurm login node?); --sweep_launcher=local runs the "
                             "sweep here.")
  executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
  executor.update_parameters(**{k: v for k, v in slurm.items() if v not in (None, "", 0)})
  return executor
