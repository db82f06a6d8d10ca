"""What the generic trainer needs from a task.

A task owns its data (built from train only, vocabularies saved in the workdir), its model,
its loss/metrics and its predict function. The trainer calls:

    task = TaskClass(config, workdir, restore_run=...)   # validates task keys, loads data
    model = task.model()                     # model.apply(vars, batch, deterministic=...)
    task.train_batch(step)                   # same (seed, step) -> same batch: exact resume
    task.steps_per_epoch()                   # batches per epoch, or None (no epochs)
    task.eval_batches(split)                 # every example once, fixed shapes
    task.metric_sums(outputs, batch)         # jnp sums incl. 'loss' and 'count'

An experiment may train several variants of a config (e.g. bidirectional vs forward-only)
and then summarise them: `variants(config)` and `summarize(config, results)`.

Using a trained model (`training.inference`) needs no training data: a task built with
`inference=True` reads what it needs from the workdir alone (its saved vocabularies) and
never reads a corpus. Then:

    task.example_batch()                     # a tiny batch, for the parameters' shapes
    task.predict(params, text)               # --mode=predict --text
    task.file_formats                        # {format: file suffixes} of --input files
    task.read_records(fmt, file, path)       # an input file's records, streamed
    task.predict_records(params, fmt, recs)  # their output text, one string per record
    task.evaluate_file(params, path)         # --mode=eval --input: scores on any file
"""

import abc
import json
import pathlib
from typing import Callable, Iterable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from birnn_jax import errors
from birnn_jax.data import columns
from birnn_jax.tasks import losses

Batch = dict[str, np.ndarray]


def stack_batches(batches: list, what: str = "batches") -> Batch:
  """Host batches of one structure and shapes -> one batch whose arrays gain a leading
  member axis [N, ...] (`members`: each member's batch stacked).

  Raises:
    errors.DataError: the batches differ in structure or shape (naming the first array that
      does), which a task whose batches vary must align first (`member_train_batch`).
  """
  first = jax.tree_util.tree_structure(batches[0])
  for k, batch in enumerate(batches[1:], 1):
    if jax.tree_util.tree_structure(batch) != first:
      raise errors.DataError(f"{what}: member {k}'s batch has another structure than "
                             "member 0's.")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(batches[0]),
                            jax.tree.leaves(batch)):
      if np.shape(a) != np.shape(b):
        raise errors.DataError(f"{what}: member {k}'s {jax.tree_util.keystr(path)} is "
                               f"{np.shape(b)}, member 0's {np.shape(a)}.")
  return jax.tree.map(lambda *leaves: np.stack(leaves), *batches)


def override_variants(config: ml_collections.ConfigDict,
                      overrides: dict[str, dict[str, object]], switch: str = "") -> dict:
  """{name: copy of config with `model.<key> = value` for each of that name's overrides}.
  `switch`: the top-level key that asked for the comparison (e.g. 'compare_variants'), set
  False in every copy, since each variant is one model in its own workdir."""
  out = {}
  for name, model_values in overrides.items():
    cfg = config.copy_and_resolve_references()
    for key, value in model_values.items():
      cfg.model[key] = value
    if switch:
      cfg[switch] = False
    out[name] = cfg
  return out


