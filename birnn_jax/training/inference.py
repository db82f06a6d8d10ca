"""Using a trained model: load it from its workdir alone, tag sentences, files and corpora.

    tagger = birnn_jax.load("runs/pos_ewt")                 # needs the `train` extra
    tagger.tag([["I", "saw", "her", "duck"]])               # [["PRON", "VERB", "PRON", "NOUN"]]
    tagger.predict_file("in.conllu", "out.conllu")          # the UPOS column predicted
    tagger.evaluate_file("other-test.conllu", "eval/")      # scores JSON + confusion PNG

Everything comes from the workdir: the saved config, the vocabularies and the latest
checkpoint's parameters (the moving average when the run kept one); no training corpus is
read. One path serves every task, through the Task protocol (`tasks.base.Task`): the task
reads and writes its own file formats, the runner streams a file through it in chunks, with
a progress line, a summary, and an output that appears only once it is complete.
"""

import contextlib
import json
import os
import pathlib
import secrets
import sys
import time
from typing import IO, Iterable, Iterator

from absl import logging
import ml_collections

from birnn_jax import errors
from birnn_jax import tasks
from birnn_jax.data import common as data_common
from birnn_jax.training import config_lib
from birnn_jax.training import ensemble
from birnn_jax.training import trained

CHUNK_SENTENCES = 2048   # records read, predicted and written at a time (memory stays flat)
PROGRESS_SECONDS = 5.0


