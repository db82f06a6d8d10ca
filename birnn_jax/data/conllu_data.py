"""CoNLL-U (Universal Dependencies) reading for tagging, and the UD English-EWT files.

`read_conllu(path)` returns each sentence as a list of (form, upos) pairs, one per syntactic
word: multiword-token ranges (`1-2`) and empty nodes (`8.1`) are skipped. Parsing is done by
the `conllu` package; every line is first checked here, while streaming, so that malformed
input fails with a DataError naming the file, the line number and the problem (conllu's own
errors carry no line number).

UD English-EWT v2.16 (12,544 / 2,001 / 2,077 sentences in train / dev / test):

    splits = load_ewt(config.data.dir)         # config value, $BIRNN_DATA_DIR, or the cache
    splits.train[0]                            # [("Al", "PROPN"), ("-", "PUNCT"), ...]
    download_ewt()                             # fills ~/.cache/birnn_jax/ud_english_ewt once
"""

import collections
import http.client
import os
import pathlib
import re
import shutil
import tempfile
import urllib.request
from typing import BinaryIO, Iterator, NamedTuple

import conllu
import conllu.exceptions

from birnn_jax.data import common
from birnn_jax.data.common import ENV_VAR, DataError, file_digest, resolve_data_dir

# The 17 universal part-of-speech tags (https://universaldependencies.org/u/pos/); a tag's
# position here is its id.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
UPOS_IDS = {tag: i for i, tag in enumerate(UPOS)}

COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")

Sentence = list[tuple[str, str]]  # (form, upos) per word

EWT_SUBDIR = "ud_english_ewt"
EWT_FILES = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu",
             "test": "en_ewt-ud-test.conllu"}
# Release r2.16 of https://github.com/UniversalDependencies/UD_English-EWT, pinned by commit.
EWT_URL = ("https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/"
           "4c89b5833a70aa5ed3a00bad2f23f57992cc7df8/{}")
EWT_SHA256 = {
    "en_ewt-ud-train.conllu":
        "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b",
    "en_ewt-ud-dev.conllu":
        "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
    "en_ewt-ud-test.conllu":
        "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
}

_WORD_ID = re.compile(r"[1-9][0-9]{0,8}")
_RANGE_ID = re.compile(r"([1-9][0-9]{0,8})-([1-9][0-9]{0,8})")
_EMPTY_ID = re.compile(r"(0|[1-9][0-9]{0,8})\.[1-9][0-9]{0,8}")
# Somewhere in a tab-separated line: an empty column, whitespace at a column's edge, or two
# spaces in a row (which conllu would take for a column break).
_BAD_COLUMN = re.compile(r"(?:^|\t)(?:[^\S\t]|(?=\t|$))|[^\S\t](?=\t|$)|  ")
# conllu parses only the columns used here (faster, and nothing else to fail on).
_FIELDS = ("id", "form", "lemma", "upos")


class EwtSplits(NamedTuple):
  """The three UD English-EWT splits, each a list of sentences of (form, upos)."""
  train: list[Sentence]
  dev: list[Sentence]
  test: list[Sentence]


# Reading -------------------------------------------------------------------------------------

def read_conllu(path: str | os.PathLike, max_length: int | None = None) -> list[Sentence]:
  """Reads a CoNLL-U file into sentences of (form, upos), one pair per syntactic word.

  Args:
    path: the .conllu file (UTF-8, 10 tab-separated columns per token line).
    max_length: longest sentence allowed, in words; None = no limit.

  Returns:
    The sentences, in file order (at least one).

  Raises:
    DataError: naming file and line, for a line that is not valid UTF-8; a token line without
      10 tab-separated columns, with an empty or space-padded column, or with an invalid ID or
      UPOS tag; a sentence with no words or more than `max_length` of them; a missing or
      unreadable file; or a file with no sentences.
  """
  return list(iter_conllu(path, max_length))


