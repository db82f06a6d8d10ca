"""Members: N models of one experiment, seeds `seed … seed + N − 1`, trained in one program
(design.md §9; `train.num_seeds`; docs/seeds.md).

Member k is the one-seed run of seed `seed + k`: its own initialisation, dropout RNG and
data order, each from the same functions of (seed, step) as a one-seed run's. So the member
axis is only a leading axis stacked onto what one-seed runs already compute:

- `member_configs`: one config per member, the seed its only difference;
- `stack` / `unstack`: host or device trees with a leading member axis, and back;
- `member_steps`: the train and eval steps vmapped over the member axis: one compiled
  program for all members, whatever N;
- `MembersTrainer`: a `trainer.Trainer` over that axis (per-member metrics, results,
  statistics; checkpoints of every member), `make_trainer` the one to use for a config;
  `MembersTrainer.ensemble_results` scores the members as one model (`ensemble`);
- `mean_results`, `experiment_statistics`, `statistics_table`, `seeds_verdict`: what the
  driver reports.

One idea over ~470 lines: the member axis, from the steps up to the run's results.
"""

from collections.abc import Callable, Sequence
import functools
import pathlib

import jax
import ml_collections
import numpy as np

from birnn_jax import errors
from birnn_jax.tasks import config_keys
from birnn_jax.tasks import losses
from birnn_jax.training import ensemble
from birnn_jax.training import metrics as metrics_lib
from birnn_jax.training import optim
from birnn_jax.training import sharding
from birnn_jax.training import stats
from birnn_jax.training import steps as steps_lib
from birnn_jax.training import trained
from birnn_jax.training import trainer as trainer_lib


def member_seeds(seed: int, num_members: int) -> list[int]:
  """`seed … seed + num_members − 1`: member k's seed."""
  if num_members < 1:
    raise ValueError(f"num_members={num_members}: expected at least 1.")
  return [seed + k for k in range(num_members)]


def member_configs(config: ml_collections.ConfigDict, num_members: int
                   ) -> list[ml_collections.ConfigDict]:
  """A copy of `config` per member, with member k's seed (nothing else differs)."""
  out = []
  for seed in member_seeds(config.seed, num_members):
    member = config.copy_and_resolve_references()
    member.seed = seed
    out.append(member)
  return out


def stack(trees: Sequence):
  """Trees of one structure -> one tree whose leaves gain a leading member axis [N, ...]
  (numpy leaves stay on the host, arrays and PRNG keys stay arrays)."""
  def stacked(*leaves):
    if isinstance(leaves[0], np.ndarray):
      return np.stack(leaves)
    return jax.numpy.stack(leaves)
  return jax.tree.map(stacked, *trees)


def unstack(tree, num_members: int) -> list:
  """The inverse of `stack`: member k's tree (leaf[k] of every leaf)."""
  return [jax.tree.map(lambda leaf, k=k: leaf[k], tree) for k in range(num_members)]


def member_steps(train_step: Callable, eval_step: Callable) -> tuple[Callable, Callable]:
  """`steps.make_steps`'s two steps over a leading member axis.

  Returns:
    `train_step(state [N, ...], batch [N, B, ...], rng [N]) -> (state, metrics [N, ...])`
    and `eval_step(params [N, ...], batch [N, B, ...]) -> (sums [N], ids [N, B, ...])`
    (each member evaluates its own batches: a task's held-out masks may follow the seed).
  """
  return jax.vmap(train_step), jax.vmap(eval_step)


# A run of several members ----------------------------------------------------------------------


def num_members(config: ml_collections.ConfigDict) -> int:
  """`train.num_seeds`: how many members the run trains (1 for a config without the key)."""
  return config_keys.added_key(config.train, "train.num_seeds")


def make_trainer(config: ml_collections.ConfigDict, workdir, read_only: bool = False
                 ) -> trainer_lib.Trainer:
  """The trainer of `config`: a `trainer.Trainer` for one seed (today's run, bit for bit),
  a `MembersTrainer` for `train.num_seeds` > 1."""
  cls = MembersTrainer if num_members(config) > 1 else trainer_lib.Trainer
  return cls(config, workdir, read_only=read_only)