class Task(abc.ABC):
  """Base class; subclasses set `eval_splits` (the first one is evaluated during training)."""

  eval_splits: tuple[str, ...] = ("eval",)

  file_formats: dict[str, tuple[str, ...]] = {}

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
               restore_run: Callable | None = None, inference: bool = False):
    """`restore_run(workdir, task=None) -> (task, params)` reads another trained run, for a
    task that builds on one (POS on a biLM's features); the runner passes its
    `training.trained.restore_run`, so tasks never import the runner. `inference`: build
    only what predicting needs, from the workdir alone (no corpus is read)."""
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.restore_run = restore_run
    self.inference = inference
    self.compiled_shapes: set = set()   # input shapes the prediction function has run on

  @abc.abstractmethod
  def model(self) -> nn.Module:
    """The Flax model; called as `model.apply(variables, batch, deterministic=...)`."""

  def model_inputs(self, batch: Batch) -> tuple:
    """Positional model arguments taken from a batch."""
    return batch["tokens"], batch["lengths"]

  @abc.abstractmethod
  def train_batch(self, step: int) -> Batch:
    """The global training batch of `step`, a pure function of (config.seed, step)."""

  def member_train_batch(self, tasks: list["Task"], step: int) -> Batch:
    """Training batch `step` of each member's task (seeds seed, seed + 1, ...), stacked
    [N, ...] (`stack_batches`). A task whose batches' shapes vary with the seed (length
    buckets) pads them to common shapes first, without changing what any member computes."""
    return stack_batches([t.train_batch(step) for t in tasks], f"training batch {step}")

  def member_eval_batches(self, tasks: list["Task"], split: str) -> list[Batch]:
    """Each member's evaluation batches of `split`, stacked batch by batch [N, ...]."""
    per_member = [list(t.eval_batches(split)) for t in tasks]
    return [stack_batches(list(b), f"{split} batch {i}")
            for i, b in enumerate(zip(*per_member))]

  def steps_per_epoch(self) -> int | None:
    """Training batches per pass over the training set (for `train.num_epochs` and the
    `*_every_epochs` intervals); None for a task without epochs (e.g. generated data)."""
    return None

  @abc.abstractmethod
  def eval_batches(self, split: str) -> Iterable[Batch]:
    """Batches covering `split` exactly once (padding rows carry zero weight)."""

  @abc.abstractmethod
  def metric_sums(self, outputs, batch: Batch) -> dict[str, jax.Array]:
    """Sums over the batch: 'loss' (the training objective), 'count', and any others;
    means are sums / count."""

  def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
    """Extra metrics from means (e.g. perplexity = exp(loss))."""
    return means

  def eval_ids(self, outputs) -> jax.Array | None:
    """What the eval step also returns of each batch: predicted ids (e.g. [B, T]) for a task
    whose final results need the eval splits' predictions, so that evaluating and
    predicting share one compiled step and one pass; None (the default): nothing."""
    del outputs
    return None

  def ensemble_outputs(self, member_outputs, inputs: tuple):
    """The outputs of one model made of N members (a seed ensemble, `training.ensemble`)
    from each member's outputs stacked on a leading axis [N, ...]; `inputs` are the model's
    inputs. By default, for logits [N, ..., C]: the log of the members' mean probabilities
    (`losses.mean_log_probabilities`), which the task's metrics and predictions read as
    logits. A task whose outputs are not logits defines its own (NER: the CRF's scores)."""
    del inputs
    if not isinstance(member_outputs, jax.Array):
      raise NotImplementedError(f"{type(self).__name__} does not combine its members' "
                                "outputs into an ensemble.")
    return losses.mean_log_probabilities(member_outputs)

  def extra_results(self, params, evaluate) -> dict:
    """Task-specific final results beside `{split}_{metric}`. `evaluate(params, split)` gives
    a split's metrics; `evaluate(params, split, predictions=True)` gives (metrics, a host
    array of `eval_ids` per batch of `eval_batches(split)`), from the final evaluation's
    own pass when it was of these params."""
    return {}

  def predict(self, variables, text: str) -> str:
    raise NotImplementedError(f"{type(self).__name__} has no predict mode.")

  # Using a trained model ------------------------------------------------------------------

  def example_batch(self) -> Batch:
    """A batch of the model's inputs whose shapes make its parameters (`jax.eval_shape`)."""
    return self.train_batch(0)

  def read_records(self, fmt: str, file, path) -> Iterable:
    """The records (sentences, lines) of an input file of format `fmt`, streamed; by
    default the non-empty lines of plain text (`columns.Line`)."""
    return columns.read_lines(file, path)

  def predict_line(self, params, text: str) -> dict:
    """The prediction for one line of plain text, as a JSON-ready dict."""
    raise NotImplementedError(f"{type(self).__name__} predicts no input files.")

  def predict_records(self, params, fmt: str, records: list) -> list[str]:
    """The output text of each record (a chunk of `read_records`), in order; by default
    one JSON line per line of text, `{"line": n, **predict_line(params, text)}`. A line
    the task cannot read (ValueError) is a DataError naming it."""
    out = []
    for record in records:
      try:
        prediction = self.predict_line(params, record.text)
      except ValueError as e:
        raise errors.DataError(str(e), None, record.number) from e
      out.append(json.dumps({"line": record.number, **prediction}, ensure_ascii=False) + "\n")
    return out

  def evaluate_file(self, params, path) -> tuple[dict, tuple | None]:
    """(scores, confusion) of the trained model on a file of the task's format: scores as
    JSON-ready dict; confusion None or (labels, counts [gold, predicted])."""
    raise NotImplementedError(f"{type(self).__name__} evaluates no input files.")

  # Experiment level -----------------------------------------------------------------------

  @classmethod
  def variants(cls, config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """Name -> config of each model the experiment trains ('' = one model, in the workdir)."""
    return {"": config}

  @classmethod
  def summarize(cls, config, results: dict[str, dict]) -> tuple[dict, str]:
    """(results.json contents, verdict line) from each variant's final metrics."""
    if list(results) == [""]:
      return results[""], ""
    return results, ""

  @classmethod
  def judge_over_seeds(cls, summary: dict, verdict: str) -> tuple[dict, str]:
    """A run of several members' (summary, verdict) once the statistics over seeds are in
    the summary (`members.experiment_statistics`): a task whose `summarize` verdict tests
    one seed's figures against one seed's noise judges here by the paired differences
    over seeds instead. Default: unchanged."""
    return summary, verdict