def trained_runs(workdir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """{variant name: folder} of the trained runs in `workdir`: {'': workdir} for a run of
  one model, else its variants' folders (e.g. NER's crf / softmax / crf_forward) in the
  order of the experiment's results.json. Empty when nothing was trained there."""
  workdir = pathlib.Path(workdir)
  if (workdir / "config.json").is_file():
    return {"": workdir}
  names = [p.parent.name for p in sorted(workdir.glob("*/config.json"))]
  results = workdir / "results.json"
  if results.is_file():
    order = list(json.loads(results.read_text()))
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
  return {name: workdir / name for name in names}


def run_dir(workdir: str | os.PathLike, variant: str | None = None) -> pathlib.Path:
  """The folder of the trained run to use: `workdir` itself, or for an experiment of
  several variants (e.g. NER's crf / softmax / crf_forward) the named one, by default the
  first (the order of the experiment's results.json).

  Raises:
    errors.NoCheckpointError: `workdir` holds no trained run, or none named `variant`.
  """
  runs = trained_runs(workdir)
  if not runs:
    raise errors.NoCheckpointError(
        f"no checkpoint: {workdir} holds no trained run (no config.json in it or in a "
        "variant folder); train first (--mode=train): python launch.py "
        f"--config=experiments/<name>.py --workdir={workdir}")
  if not variant:
    return next(iter(runs.values()))
  if variant not in runs:
    names = ", ".join(repr(n) for n in runs if n) or "none: it is a run of one model"
    raise errors.NoCheckpointError(f"{workdir} holds no variant {variant!r}; its variants: "
                                   f"{names}.")
  return runs[variant]


def run_config(folder: str | os.PathLike, given=None, workdir: str | os.PathLike | None = None
               ) -> ml_collections.ConfigDict:
  """The config of the trained run in `folder`: the one it saved (config.json), which
  decides. A `given` experiment config (e.g. `--config`) is compared with it first: where
  it differs in what the model computes (`config_lib.model_differences`) it is refused with
  the list of differences; otherwise its `predict` keys (the inference settings: top-k
  fillers, generated tokens, ...) are used, and everything else comes from the saved one.

  Args:
    folder: the trained run's folder (`run_dir`).
    given: an experiment's config, or None.
    workdir: the experiment's workdir that `folder` is a variant of (default `folder`):
      `given`'s variant of the same name is the one compared.

  Raises:
    errors.NoCheckpointError: the folder has no config.json.
    errors.WorkdirMismatchError: `given` is a config of another model.
  """
  folder = pathlib.Path(folder)
  saved = trained.read_config(folder)
  if given is None:
    return saved
  saved_dict = saved.to_dict()
  name = folder.name if workdir is not None and folder != pathlib.Path(workdir) else ""
  try:
    candidates = tasks.get_task_class(given.task).variants(given)
  except (errors.BirnnError, ValueError):   # a config of another task, say: compare it whole
    candidates = {"": given}
  if name in candidates:
    candidates = {name: candidates[name]}
  diffs = min((config_lib.model_differences(saved_dict, c) for c in candidates.values()),
              key=len)
  if diffs:
    raise errors.WorkdirMismatchError(
        f"{folder} holds a run of a different model than --config describes; refusing to "
        "use it. Differences (saved -> --config):\n  " + "\n  ".join(diffs) +
        "\nLeave out --config (the workdir's config.json decides), or pass the config the "
        "run was trained with.")
  if "predict" in given:
    saved.predict = given.predict.copy_and_resolve_references()
  return saved


class Predictor:
  """A trained model loaded from its workdir: predicts from text, sentences and files.

  Attributes:
    task: the run's Task, built for inference (`inference=True`).
    params: the parameters predictions use (an ensemble's: its members' stacked).
    workdir: the run's folder.
    member: of a run of several members, the one predicting (its index) or 'ensemble';
      0 for a one-seed run.
  """

  def __init__(self, task, params, workdir: pathlib.Path, member: int | str = 0):
    self.task, self.params, self.workdir, self.member = task, params, workdir, member

  @property
  def config(self):
    return self.task.config

  def predict(self, text: str) -> str:
    """What `--mode=predict --text=...` prints for `text`."""
    return self.task.predict(self.params, text)

  def tag(self, sentences: Iterable[list[str] | str], batch_size: int | None = None
          ) -> list[list[str]]:
    """The predicted tag (POS: UPOS; NER: IOB2 label) of every token of each sentence.

    Args:
      sentences: token lists, or strings split on whitespace (a string alone is one
        sentence); an unknown word or character reads as UNK, and a sentence of any length
        is tagged in full.
      batch_size: sentences per batch (default `data.eval_batch_size`).
    """
    if not hasattr(self.task, "tag_sentences"):
      raise TypeError(f"a {self.config.task!r} model does not tag tokens; use predict().")
    sentences = _sentences(sentences)
    if not sentences:
      return []
    return self.task.tag_sentences(self.params, sentences, batch_size)

  def entities(self, sentences: Iterable[list[str] | str]) -> list[list[dict]]:
    """NER: each sentence's entities, `{"type", "start", "end", "text"}` (end exclusive);
    `sentences` as for `tag`."""
    from birnn_jax.tasks import entities, ner  # pylint: disable=g-import-not-at-top
    if not isinstance(self.task, ner.Task):
      raise TypeError(f"a {self.config.task!r} model finds no entities.")
    sentences = _sentences(sentences)
    return [entities.entity_spans(s, labels)
            for s, labels in zip(sentences, self.tag(sentences))]

  def file_format(self, path: str | os.PathLike, fmt: str | None = None) -> str:
    """The input format: `fmt`, else the one whose suffix `path` has; '-' (stdin) and an
    unknown suffix need `fmt` unless the task reads one format only."""
    formats = self.task.file_formats
    if not formats:
      raise errors.InputError(f"a {self.config.task!r} model reads no input files.")
    if fmt:
      if fmt not in formats:
        raise errors.InputError(f"--format={fmt!r}: a {self.config.task!r} model reads "
                                f"{', '.join(formats)}.")
      return fmt
    name = str(path).lower()
    for candidate, suffixes in formats.items():
      if any(name.endswith(s) for s in suffixes):
        return candidate
    if len(formats) == 1:
      return next(iter(formats))
    raise errors.InputError(f"cannot tell the format of {path} from its name; pass --format "
                            f"(one of {', '.join(formats)}).")

  def predict_file(self, input_path: str | os.PathLike, output_path: str | os.PathLike,
                   fmt: str | None = None, chunk_size: int = CHUNK_SENTENCES) -> dict:
    """Predicts every record of `input_path` into `output_path` ('-': stdin / stdout).

    The input is streamed in chunks of `chunk_size` records, so memory does not grow with
    the file; the output is written to a temporary file beside it and moved into place only
    when complete, so a bad line (reported as `file:line: ...`) or a kill never leaves a
    half-written output. Returns the summary (also logged): sentences, tokens, seconds,
    tokens/s, compiled shapes.
    """
    refuse_overwriting(input_path, output_path)
    if str(output_path) != "-" and os.path.exists(output_path) and pathlib.Path(
        output_path).resolve().is_relative_to(self.workdir.resolve()):
      raise errors.InputError(f"--output={output_path} is a file of the trained run in "
                              f"{self.workdir}: refusing to overwrite it.")
    fmt = self.file_format(input_path, fmt)
    start = time.monotonic()
    sentences = tokens = 0
    last_report = start
    with _open_input(input_path) as file, _atomic_output(output_path) as out:
      records = self.task.read_records(fmt, file, _display(input_path))
      for chunk in _chunks(records, chunk_size):
        try:
          texts = self.task.predict_records(self.params, fmt, chunk)
        except errors.DataError as e:
          if e.path is None:   # a task names the line; the runner knows the file
            raise errors.DataError(e.problem, _display(input_path), e.line) from e
          raise
        out.writelines(texts)
        sentences += len(chunk)
        tokens += sum(len(_words(r)) for r in chunk)
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS:
          logging.info("%d sentences (%.0f sentences/s, %.0f tokens/s)", sentences,
                       sentences / (now - start), tokens / (now - start))
          last_report = now
    seconds = time.monotonic() - start
    summary = {"input": _display(input_path), "output": _display(output_path, "<stdout>"),
               "format": fmt, "sentences": sentences, "tokens": tokens,
               "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)
               if seconds > 0 else None,
               "compiled_shapes": len(self.task.compiled_shapes)}
    logging.info("Predicted %d sentences (%d tokens) in %.1f s: %.0f tokens/s, %d compiled "
                 "shapes.", sentences, tokens, seconds, summary["tokens_per_second"] or 0,
                 summary["compiled_shapes"])
    return summary

  def evaluate_file(self, path: str | os.PathLike, out_dir: str | os.PathLike | None = None
                    ) -> dict:
    """Scores the model on a file of the task's format (POS: CoNLL-U accuracy per tag; NER:
    IOB2 entity F1 per type), without touching the run's training files. With `out_dir`,
    writes `eval_<name>.json` and the confusion matrix `plots/confusion_<name>.png`."""
    if out_dir is not None:
      out_dir = pathlib.Path(out_dir)
      if out_dir.exists() and not out_dir.is_dir():
        raise errors.InputError(f"--output={out_dir} is a file: --mode=eval writes a folder "
                                "(its scores JSON and confusion plot).")
      name = data_common.plain_name(path).rsplit(".", 1)[0]
      outputs = out_dir / f"eval_{name}.json", out_dir / "plots" / f"confusion_{name}.png"
      for output in outputs:
        refuse_overwriting(path, output)
    scores, confusion = self.task.evaluate_file(self.params, path)
    scores = {"file": str(path), "run": str(self.workdir), **scores}
    if out_dir is not None:
      _write_json(outputs[0], scores)
      if confusion is not None:
        from birnn_jax.training import metrics  # pylint: disable=g-import-not-at-top
        scores["confusion_png"] = str(metrics.plot_confusion(*confusion, outputs[1],
                                                             title=str(path)))
    return scores


def load(workdir: str | os.PathLike, variant: str | None = None, config=None,
         member: int | str | None = None) -> Predictor:
  """The trained model of `workdir` (see `run_dir` for experiments of several variants),
  from the workdir alone: no training corpus is read, and the run's saved config decides.

  Args:
    workdir: a trained run's workdir, or an experiment's with its variants' folders.
    variant: which variant's run (default: the first).
    config: an experiment config to check the run against and to take the `predict`
      settings from (`run_config`); None: the saved config alone.
    member: of a run of several members (`train.num_seeds`), which one: an index,
      'best', or 'ensemble' (all of them as one model: averaged probabilities, for the
      CRF averaged scores then constrained Viterbi), the default for a tagger
      (`trained.restore_run`).

  Raises:
    errors.NoCheckpointError: nothing trained in the workdir, or no such variant.
    errors.WorkdirMismatchError: `config` describes another model than the run's.
  """
  folder = run_dir(workdir, variant)
  config = run_config(folder, config, workdir)
  if config_lib.added_key(config, "smoke"):
    logging.warning(
        "%s was trained with a :smoke config (a tiny model, %s steps) to test the code path: "
        "its predictions mean nothing. Train without :smoke for a real model.", folder,
        config.train.get("num_steps"))
  index = trained.member_index(folder, config, member)
  task, params = trained.restore_run(folder, inference=True, config=config, member=index)
  seeds = config_lib.added_key(config.train, "train.num_seeds")
  if index == ensemble.NAME:
    logging.info("%s: predicting with the ensemble of its %d members (seeds %d..%d).", folder,
                 seeds, config.seed, config.seed + seeds - 1)
  elif seeds > 1:
    logging.info("%s: predicting with member %d (seed %d) of %d.", folder, index,
                 config.seed + index, seeds)
  return Predictor(task, params, folder, index)


# Files ------------------------------------------------------------------------------------------


def _display(path, stream: str = "<stdin>") -> str:
  return stream if str(path) == "-" else str(path)


def _sentences(sentences) -> list[list[str]]:
  """Token lists from token lists or whitespace-separated strings; a string is one sentence."""
  if isinstance(sentences, str):
    sentences = [sentences]
  return [s.split() if isinstance(s, str) else list(s) for s in sentences]


def refuse_overwriting(input_path, output_path) -> None:
  """An output must never replace its input, by whatever path names the same file (a
  relative path, a symbolic or hard link): checked before anything is read or written.

  Raises:
    errors.InputError: `output_path` is the input file, or an existing folder.
  """
  if str(output_path) == "-":
    return
  if os.path.isdir(output_path):
    raise errors.InputError(f"--output={output_path} is a folder: give the path of a file "
                            "to write (e.g. tagged.conllu).")
  if str(input_path) != "-" and os.path.exists(output_path) and os.path.samefile(
      input_path, output_path):
    raise errors.InputError(f"--output={output_path} is the input file {input_path}: "
                            "refusing to overwrite it; choose another --output.")


def _words(record) -> list:
  return getattr(record, "forms", None) or getattr(record, "tokens", None) or []


def _chunks(records: Iterable, size: int) -> Iterator[list]:
  chunk = []
  for record in records:
    chunk.append(record)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


@contextlib.contextmanager
def _open_input(path) -> Iterator[IO[bytes]]:
  if str(path) == "-":
    yield sys.stdin.buffer
    return
  with data_common.open_binary(path) as file:
    yield file


@contextlib.contextmanager
def _atomic_output(path) -> Iterator[IO[str]]:
  """A text file that appears at `path` only once the block ends without an error."""
  if str(path) == "-":
    yield sys.stdout
    sys.stdout.flush()
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = _new_file_beside(path)
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
      yield out
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _new_file_beside(path: pathlib.Path) -> tuple[int, str]:
  """(fd, name) of a new temporary file in `path`'s folder, created as `open` creates
  files (mode 0666 less the umask: `tempfile.mkstemp` would make it 0600)."""
  for _ in range(100):
    tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"))
    try:
      return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
    except FileExistsError:
      continue
  raise FileExistsError(f"no free temporary name beside {path}")


def _write_json(path: pathlib.Path, obj) -> None:
  with _atomic_output(path) as out:
    json.dump(obj, out, indent=2, ensure_ascii=False)
    out.write("\n")
