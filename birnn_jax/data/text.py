"""The Time Machine: reading, tokenising, splitting, windowing, batching and masking text.

The ground floor for the three Time Machine tasks (masked-token fill-in, language modelling,
ELMo-style biLM). Pure numpy; it knows no model.

Pipeline (each step a public function, `load_time_machine` runs them all):
  read_time_machine(dir) -> str         d2l's preprocessing: letters and single spaces, lower case
  tokenize(text, level)  -> [str]       'char' (list of characters) or 'word' (whitespace split)
  split_stream(tokens)   -> 3 slices    contiguous 90/5/5 by position (train/valid/test)
  build_vocab(train)     -> Vocab       from the train tokens only; held-out words become UNK
  encode(tokens, vocab)  -> int32 [L]
  windows(ids, T, stride)-> int32 [N, T]
  batch_for_step(w, B, seed, step) -> [B, T]   the same batch for the same (seed, step)
  mask_tokens(...)       -> (inputs, targets, target_mask)   BERT-style 80/10/10 corruption
  blank_sentence(text, vocab, level=) -> (ids, positions)     "I am ___ hungry" for `predict`

Shape names: B batch, T time (window length), L stream length, N number of windows.
"""

import dataclasses
import functools
import operator
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

from birnn_jax.data import common
from birnn_jax.data.common import DataError
from birnn_jax.data.vocab import UNK, Vocab

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
# BERT's corruption of the chosen targets: [MASK], a random token, unchanged.
MASK_PROBS = (0.8, 0.1, 0.1)
BLANK = "___"
# The fill-in task's [MASK], reserved in every vocabulary `build_vocab` makes (id 2, after PAD
# and UNK), so the three Time Machine tasks share one id layout.
MASK_TOKEN = "<mask>"

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


def _check_level(level: str) -> None:
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")


def tokenize(text: str, level: str = "char") -> list[str]:
  """Tokens of a preprocessed text: its characters ('char', spaces included, as d2l) or its
  whitespace-separated words ('word')."""
  _check_level(level)
  return list(text) if level == "char" else text.split()


def detokenize(tokens: Iterable[str], level: str = "char") -> str:
  """Inverse of `tokenize` on preprocessed text: joined with '' ('char') or ' ' ('word')."""
  _check_level(level)
  return ("" if level == "char" else " ").join(tokens)


def build_vocab(train_tokens: Iterable[str], min_freq: int = 1,
                specials: Sequence[str] = (MASK_TOKEN,)) -> Vocab:
  """A Vocab from the TRAIN tokens only: PAD=0, UNK=1, `specials` (by default `<mask>` = 2),
  then the tokens seen at least `min_freq` times, by falling count; the rest map to UNK."""
  return Vocab.build([list(train_tokens)], min_freq=min_freq, specials=tuple(specials))


def mask_id(vocab: Vocab) -> int:
  """The id of `MASK_TOKEN` in `vocab`; ValueError if the vocab has none (build it with
  `build_vocab`, whose default specials include it)."""
  if MASK_TOKEN not in vocab:
    raise ValueError(f"the vocabulary has no {MASK_TOKEN!r} token; build it with "
                     f"build_vocab(..., specials=({MASK_TOKEN!r},)).")
  return vocab.token_to_id(MASK_TOKEN)


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
                     fractions: Sequence[float] = SPLIT_FRACTIONS) -> TextCorpus:
  """Tokenise `text` (already preprocessed), split, build the vocab from train, encode."""
  tokens = tokenize(text, level)
  train, valid, test = split_stream(tokens, fractions)
  vocab = build_vocab(train, min_freq)
  return TextCorpus(level, vocab, encode(train, vocab), encode(valid, vocab),
                    encode(test, vocab))


def load_time_machine(data_dir: str | None = None, level: str = "char", min_freq: int = 1,
                      fractions: Sequence[float] = SPLIT_FRACTIONS) -> TextCorpus:
  """The Time Machine as a `TextCorpus` (read, tokenise, split 90/5/5, vocab, encode)."""
  return corpus_from_text(read_time_machine(data_dir), level, min_freq, fractions)


# ------------------------------------------------------------------------------------------------
# Windows and deterministic batches.


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