def iter_conllu(path: str | os.PathLike, max_length: int | None = None
                ) -> Iterator[Sentence]:
  """Streams the sentences of a CoNLL-U file; see `read_conllu` for arguments and errors."""
  if max_length is not None and max_length < 1:
    raise ValueError(f"max_length must be None or >= 1, got {max_length}.")
  try:
    f = open(path, "rb")
  except OSError as e:
    raise DataError(f"cannot read: {e.strerror}.", path) from e
  with f:
    lines = _CheckedLines(path, f)
    count = 0
    for tokenlist in _parse(lines):
      start, _ = lines.blocks.popleft()
      sentence = [(t["form"], t["upos"]) for t in tokenlist if isinstance(t["id"], int)]
      _check_sentence(sentence, max_length, path, start)
      count += 1
      yield sentence
    if count == 0:
      raise DataError("no sentences in the file.", path, max(lines.line, 1))


def _parse(lines: "_CheckedLines") -> Iterator[conllu.TokenList]:
  """conllu.parse_incr over the checked lines; a conllu error is re-raised as a DataError."""
  tokenlists = conllu.parse_incr(lines, fields=_FIELDS)
  while True:
    try:
      tokenlist = next(tokenlists)
    except StopIteration:
      return
    except DataError:
      raise
    except (conllu.exceptions.ParseException, ValueError) as e:
      raise _locate_conllu_error(lines, e) from e
    yield tokenlist


def _check_sentence(sentence: Sentence, max_length: int | None, path, line: int) -> None:
  if not sentence:
    raise DataError("sentence has no words (only comments or multiword ranges).", path, line)
  if max_length is not None and len(sentence) > max_length:
    raise DataError(f"sentence has {len(sentence)} words, more than "
                    f"max_length={max_length}.", path, line)


def _locate_conllu_error(lines: "_CheckedLines", error: Exception) -> DataError:
  """A DataError at the line that conllu fails on, in the sentence it was parsing."""
  start, block = lines.blocks[0] if lines.blocks else (lines.line, [])
  for number, text in block:
    try:
      conllu.parse_token_and_metadata(text, fields=_FIELDS)
    except (conllu.exceptions.ParseException, ValueError) as e:
      return DataError(f"conllu cannot parse this line: {e}", lines.path, number)
  return DataError(f"conllu cannot parse this sentence: {error}", lines.path, start)


class _CheckedLines:
  """The lines of a CoNLL-U file as text for conllu.parse_incr, each checked as it is read.

  Blank lines (sentence ends) reach conllu as "\\n". Each finished sentence block is appended
  to `blocks` as (first line number, [(line number, text), ...]) before conllu sees its end,
  so the caller pops one block per sentence conllu yields.
  """

  def __init__(self, path: str | os.PathLike, file: BinaryIO):
    self.path, self._file = path, file
    self.line = 0
    self.blocks: collections.deque = collections.deque()

  def read(self, size: int = -1) -> str:
    """Present because conllu.parse_incr requires it; parse_incr only iterates."""
    raise NotImplementedError("iterate over the lines instead.")

  def __iter__(self) -> Iterator[str]:
    block, next_word = [], 1
    for self.line, raw in enumerate(self._file, 1):
      text = self._decode(raw)
      if not text.strip():
        if block:
          self.blocks.append((block[0][0], block))
          block, next_word = [], 1
        yield "\n"
        continue
      if text.startswith("#"):
        self._check_comment(text)
      elif self._check_token(text, next_word):
        next_word += 1
      block.append((self.line, text))
      yield text + "\n"
    if block:
      self.blocks.append((block[0][0], block))

  def _error(self, message: str) -> DataError:
    return DataError(message, self.path, self.line)

  def _decode(self, raw: bytes) -> str:
    raw = raw.rstrip(b"\n")
    if raw.endswith(b"\r"):
      raw = raw[:-1]
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise self._error(f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset "
                        f"{e.start} of the line).") from e
    return text[1:] if self.line == 1 and text.startswith("\ufeff") else text

  def _check_comment(self, text: str) -> None:
    key, _, value = text[1:].partition("=")
    if key.strip() == "global.columns" and value.split() != list(COLUMNS):
      raise self._error(f"unsupported CoNLL-U Plus columns {value.strip()!r}; expected the "
                        f"10 CoNLL-U columns {' '.join(COLUMNS)}.")

  def _check_token(self, text: str, next_word: int) -> bool:
    """Raises unless `text` is a valid token line; True if it is a syntactic word."""
    cols = text.split("\t")
    if len(cols) != len(COLUMNS):
      raise self._error(f"expected {len(COLUMNS)} tab-separated columns, found {len(cols)}.")
    if _BAD_COLUMN.search(text):
      for name, col in zip(COLUMNS, cols):
        self._check_column(name, col)
    word = self._check_id(cols[0], next_word)
    if word and cols[3] not in UPOS_IDS:
      raise self._error(f"unknown UPOS tag {cols[3]!r}; expected one of {', '.join(UPOS)}.")
    return word

  def _check_column(self, name: str, col: str) -> None:
    if not col:
      raise self._error(f"column {name} is empty (use '_' for no value).")
    if col != col.strip():
      raise self._error(f"column {name} has leading or trailing whitespace: {col!r}.")
    if "  " in col:
      raise self._error(f"column {name} contains two spaces in a row: {col!r}.")

  def _check_id(self, value: str, next_word: int) -> bool:
    """Raises unless `value` is a valid ID; True for a word ID (not a range or empty node)."""
    if _WORD_ID.fullmatch(value):
      if int(value) != next_word:
        raise self._error(f"word ID {value} out of order, expected {next_word} (is the blank "
                          "line between two sentences missing?).")
      return True
    match = _RANGE_ID.fullmatch(value)
    if match and int(match[1]) <= int(match[2]):
      return False
    if _EMPTY_ID.fullmatch(value):
      return False
    raise self._error(f"invalid ID {value!r}; expected a word number (3), a multiword range "
                      "(3-4) or an empty node (3.1).")


