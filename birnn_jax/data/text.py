"""The Time Machine: reading, tokenising, splitting and windowing text.

The ground floor for the three Time Machine tasks (masked-token fill-in, language modelling,
ELMo-style biLM). Pure numpy; it knows no model and no task (masking lives in the masked-LM
task, training order in `data.sampling`).

Pipeline (each step a public function, `load_time_machine` runs them all):
  read_time_machine(dir) -> str         d2l's preprocessing: letters and single spaces, lower case
  tokenize(text, level)  -> [str]       'char' (list of characters) or 'word' (whitespace split)
  split_stream(tokens)   -> 3 slices    contiguous 90/5/5 by position (train/valid/test)
  build_vocab(train)     -> Vocab       from the train tokens only; held-out words become UNK
  encode(tokens, vocab)  -> int32 [L]
  windows(ids, T, stride)-> int32 [N, T]

Shape names: B batch, T time (window length), L stream length, N number of windows.
"""

import dataclasses
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

from birnn_jax.data import common
from birnn_jax.data.common import DataError
from birnn_jax.data.vocab import Vocab

FILENAME = "timemachine.txt"
# d2l's own download (d2l.DATA_URL + 'timemachine.txt') and, as a fallback, the d2l-zh commit
# the bundled copy was taken from (see bundled/time_machine/SOURCE.md). Both serve the same
# bytes (d2l checks sha1 090b5e7e70c295757f55df93cb0a180b9691891a; we check the sha256).
TIME_MACHINE = common.Corpus(
    subdir="time_machine",
    sha256={FILENAME: "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516"},
    urls=("http://d2l-data.s3-accelerate.amazonaws.com/{name}",
          "https://raw.githubusercontent.com/d2l-ai/d2l-zh/"
          "5918a8b9e8dd92e5085c15118e76c919b04f09a7/data/{name}"))
LEVELS = ("char", "word")
# Contiguous by position: the first 90% of the token stream trains, the next 5% validates, the
# last 5% tests. Held-out text is a passage the model never saw (not shuffled-in sentences that
# overlap training windows), so held-out perplexity is honest.
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)
SPLIT_NAMES = ("train", "valid", "test")

_NON_LETTERS = re.compile("[^A-Za-z]+")


# ------------------------------------------------------------------------------------------------
# Reading.


def preprocess(text: str) -> str:
  """d2l's preprocessing: every run of non-letters becomes one space, then lower case.

  Exactly `re.sub('[^A-Za-z]+', ' ', text).lower()` (d2l ch. 9.2, "Converting Raw Text into
  Sequence Data", `TimeMachine._preprocess`), applied to the whole text so line breaks are
  ordinary separators. The result holds only 'a'-'z' and ' ' (27 symbols).
  """
  return _NON_LETTERS.sub(" ", text).lower()


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
  """`data` decoded as UTF-8; DataError naming the file, line and column of the first bad byte."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(f"invalid UTF-8 at column {column} (byte offset {e.start}): {e.reason}.",
                    path, line) from None


def read_text(path: str | os.PathLike) -> str:
  """The preprocessed text of one UTF-8 file, plain or .xz (see `preprocess`).

  Raises:
    DataError: the file is missing, empty, not UTF-8 (names the line), or has no letters.
  """
  data = common.read_bytes(path)
  if not data:
    raise DataError("the file is empty.", path)
  text = preprocess(decode_utf8(data, path))
  if not text.strip():
    raise DataError("the file has no letters A-Z, so nothing is left after preprocessing.", path)
  return text


def time_machine_path(data_dir: str | None = None, *, download: bool = True) -> pathlib.Path:
  """Where The Time Machine is read from (`timemachine.txt` or `.txt.xz`), by the data
  resolution order of `common.corpus_dir` (the bundled copy unless a folder is configured).

  Raises:
    DataError: the folder has no such file, or it could not be fetched into the cache.
  """
  folder = common.corpus_dir(TIME_MACHINE, data_dir, download)
  path = common.find_file(folder, FILENAME)
  if path is None:
    raise DataError(f"no {FILENAME} (plain or .xz) in {folder}.", folder / FILENAME)
  return path


def read_time_machine(data_dir: str | None = None, *, download: bool = True) -> str:
  """The Time Machine, preprocessed the d2l way (a str of 'a'-'z' and ' ', 173,428 chars).

  Args:
    data_dir: `config.data.dir` (a root that holds `time_machine/`), or None for
      $BIRNN_DATA_DIR, then the bundled copy (see `common.resolve_data_dir`).
    download: only when nothing is configured and nothing is bundled: fetch the file into
      the cache (sha256-checked, `common.fetch_verified`).

  Raises:
    DataError: missing or malformed file, named with its line where there is one.
  """
  return read_text(time_machine_path(data_dir, download=download))


# ------------------------------------------------------------------------------------------------
# Tokens and vocabulary.


def check_level(level: str) -> None:
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")


def tokenize(text: str, level: str = "char") -> list[str]:
  """Tokens of a preprocessed text: its characters ('char', spaces included, as d2l) or its
  whitespace-separated words ('word')."""
  check_level(level)
  return list(text) if level == "char" else text.split()


def detokenize(tokens: Iterable[str], level: str = "char") -> str:
  """Inverse of `tokenize` on preprocessed text: joined with '' ('char') or ' ' ('word')."""
  check_level(level)
  return ("" if level == "char" else " ").join(tokens)


def build_vocab(train_tokens: Iterable[str], min_freq: int = 1,
                specials: Sequence[str] = ()) -> Vocab:
  """A Vocab from the TRAIN tokens only: PAD=0, UNK=1, then `specials` (a task's own tokens,
  e.g. a [MASK]), then the tokens seen at least `min_freq` times, by falling count; the rest
  map to UNK."""
  return Vocab.build([list(train_tokens)], min_freq=min_freq, specials=tuple(specials))


def encode(tokens: Sequence[str], vocab: Vocab) -> np.ndarray:
  """Token ids <int32>[L]; unknown tokens map to UNK."""
  return np.asarray(vocab.encode(tokens), dtype=np.int32).reshape(len(tokens))


def decode(ids: Sequence[int] | np.ndarray, vocab: Vocab, level: str = "char") -> str:
  """The text for ids <int>[L] (the inverse of `encode(tokenize(text))` for in-vocab text)."""
  return detokenize(vocab.decode(np.asarray(ids).reshape(-1)), level)


# ------------------------------------------------------------------------------------------------
# Splits.


def split_bounds(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, ...]:
  """Cut points (0, a, b, n) for contiguous train/valid/test parts of a length-`n` stream.

  `a = floor(n * f_train)`, `b = a + floor(n * f_valid)`; the test part takes the rest.

  Raises:
    ValueError: fractions that are negative, do not sum to 1, or leave a part with a positive
      fraction empty.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got "
                     f"{fractions}.")
  a = int(n * fractions[0])
  b = a + int(n * fractions[1])
  bounds = (0, a, b, n)
  for name, f, lo, hi in zip(SPLIT_NAMES, fractions, bounds, bounds[1:]):
    if f > 0 and hi <= lo:
      raise ValueError(f"a stream of {n} tokens is too short for a non-empty {name} split at "
                       f"fractions {fractions}.")
  return bounds