def mean_results(per_member: list[dict]) -> dict:
  """The members' results averaged key by key (numbers; dicts of numbers recursively);
  anything else (text, flags, lists) is member 0's, and each member's `seed` is left out."""
  out = {}
  for key, value in per_member[0].items():
    if key == "seed":   # each member's own, not a figure to average
      continue
    values = [r.get(key) for r in per_member]
    if isinstance(value, dict) and all(isinstance(v, dict) for v in values):
      out[key] = mean_results(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      out[key] = float(np.mean(values))
    else:
      out[key] = value
  return out


class MembersWindow:
  """A `metrics.MetricWindow` per member, fed from the vmapped step's [N]-shaped metrics in
  one transfer per settle (`settle`), saved with each checkpoint as one host-state entry."""

  def __init__(self, windows: list[metrics_lib.MetricWindow]):
    self.windows = windows
    self._pending: list[tuple[int, dict]] = []

  @classmethod
  def restore(cls, saved: dict, n: int) -> "MembersWindow":
    entries = saved.get("members") or [{}] * n
    return cls([metrics_lib.MetricWindow.restore(e) for e in entries])

  def saved(self) -> dict:
    return {"members": [w.saved() for w in self.windows]}

  def add(self, step: int, step_metrics: dict) -> None:
    self._pending.append((step, step_metrics))

  @property
  def num_pending(self) -> int:
    return len(self._pending)

  def settle(self, accept: Callable) -> None:
    """`MetricWindow.settle` for every member: `accept(step, metrics, member=k)`."""
    pending, self._pending = self._pending, []
    for (step, _), fetched in zip(pending, jax.device_get([m for _, m in pending])):
      for k, window in enumerate(self.windows):
        window.absorb(step, {name: v[k] for name, v in fetched.items()},
                      lambda s, m, k=k: accept(s, m, member=k))

  def rows(self, derived_metrics: Callable) -> list[dict]:
    return [w.row(derived_metrics) for w in self.windows]


class MembersWriter:
  """A `metrics.MetricWriter` per member folder (metrics.jsonl, TensorBoard)."""

  def __init__(self, folders: list[pathlib.Path], enabled: bool):
    self.writers = [metrics_lib.MetricWriter(f, enabled=enabled) for f in folders]

  def truncate_after(self, step: int) -> None:
    for w in self.writers:
      w.truncate_after(step)

  def write(self, step: int, rows: list[dict]) -> None:
    for w, row in zip(self.writers, rows):
      if row:
        w.write(step, row)

  def close(self) -> None:
    for w in self.writers:
      w.close()


class MembersTrainer(trainer_lib.Trainer):
  """`train.num_seeds` = N members of one config, seeds `seed … seed + N − 1`, trained by
  one compiled train step vmapped over the member axis (and one eval step).

  Member k is the one-seed run of its seed: its own task (data order, rare-word dropout),
  initialisation and dropout keys; the batches of the members are stacked [N, B, ...]
  (`Task.member_train_batch` pads them to common shapes where they differ). Everything a run
  writes is per member, in `<workdir>/seed_<s>/` (metrics.jsonl, TensorBoard, plots,
  results.json); the checkpoints in `<workdir>/checkpoints` hold every member's state, so
  a resume is exact for all of them. A non-finite step of any member stops the run under
  nan_policy='stop' (naming the member); 'skip' skips that member's update only. The best
  checkpoint is ranked by the members' mean of `train.best_metric`, and each member's own
  best evaluation (step and value) is in its results. results.json holds the members' mean
  figures, each member's, and their statistics (`stats.summarize_members`).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir, read_only: bool = False):
    super().__init__(config, workdir, read_only)
    if jax.process_count() > 1:
      raise errors.ConfigError(
          f"config.train.num_seeds={num_members(config)}: several members train in one "
          "process for now; run one seed per process on several hosts.")
    self.num_members = num_members(config)
    self.seeds = member_seeds(config.seed, self.num_members)
    task_class = type(self.task)
    try:
      self.tasks = [self.task] + [task_class(c, self.workdir, restore_run=trained.restore_run)
                                  for c in member_configs(config, self.num_members)[1:]]
    except errors.WorkdirMismatchError as e:   # a vocabulary that depends on the seed
      raise errors.ConfigError(
          f"config.train.num_seeds={self.num_members}: the members must train on the same "
          f"data in another order, but member 1's data differ from member 0's ({e}). A "
          "split drawn by seed (e.g. a dev set held out of train) differs per member: give "
          "it a file of its own.") from e
    self.member_dirs = [self.workdir / f"seed_{s}" for s in self.seeds]
    # The member axis: replicated, or split over the mesh's 'members' axis (mesh.members).
    self._members = sharding.members_sharding(self.mesh)
    self._data = sharding.members_sharding(self.mesh, batch=True)
    train_step, eval_step = member_steps(*steps_lib.steps_from_config(
        self.task, self.model, self.tx, config.train))
    split = self._members
    self.train_step = jax.jit(train_step, in_shardings=(split, self._data, split),
                              out_shardings=(split, split), donate_argnums=0)
    self.eval_step = jax.jit(eval_step, in_shardings=(split, self._data), out_shardings=split)
    self._member_eval: dict[str, list] = {}
    self._ensemble_eval: dict[str, tuple] = {}   # split -> kept evaluation of the ensemble
    self._best = [None] * self.num_members     # each member's (value, step) of its best eval

  # The stacked keys, batches and placements.

  def init_key(self):
    return stack([jax.random.key(s) for s in self.seeds])

  def step_rng(self):
    return stack([jax.random.key(s + 1) for s in self.seeds])

  def train_batch(self, step: int) -> dict:
    return self.task.member_train_batch(self.tasks, step)

  def eval_batches(self, split: str) -> list:
    if split not in self._member_eval:
      self._member_eval[split] = self.task.member_eval_batches(self.tasks, split)
    return self._member_eval[split]

  def put(self, batch):
    return jax.device_put(batch, self._data)

  def batch_spec(self, batch):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), jax.dtypes.canonicalize_dtype(np.asarray(x).dtype), sharding=self._data),
        batch)

  @functools.cached_property
  def _init(self):
    ema = config_keys.added_key(self.config.train, "train.ema_decay") > 0
    def init(key, batch):
      return optim.init_state(self.model, self.tx, self.task.model_inputs(batch), key, ema=ema)
    return jax.jit(jax.vmap(init), out_shardings=self._members)

  def metric_writer(self) -> MembersWriter:
    return MembersWriter(self.member_dirs, enabled=trainer_lib.is_main_process())

  def metric_window(self, saved: dict) -> MembersWindow:
    return MembersWindow.restore(saved, self.num_members)

  def restore_host_state(self, host_state: dict) -> None:
    # Each member's best evaluation so far: a resumed run reports the same best as one
    # that never stopped.
    self._best = [None if b is None else tuple(b)
                  for b in host_state.get("best", [None] * self.num_members)]

  def extra_host_state(self) -> dict:
    return {"best": [None if b is None else list(b) for b in self._best]}

  # Evaluation, logging and results, per member.

  def evaluate(self, params, split: str, predictions: bool = False):
    """Each member's exact means over the split (a list, member order); with
    `predictions`, (means, each member's `eval_ids` per batch)."""
    def run():
      self._compiled("eval")
      totals = [{} for _ in self.seeds]
      ids = [[] for _ in self.seeds]
      for batch in self.eval_batches(split):
        sums, batch_ids = jax.device_get(self.eval_step(params, self.put(batch)))
        for k in range(self.num_members):
          for name, v in sums.items():
            totals[k][name] = totals[k].get(name, 0.0) + float(v[k])
          ids[k].append(None if batch_ids is None else batch_ids[k])
      return [self.task.derived_metrics(losses.means(t)) for t in totals], ids
    means, ids = trainer_lib.kept_evaluation(self._last_eval, split, params, run)
    means = [dict(m) for m in means]
    return (means, ids) if predictions else means

  # The members as one model: their ensemble.

  def ensemble_splits(self) -> list[str]:
    """The eval splits the members' ensemble is scored on: every one, for a task whose
    members predict as an ensemble (`ensemble.supports`) and see the same eval data."""
    if not ensemble.supports(self.task):
      return []
    return [s for s in self.task.eval_splits if ensemble.same_for_members(self.eval_batches(s))]

  @functools.cached_property
  def _ensemble_eval_step(self):
    _, eval_step = steps_lib.make_steps(self.task, ensemble.of_task(self.task), self.tx,
                                        self.config.train.nan_policy)
    return jax.jit(eval_step, in_shardings=(self._members, sharding.batch_sharding(self.mesh)),
                   out_shardings=sharding.replicated(self.mesh))

  def evaluate_ensemble(self, params, split: str, predictions: bool = False):
    """The ensemble's exact means over `split`, from the members' parameters stacked
    `params` [N, ...]; with `predictions`, (means, its `eval_ids` per batch): what
    `Trainer.evaluate` gives for one model, with the same batches (member 0's)."""
    def run():
      put = lambda batch: jax.device_put(batch, sharding.batch_sharding(self.mesh))
      totals, ids = trainer_lib.sum_batches(self._ensemble_eval_step, params,
                                            self.task.eval_batches(split), put)
      return self.task.derived_metrics(losses.means(totals)), ids
    means, ids = trainer_lib.kept_evaluation(self._ensemble_eval, split, params, run)
    return (dict(means), ids) if predictions else dict(means)

  def ensemble_results(self, params) -> dict:
    """The ensemble's figures, as one model's results: `{split}_{metric}` of every split it
    is scored on (`ensemble_splits`) and the task's extra results; {} without one."""
    splits = self.ensemble_splits()
    if not splits:
      return {}
    out = {"seeds": self.seeds}
    for split in splits:
      out.update({f"{split}_{k}": v for k, v in self.evaluate_ensemble(params, split).items()})
    if splits == list(self.task.eval_splits):
      out.update(self.task.extra_results(params, self.evaluate_ensemble))
    return out

  def eval_metric_names(self, params) -> list[str] | None:
    batch = next(iter(self.eval_batches(self.task.eval_splits[0])), None)
    if batch is None:
      return None
    sums, _ = jax.eval_shape(self.eval_step, params, self.batch_spec(batch))
    return list(self.task.derived_metrics(losses.means({k: 1.0 for k in sums})))

  def _accept(self, step: int, step_metrics: dict, member: int = 0) -> bool:
    try:
      return super()._accept(step, step_metrics)
    except errors.NonFiniteError as e:
      raise errors.NonFiniteError(f"member {member} (seed {self.seeds[member]}): {e}") from None

  def _log(self, step, params, window, writer, progress, due) -> list[dict]:
    rows = window.rows(self.task.derived_metrics) if "log" in due else [{}] * self.num_members
    rows = [dict(r) for r in rows]
    eval_metrics = []
    if "eval" in due:
      eval_metrics = self.evaluate(params, self.task.eval_splits[0])
      name = self.config.train.best_metric.removeprefix("eval_")
      better = (lambda a, b: a > b) if self.config.train.best_mode == "max" else (
          lambda a, b: a < b)
      for k, (row, m) in enumerate(zip(rows, eval_metrics)):
        row.update({f"eval_{key}": v for key, v in m.items()})
        if name in m and (self._best[k] is None or better(m[name], self._best[k][0])):
          self._best[k] = (m[name], step)
    if any(rows):
      writer.write(step, rows)
      progress.report(step, mean_results(rows))
    return eval_metrics

  def _save(self, step, state, window, eval_metrics, wait: bool) -> None:
    mean = mean_results(eval_metrics) if eval_metrics else {}
    super()._save(step, state, window, mean, wait)

  def _final_results(self, params, step: int, train_seconds: float) -> dict:
    shared = {"steps": step, "train_seconds": round(train_seconds, 2)}
    if self.schedule.steps_per_epoch:
      shared.update(steps_per_epoch=self.schedule.steps_per_epoch,
                    epochs=self.schedule.num_epochs)
    per_member = [dict(shared, seed=s) for s in self.seeds]
    for split in self.task.eval_splits:
      for k, m in enumerate(self.evaluate(params, split)):
        per_member[k].update({f"{split}_{name}": v for name, v in m.items()})
    for k, member_params in enumerate(unstack(params, self.num_members)):
      def evaluate_k(p, split, predictions=False, k=k):
        del p   # member k's slice of what the stacked parameters give
        out = self.evaluate(params, split, predictions)
        return (out[0][k], out[1][k]) if predictions else out[k]
      per_member[k].update(self.tasks[k].extra_results(member_params, evaluate_k))
      if self._best[k] is not None:
        per_member[k].update(best_step=self._best[k][1], best_value=self._best[k][0])
    results = {**mean_results(per_member), "seeds": self.seeds, "members": per_member,
               "statistics": stats.summarize_members(per_member)}
    ensemble_results = self.ensemble_results(params)
    if ensemble_results:
      results["ensemble"] = ensemble_results
    if trainer_lib.is_main_process():
      for folder, member in zip(self.member_dirs, per_member):
        folder.mkdir(parents=True, exist_ok=True)
        trainer_lib.write_json(folder / "results.json", member)
        metrics_lib.plot_curves(folder)
      trainer_lib.write_json(self.workdir / "results.json", results)
      metrics_lib.plot_member_curves(self.workdir, self.member_dirs)
    return results


# A run's numbers that describe how it ran, not how well: never compared between variants.
_BOOKKEEPING = ("steps", "epochs", "steps_per_epoch", "num_params", "train_seconds",
                "best_step", "best_value", "word_vocab_size", "char_vocab_size")


def _is_figure(key: str) -> bool:
  """Whether a results key is a figure of merit to compare (dev_/test_ metrics, and a
  task's own such as the LM's future_hidden_perplexity), not bookkeeping or a count."""
  return key not in _BOOKKEEPING and not key.endswith(("_count", "_positions", "_sentences",
                                                       "_over_max_length"))


def experiment_statistics(summary: dict, results: dict[str, dict]) -> dict:
  """An experiment's summary plus its members' statistics: for one model, its results
  already hold them; for variants, each variant's `statistics` and the paired difference
  over members (member k of the first variant against member k of each other) of every
  figure both report (`stats.paired_difference`): the dev_/test_ metrics and a task's own
  (e.g. future_hidden_perplexity), not bookkeeping (steps, sizes, times, counts)."""
  if list(results) == [""]:
    return summary
  names = list(results)
  first = results[names[0]]
  out = dict(summary, seeds=first["seeds"],
             member_statistics={n: r["statistics"] for n, r in results.items()})
  ensembles = {n: r["ensemble"] for n, r in results.items() if r.get("ensemble")}
  if ensembles:
    out["ensembles"] = ensembles
  paired = {}
  for other in names[1:]:
    keys = [k for k in first["statistics"] if _is_figure(k) and k in results[other]["statistics"]]
    paired[f"{names[0]}_minus_{other}"] = {
        k: stats.paired_difference([m[k] for m in first["members"]],
                                   [m[k] for m in results[other]["members"]]) for k in keys}
  out["paired_differences"] = paired
  return out


def seeds_verdict(summary: dict, metric: str) -> str:
  """One sentence of a summary's members' `metric` (e.g. 'test_f1'): each variant's mean ±
  sd over the seeds with its 95% interval and its ensemble's figure, then each paired
  difference with its interval and p-value; "" for a run of one seed or without it."""
  if "member_statistics" in summary:
    per_variant, ensembles = summary["member_statistics"], summary.get("ensembles", {})
  elif "statistics" in summary:
    per_variant, ensembles = {"": summary["statistics"]}, {"": summary.get("ensemble", {})}
  else:
    return ""
  figure = lambda x: "–" if x is None else f"{x:.4f}"
  parts = []
  for name, statistics in per_variant.items():
    d = statistics.get(metric)
    if d is None or d["mean"] is None:
      continue
    low, high = d["ci95"] or (None, None)
    part = (f"{name + ' ' if name else ''}{figure(d['mean'])} ± {figure(d['sd'])} "
            f"[{figure(low)}, {figure(high)}]")
    ensemble_value = (ensembles.get(name) or {}).get(metric)
    if ensemble_value is not None:
      part += f", ensemble {figure(ensemble_value)}"
    parts.append(part)
  if not parts:
    return ""
  seeds = summary.get("seeds", [])
  out = f"{metric} over {len(seeds)} seeds (mean ± sd [95% CI]): " + "; ".join(parts) + "."
  paired = [(name, d[metric]) for name, d in summary.get("paired_differences", {}).items()
            if metric in d and d[metric]["mean"] is not None]
  if paired:
    out += " Paired over seeds: " + "; ".join(
        f"{name} {d['mean']:+.4f} [{figure((d['ci95'] or [None])[0])}, "
        f"{figure((d['ci95'] or [None, None])[1])}], p = "
        f"{'–' if d['p_ttest'] is None else format(d['p_ttest'], '.3g')} (paired t)"
        for name, d in paired) + "."
  return out


def statistics_table(summary: dict) -> str:
  """The markdown table of a summary's member statistics (`stats.markdown_table`): each
  variant's figures (`_is_figure`) as mean ± sd with the 95% interval and the per-seed
  values, the ensemble's figure where there is one, and the paired differences; "" for a
  run of one seed."""
  if "member_statistics" in summary:
    per_variant, ensembles = summary["member_statistics"], summary.get("ensembles")
  elif "statistics" in summary:
    per_variant = {"": summary["statistics"]}
    ensembles = {"": summary["ensemble"]} if summary.get("ensemble") else None
  else:
    return ""
  keep = lambda s: {k: v for k, v in s.items() if _is_figure(k)}
  return stats.markdown_table({name: keep(s) for name, s in per_variant.items()},
                              summary.get("paired_differences", {}), ensemble=ensembles)