def _non_negative(name: str, value: int) -> int:
  value = operator.index(value)
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}.")
  return value


@functools.lru_cache(maxsize=8)
def _cached_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  order = np.random.default_rng((seed, epoch)).permutation(n)
  order.flags.writeable = False
  return order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order <int64>[n] in which epoch `epoch` visits n windows:
  `np.random.default_rng((seed, epoch)).permutation(n)`."""
  n, seed, epoch = (_non_negative(k, v) for k, v in (("n", n), ("seed", seed), ("epoch", epoch)))
  return _cached_permutation(n, seed, epoch).copy()


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Window indices <int64>[batch_size] for training step `step` (0-based).

  The data order is one endless stream: epoch 0's permutation, then epoch 1's, ... (see
  `epoch_permutation`), and step s takes stream positions [s*B, (s+1)*B). So every window is
  seen exactly once per epoch, every batch is full, a batch may straddle two epochs when B
  does not divide n, and the batch is a pure function of (n, B, seed, step): a run resumed at
  step s sees exactly the data it would have seen.
  """
  n = _non_negative("n", n)
  batch_size, seed, step = (_non_negative(k, v) for k, v in
                            (("batch_size", batch_size), ("seed", seed), ("step", step)))
  if n < 1 or batch_size < 1:
    raise ValueError(f"need n >= 1 windows and batch_size >= 1, got {n} and {batch_size}.")
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = _cached_permutation(n, seed, int(epoch))[offsets[here]]
  return out


def steps_per_epoch(n: int, batch_size: int) -> float:
  """n / batch_size: the (possibly fractional) number of steps one pass over n windows takes."""
  return n / batch_size