def split_stream(stream: Sequence, fractions: Sequence[float] = SPLIT_FRACTIONS
                 ) -> tuple[Sequence, Sequence, Sequence]:
  """(train, valid, test): contiguous slices of a token list or id array, in stream order.

  Deterministic (no randomness) and exhaustive: the three parts are disjoint and their
  concatenation is `stream`. With the default 90/5/5 the held-out parts are the book's last
  10%, a passage no training window overlaps.
  """
  _, a, b, n = split_bounds(len(stream), fractions)
  return stream[:a], stream[a:b], stream[b:n]


@dataclasses.dataclass(frozen=True)
class TextCorpus:
  """A tokenised, split, encoded text. ids are <int32>[L_split]; the vocab is from train only."""
  level: str
  vocab: Vocab
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray

  def split(self, name: str) -> np.ndarray:
    """The ids of split `name` ('train', 'valid' or 'test')."""
    if name not in SPLIT_NAMES:
      raise ValueError(f"split must be one of {SPLIT_NAMES}, got {name!r}.")
    return getattr(self, name)


def corpus_from_text(text: str, level: str = "char", min_freq: int = 1,
                     fractions: Sequence[float] = SPLIT_FRACTIONS,
                     specials: Sequence[str] = ()) -> TextCorpus:
  """Tokenise `text` (already preprocessed), split, build the vocab from train, encode."""
  tokens = tokenize(text, level)
  train, valid, test = split_stream(tokens, fractions)
  vocab = build_vocab(train, min_freq, specials)
  return TextCorpus(level, vocab, encode(train, vocab), encode(valid, vocab),
                    encode(test, vocab))


def load_time_machine(data_dir: str | None = None, level: str = "char", min_freq: int = 1,
                      fractions: Sequence[float] = SPLIT_FRACTIONS,
                      specials: Sequence[str] = ()) -> TextCorpus:
  """The Time Machine as a `TextCorpus` (read, tokenise, split 90/5/5, vocab, encode)."""
  return corpus_from_text(read_time_machine(data_dir), level, min_freq, fractions, specials)


# ------------------------------------------------------------------------------------------------
# Windows.


def windows(ids: np.ndarray, seq_len: int, stride: int | None = None) -> np.ndarray:
  """Fixed-length windows of a stream: <int32>[N, seq_len], row i = ids[i*stride : i*stride+T].

  N = (L - seq_len) // stride + 1; a tail shorter than a full window is dropped. For language
  modelling ask for `seq_len + 1` and use `w[:, :-1]` as inputs and `w[:, 1:]` as targets.

  Args:
    ids: <int>[L] token ids.
    seq_len: T, the window length.
    stride: the offset between window starts; None = seq_len (non-overlapping windows).

  Raises:
    ValueError: seq_len or stride < 1, or a stream shorter than one window.
  """
  ids = np.asarray(ids)
  stride = seq_len if stride is None else stride
  if ids.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {ids.shape}.")
  if seq_len < 1 or stride < 1:
    raise ValueError(f"seq_len and stride must be >= 1, got {seq_len} and {stride}.")
  if len(ids) < seq_len:
    raise ValueError(f"a stream of {len(ids)} tokens is shorter than one window of {seq_len}.")
  view = np.lib.stride_tricks.sliding_window_view(ids, seq_len)[::stride]
  return np.ascontiguousarray(view, dtype=np.int32)
