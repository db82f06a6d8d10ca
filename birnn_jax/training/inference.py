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
import sys
import tempfile
import time
from typing import IO, Iterable, Iterator

from absl import logging

from birnn_jax import errors
from birnn_jax.data import common as data_common
from birnn_jax.training import trained

CHUNK_SENTENCES = 2048   # records read, predicted and written at a time (memory stays flat)
PROGRESS_SECONDS = 5.0


def run_dir(workdir: str | os.PathLike, variant: str | None = None) -> pathlib.Path:
  """The folder of the trained run to use: `workdir` itself, or for an experiment of
  several variants (e.g. NER's crf / softmax / forward) the named one, by default the first
  (the order of the experiment's results.json).

  Raises:
    errors.NoCheckpointError: `workdir` holds no trained run.
  """
  workdir = pathlib.Path(workdir)
  if variant:
    workdir = workdir / variant
  if (workdir / "config.json").is_file():
    return workdir
  names = [p.parent.name for p in sorted(workdir.glob("*/config.json"))]
  results = workdir / "results.json"
  if results.is_file():
    order = list(json.loads(results.read_text()))
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
  if not names:
    raise errors.NoCheckpointError(
        f"{workdir} holds no trained run (no config.json in it or in a variant folder); "
        "train first: python launch.py --config=experiments/<name>.py --workdir=...")
  return workdir / names[0]


class Predictor:
  """A trained model loaded from its workdir: predicts from text, sentences and files.

  Attributes:
    task: the run's Task, built for inference (`inference=True`).
    params: the parameters predictions use.
    workdir: the run's folder.
  """

  def __init__(self, task, params, workdir: pathlib.Path):
    self.task, self.params, self.workdir = task, params, workdir

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
      sentences: token lists, or strings split on whitespace; an unknown word or character
        reads as UNK, and a sentence of any length is tagged in full.
      batch_size: sentences per batch (default `data.eval_batch_size`).
    """
    if not hasattr(self.task, "tag_sentences"):
      raise TypeError(f"a {self.config.task!r} model does not tag tokens; use predict().")
    sentences = [s.split() if isinstance(s, str) else list(s) for s in sentences]
    return self.task.tag_sentences(self.params, sentences, batch_size)

  def entities(self, sentences: Iterable[list[str] | str]) -> list[list[dict]]:
    """NER: each sentence's entities, `{"type", "start", "end", "text"}` (end exclusive)."""
    from birnn_jax.tasks import ner  # pylint: disable=g-import-not-at-top
    if not isinstance(self.task, ner.Task):
      raise TypeError(f"a {self.config.task!r} model finds no entities.")
    sentences = [s.split() if isinstance(s, str) else list(s) for s in sentences]
    return [ner.entity_spans(s, labels) for s, labels in zip(sentences, self.tag(sentences))]

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
    summary = {"input": _display(input_path), "output": _display(output_path),
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
    scores, confusion = self.task.evaluate_file(self.params, path)
    scores = {"file": str(path), **scores}
    if out_dir is not None:
      out_dir = pathlib.Path(out_dir)
      name = data_common.plain_name(path).rsplit(".", 1)[0]
      _write_json(out_dir / f"eval_{name}.json", scores)
      if confusion is not None:
        from birnn_jax.training import metrics  # pylint: disable=g-import-not-at-top
        scores["confusion_png"] = str(metrics.plot_confusion(
            *confusion, out_dir / "plots" / f"confusion_{name}.png", title=str(path)))
    return scores


def load(workdir: str | os.PathLike, variant: str | None = None, config=None) -> Predictor:
  """The trained model of `workdir` (see `run_dir` for experiments of several variants),
  from the workdir alone: no training corpus is read.

  Args:
    workdir: a trained run's workdir, or an experiment's with its variants' folders.
    variant: which variant's run (default: the first).
    config: the run's config, e.g. with `predict.*` keys changed; None: the saved one.

  Raises:
    errors.NoCheckpointError: nothing trained in the workdir.
  """
  folder = run_dir(workdir, variant)
  task, params = trained.restore_run(folder, inference=True, config=config)
  return Predictor(task, params, folder)


# Files ------------------------------------------------------------------------------------------


def _display(path) -> str:
  return "<stdin>" if str(path) == "-" else str(path)


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
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
      yield out
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _write_json(path: pathlib.Path, obj) -> None:
  with _atomic_output(path) as out:
    json.dump(obj, out, indent=2, ensure_ascii=False)
    out.write("\n")