def batch_for_step(windows_: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The batch <int32>[batch_size, T] for training step `step`: `windows_[batch_indices(...)]`.

  Same (seed, step) -> same batch; see `batch_indices` for the order.
  """
  windows_ = np.asarray(windows_)
  return windows_[batch_indices(len(windows_), batch_size, seed, step)]


# ------------------------------------------------------------------------------------------------
# Masking for the fill-in task.


def _valid_mask(ids: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
  """Real-token mask <bool>[B, T] from None (all real), lengths <int>[B] or a mask <bool>[B, T]."""
  if valid is None:
    return np.ones(ids.shape, dtype=bool)
  valid = np.asarray(valid)
  if valid.dtype == bool:
    if valid.shape != ids.shape:
      raise ValueError(f"mask shape {valid.shape} != ids shape {ids.shape}.")
    return valid
  if valid.shape != ids.shape[:1] or not np.issubdtype(valid.dtype, np.integer):
    raise ValueError(f"lengths must be <int>[B={ids.shape[0]}], got {valid.dtype}{valid.shape}.")
  if np.any(valid < 0) or np.any(valid > ids.shape[1]):
    raise ValueError(f"lengths must lie in [0, T={ids.shape[1]}], got {valid}.")
  return np.arange(ids.shape[1])[None, :] < valid[:, None]


def mask_tokens(ids: np.ndarray, valid: np.ndarray | None, rate: float,
                rng: np.random.Generator, mask_id: int, vocab_size: int,
                special_ids: Iterable[int] = (), probs: Sequence[float] = MASK_PROBS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """BERT-style corruption for masked-token fill-in.

  Candidates are the real positions (inside `valid`) whose id is neither in `special_ids` nor
  `mask_id`. In each row with c candidates exactly k = min(c, max(1, floor(rate * c + 0.5)))
  are chosen uniformly at random as targets (k = 0 when rate = 0 or c = 0). The "at least
  one" rule means every non-empty row contributes to the loss; it raises the effective rate
  only on rows shorter than 1 / (2 * rate) candidates. Each target independently becomes
  `mask_id` with probs[0], a random token with probs[1] (uniform over [0, vocab_size) minus
  `special_ids` and `mask_id`; it may equal the original), or stays unchanged with probs[2].
  Padding and special positions are never chosen and never changed.

  Args:
    ids: <int>[B, T] token ids.
    valid: which positions are real: None (all), lengths <int>[B] (t < lengths[b]), or
      <bool>[B, T].
    rate: the fraction of candidates to choose, in [0, 1].
    rng: the numpy Generator; the result is a pure function of its state and the inputs.
    mask_id: the [MASK] id.
    vocab_size: random replacements are drawn from [0, vocab_size).
    special_ids: ids never chosen nor drawn (PAD, and UNK/BOS/... as the task wants).
    probs: (mask, random, keep) probabilities of a target's corruption, summing to 1.

  Returns:
    inputs <int32>[B, T]: the corrupted ids the model reads.
    targets <int32>[B, T]: the original ids (`ids`); only positions in target_mask are scored.
    target_mask <bool>[B, T]: the chosen targets.
  """
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"ids must be <int>[B, T], got {ids.dtype}{ids.shape}.")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must lie in [0, 1], got {rate}.")
  probs = np.asarray(probs, dtype=np.float64)
  if probs.shape != (3,) or np.any(probs < 0) or abs(probs.sum() - 1) > 1e-9:
    raise ValueError(f"probs must be 3 non-negative numbers summing to 1, got {tuple(probs)}.")
  excluded = np.unique(np.asarray(list(special_ids) + [mask_id], dtype=np.int64))
  candidates = _valid_mask(ids, valid) & ~np.isin(ids, excluded)

  # Choose k per row: random scores, non-candidates last, the k lowest ranks win.
  counts = candidates.sum(axis=1)
  k = np.zeros_like(counts) if rate == 0 else np.minimum(
      counts, np.maximum(1, np.floor(rate * counts + 0.5).astype(counts.dtype)))
  scores = np.where(candidates, rng.random(ids.shape), np.inf)
  ranks = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
  target_mask = candidates & (ranks < k[:, None])

  # Corrupt the targets.
  u = rng.random(ids.shape)
  to_mask = target_mask & (u < probs[0])
  to_random = target_mask & (u >= probs[0]) & (u < probs[0] + probs[1])
  inputs = ids.astype(np.int32, copy=True)
  inputs[to_mask] = mask_id
  n_random = int(to_random.sum())
  if n_random:
    pool = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), excluded)
    if pool.size == 0:
      raise ValueError(f"no token to draw: vocab_size {vocab_size} minus specials {excluded}.")
    inputs[to_random] = pool[rng.integers(0, pool.size, size=n_random)]
  return inputs, ids.astype(np.int32, copy=True), target_mask


def blank_sentence(text: str, vocab: Vocab, blank: str = BLANK, *, level: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """A user's sentence with blanks, as ids for `predict`: "I am ___ hungry" -> [i, am, MASK,
  hungry] and the blank positions [2].

  The text between blanks is preprocessed the d2l way (lower case, non-letters to spaces) and
  tokenised at `level`; each `blank` becomes one MASK token (at char level one character:
  spaces around it are kept, so "the ___ime" asks for one letter). Leading/trailing spaces of
  the whole sentence are dropped.

  `level` is required (keyword) and must be the vocab's level: a char vocab read at word level
  knows no word, which is reported as "no known context".

  Returns:
    ids <int32>[L]: MASK at each blank, UNK for unknown tokens.
    positions <int64>[K]: the index of each blank in ids, in order (K >= 1).

  Raises:
    ValueError: no blank in `text`, or no known context: every non-blank token (not counting
      spaces) is unknown to `vocab`, or there is none.
  """
  _check_level(level)
  if not blank or blank not in text:
    raise ValueError(f"no blank {blank!r} in {text!r}: mark each word to fill in with {blank!r}.")
  pieces = [preprocess(p) for p in text.split(blank)]
  if level == "char":
    pieces[0], pieces[-1] = pieces[0].lstrip(), pieces[-1].rstrip()
  mask = mask_id(vocab)
  ids, positions = [], []
  known = 0
  for i, piece in enumerate(pieces):
    if i:
      positions.append(len(ids))
      ids.append(mask)
    tokens = tokenize(piece, level)
    piece_ids = encode(tokens, vocab).tolist() if tokens else []
    known += sum(1 for t, j in zip(tokens, piece_ids) if j != UNK and t != " ")
    ids.extend(piece_ids)
  if not known:
    raise ValueError(f"no known context in {text!r}: every token besides the blanks is unknown "
                     f"to the vocabulary (or there is none), so the blanks cannot be filled.")
  return np.asarray(ids, dtype=np.int32), np.asarray(positions, dtype=np.int64)