# UD English-EWT ------------------------------------------------------------------------------

def load_ewt(data_dir: str | None = None, max_length: int | None = None,
             download: bool = False) -> EwtSplits:
  """Reads UD English-EWT from `<root>/ud_english_ewt/`.

  Args:
    data_dir: the data root (`config.data.dir`); None or "" falls back to $BIRNN_DATA_DIR,
      then to the cache (~/.cache/birnn_jax).
    max_length: passed to `read_conllu`.
    download: when the root is the cache and files are missing, fetch them (`download_ewt`).

  Raises:
    DataError: a folder or file is missing, or a file is malformed.
  """
  folder = resolve_data_dir(data_dir, EWT_SUBDIR)
  missing = [n for n in EWT_FILES.values() if not (folder / n).is_file()]
  if missing and download and folder == common.CACHE_DIR / EWT_SUBDIR:
    download_ewt()
  elif missing:
    raise DataError(f"missing {', '.join(missing)}; point config.data.dir or ${ENV_VAR} at a "
                    f"folder holding {EWT_SUBDIR}/, or call download_ewt().", folder)
  return EwtSplits(**{split: read_conllu(folder / name, max_length)
                      for split, name in EWT_FILES.items()})


def download_ewt(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Fetches the three EWT files from the UD repository into `<cache_dir>/ud_english_ewt/`.

  `cache_dir` defaults to ~/.cache/birnn_jax, where `load_ewt` looks last.

  Files already there with the right sha256 are kept; each new one is written under a
  temporary name, checked against `EWT_SHA256` and only then moved into place.

  Returns:
    The folder holding the files.

  Raises:
    DataError: a download fails or its checksum is wrong.
  """
  folder = pathlib.Path(cache_dir or common.CACHE_DIR).expanduser() / EWT_SUBDIR
  folder.mkdir(parents=True, exist_ok=True)
  for name, digest in EWT_SHA256.items():
    target = folder / name
    if target.is_file() and sha256_file(target) == digest:
      continue
    _fetch_verified(EWT_URL.format(name), target, digest)
  return folder


def _fetch_verified(url: str, target: pathlib.Path, digest: str) -> None:
  """Downloads `url` to `target` if its sha256 is `digest`; leaves nothing behind otherwise."""
  fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=60) as response:
          shutil.copyfileobj(response, out)
      except (OSError, http.client.HTTPException) as e:
        raise DataError(f"download of {url} failed: {e}", target) from e
    verify_sha256(tmp, digest, name=target)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def sha256_file(path: str | os.PathLike) -> str:
  """The hex sha256 of a file's bytes."""
  return file_digest(path, "sha256")


def verify_sha256(path: str | os.PathLike, expected: str,
                  name: str | os.PathLike | None = None) -> None:
  """Raises DataError (naming `name`, default `path`) unless the file's sha256 is `expected`."""
  actual = sha256_file(path)
  if actual != expected:
    raise DataError(f"sha256 is {actual}, expected {expected} (corrupt or changed "
                    "download).", name or path)
