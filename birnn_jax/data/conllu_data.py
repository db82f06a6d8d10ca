"""CoNLL-U (Universal Dependencies) reading for tagging, and the UD English-EWT files.

`read_conllu(path)` returns each sentence as a list of (form, upos) pairs, one per syntactic
word: multiword-token ranges (`1-2`) and empty nodes (`8.1`) are skipped. Parsing is done by
the `conllu` package; every line is first checked here, while streaming, so that malformed
input fails with a DataError naming the file, the line number and the problem (conllu's own
errors carry no line number).

Files may be plain or xz-compressed (`x.conllu.xz`); word forms are NFC-normalised, so a
word typed with combining accents and the same word precomposed are one form.

Any UD treebank: `load_treebank(folder)` finds `*-ud-{train,dev,test}.conllu[.xz]` by the UD
naming (any language prefix); a treebank without dev gets a seeded 10% of train held out.
UD English-EWT v2.16 (12,544 / 2,001 / 2,077 sentences) is bundled with the project:

    splits = load_ewt()                        # config.data.dir, $BIRNN_DATA_DIR, bundled
    splits.train[0]                            # [("Al", "PROPN"), ("-", "PUNCT"), ...]
    load_treebank("UD_Greek-GDT/")             # any treebank folder
"""

import os
import pathlib
import re
import unicodedata
from typing import Iterator, NamedTuple

from absl import logging
import conllu
import conllu.exceptions
import numpy as np

from birnn_jax.data import cache
from birnn_jax.data import common
from birnn_jax.data.common import DataError

# The 17 universal part-of-speech tags (https://universaldependencies.org/u/pos/); a tag's
# position here is its id.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
UPOS_IDS = {tag: i for i, tag in enumerate(UPOS)}

COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")

Sentence = list[tuple[str, str]]  # (form, upos) per word

SPLITS = ("train", "dev", "test")
# Release r2.16 of https://github.com/UniversalDependencies/UD_English-EWT, pinned by commit
# (bundled in birnn_jax/data/bundled/ud_english_ewt; the URL fills the cache only where the
# bundled copy is absent).
EWT = common.Corpus(
    subdir="ud_english_ewt",
    sha256={
        "en_ewt-ud-train.conllu":
            "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b",
        "en_ewt-ud-dev.conllu":
            "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
        "en_ewt-ud-test.conllu":
            "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
    },
    urls=("https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/"
          "4c89b5833a70aa5ed3a00bad2f23f57992cc7df8/{name}",))

_WORD_ID = re.compile(r"[1-9][0-9]{0,8}")
_RANGE_ID = re.compile(r"([1-9][0-9]{0,8})-([1-9][0-9]{0,8})")
_EMPTY_ID = re.compile(r"(0|[1-9][0-9]{0,8})\.[1-9][0-9]{0,8}")
# Somewhere in a tab-separated line: an empty column, whitespace at a column's edge, or two
# spaces in a row (which conllu would take for a column break).
_BAD_COLUMN = re.compile(r"(?:^|\t)(?:[^\S\t]|(?=\t|$))|[^\S\t](?=\t|$)|  ")
# conllu parses only the columns used here (faster, and nothing else to fail on).
_FIELDS = ("id", "form", "lemma", "upos")


class Treebank(NamedTuple):
  """A treebank's three splits, each a list of sentences of (form, upos), and where each
  came from (`sources[split]`: a path, or how dev was held out of train)."""
  train: list[Sentence]
  dev: list[Sentence]
  test: list[Sentence]
  sources: dict[str, str]


# Reading -------------------------------------------------------------------------------------

# The reader's output version (`cache.cached`): bump it when a file would read otherwise.
READER_VERSION = 1


def read_conllu(path: str | os.PathLike, max_length: int | None = None) -> list[Sentence]:
  """Reads a CoNLL-U file into sentences of (form, upos), one pair per syntactic word.

  A file read before (the same bytes, the same reader) comes from the parsed-corpus cache
  (`data.cache`) instead of being parsed again.

  Args:
    path: the .conllu or .conllu.xz file (UTF-8, 10 tab-separated columns per token line).
    max_length: longest sentence allowed, in words; None = no limit.

  Returns:
    The sentences, in file order (at least one).

  Raises:
    DataError: naming file and line, for a line that is not valid UTF-8; a token line without
      10 tab-separated columns, with an empty or space-padded column, or with an invalid ID or
      UPOS tag; a sentence with no words or more than `max_length` of them; a missing or
      unreadable file; or a file with no sentences.
  """
  if max_length is not None and max_length < 1:
    raise ValueError(f"max_length must be None or >= 1, got {max_length}.")
  return cache.cached(parse_conllu, path, READER_VERSION, max_length=max_length)


def parse_conllu(path: str | os.PathLike, max_length: int | None = None) -> list[Sentence]:
  """`read_conllu` without the cache: always parses the file."""
  return list(iter_conllu(path, max_length))


def iter_conllu(path: str | os.PathLike, max_length: int | None = None
                ) -> Iterator[Sentence]:
  """The sentences of a CoNLL-U file, parsed one at a time (the file is decompressed and
  decoded at once); see `read_conllu` for arguments and errors."""
  if max_length is not None and max_length < 1:
    raise ValueError(f"max_length must be None or >= 1, got {max_length}.")
  checker = _LineChecker(path)
  count = 0
  lines = common.read_lines(path)
  for start, block in checker.blocks(lines):
    tokenlist = _parse(block, path, start)
    sentence = [(unicodedata.normalize("NFC", t["form"]), t["upos"])
                for t in tokenlist if isinstance(t["id"], int)]
    _check_sentence(sentence, max_length, path, start)
    count += 1
    yield sentence
  if count == 0:
    raise DataError("no sentences in the file.", path, max(len(lines), 1))


def _parse_id(columns: list[str], i: int) -> int | str:
  """conllu's ID field, for an ID `_LineChecker` has already checked: a word ID as an int,
  a range or empty node as its text (conllu's own parser spends a regex on each)."""
  value = columns[i]
  return int(value) if value.isdigit() else value


_FIELD_PARSERS = {"id": _parse_id}


def _parse(block: list[tuple[int, str]], path, start: int) -> conllu.TokenList:
  """conllu's parse of one sentence block's token lines; its error as a DataError at the
  line it fails on."""
  data = "\n".join(text for _, text in block if not text.startswith("#"))
  if not data:
    return conllu.TokenList([])   # comments only: `_check_sentence` says so
  try:
    return conllu.parse_token_and_metadata(data, fields=_FIELDS, field_parsers=_FIELD_PARSERS)
  except (conllu.exceptions.ParseException, ValueError) as error:
    for number, text in block:
      if text.startswith("#"):
        continue
      try:
        conllu.parse_token_and_metadata(text, fields=_FIELDS, field_parsers=_FIELD_PARSERS)
      except (conllu.exceptions.ParseException, ValueError) as e:
        raise DataError(f"conllu cannot parse this line: {e}", path, number) from e
    raise DataError(f"conllu cannot parse this sentence: {error}", path, start) from error


def _check_sentence(sentence: Sentence, max_length: int | None, path, line: int) -> None:
  if not sentence:
    raise DataError("sentence has no words (only comments or multiword ranges).", path, line)
  if max_length is not None and len(sentence) > max_length:
    raise DataError(f"sentence has {len(sentence)} words, more than "
                    f"max_length={max_length}.", path, line)


class _LineChecker:
  """Checks each line of a CoNLL-U file and groups them into sentence blocks."""

  def __init__(self, path: str | os.PathLike):
    self.path = path
    self.line = 0

  def blocks(self, lines: list[str]) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """(first line number, [(line number, text), ...]) for each run of non-blank lines,
    every line checked before its block is yielded."""
    block, next_word = [], 1
    for self.line, text in enumerate(lines, 1):
      if not text.strip():
        if block:
          yield block[0][0], block
          block, next_word = [], 1
        continue
      if text.startswith("#"):
        self._check_comment(text)
      elif self._check_token(text, next_word):
        next_word += 1
      block.append((self.line, text))
    if block:
      yield block[0][0], block

  def _error(self, message: str) -> DataError:
    return DataError(message, self.path, self.line)

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


# Treebanks ----------------------------------------------------------------------------------

def find_treebank_files(folder: str | os.PathLike) -> dict[str, pathlib.Path | None]:
  """The UD files of a treebank folder: split -> path of `*-ud-<split>.conllu[.xz]`.

  Any language prefix works (`el_gdt-ud-train.conllu`, `ja_gsd-ud-dev.conllu.xz`). A plain
  file and its `.xz` twin count as one (the plain one is read). `dev` is None when the
  folder has none (see `load_treebank`).

  Raises:
    DataError: naming the folder, when it does not exist, has no train or no test file, or
      has two candidates for one split; the message lists what was found.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError("not a directory.", folder)
  found = {}
  for split in SPLITS:
    names = {common.plain_name(p) for p in folder.glob(f"*-ud-{split}.conllu*")
             if common.plain_name(p).endswith(f"-ud-{split}.conllu")}
    if len(names) > 1:
      raise DataError(f"{len(names)} candidate {split} files: {', '.join(sorted(names))}; "
                      f"keep one, or name the files with config.data.{split}_file.", folder)
    found[split] = common.find_file(folder, names.pop()) if names else None
  for split in ("train", "test"):
    if found[split] is None:
      present = sorted(p.name for p in folder.iterdir() if ".conllu" in p.name)
      raise DataError(f"no {split} file (*-ud-{split}.conllu, plain or .xz) in this folder; "
                      f"found {', '.join(present) or 'no CoNLL-U files'}. Point "
                      "config.data.dir at a UD treebank folder, or name the files with "
                      "config.data.train_file/dev_file/test_file.", folder)
  return found


def treebank_folder(data_dir: str | None) -> pathlib.Path:
  """The treebank folder for `config.data.dir`: the folder itself when it holds UD files,
  else its `ud_english_ewt/` (a data root); with no `data_dir`, English-EWT by the usual
  order ($BIRNN_DATA_DIR, the bundled copy, the cache; see `common.corpus_dir`)."""
  if data_dir:
    folder = pathlib.Path(data_dir).expanduser()
    if folder.is_dir() and not any(folder.glob("*-ud-train.conllu*")) and (
        folder / EWT.subdir).is_dir():
      return folder / EWT.subdir
    if not folder.is_dir():
      raise DataError(f"config.data.dir={data_dir!r} is not a directory.")
    return folder
  return common.corpus_dir(EWT)


def held_out_dev(train: list[Sentence], fraction: float, seed: int
                 ) -> tuple[list[Sentence], list[Sentence]]:
  """(train, dev): a seeded `fraction` of the sentences (at least one) moved to dev; both
  keep file order. The same (sentences, fraction, seed) always give the same split."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
  if len(train) < 2:
    raise DataError(f"cannot hold out a dev set from {len(train)} training sentence(s).")
  count = min(max(1, round(fraction * len(train))), len(train) - 1)
  chosen = np.zeros(len(train), bool)
  chosen[np.random.default_rng([seed, 2718]).permutation(len(train))[:count]] = True
  return ([s for s, c in zip(train, chosen) if not c], [s for s, c in zip(train, chosen) if c])


def load_treebank(folder: str | os.PathLike | None = None, *, files: dict | None = None,
                  max_length: int | None = None, dev_fraction: float = 0.1,
                  seed: int = 0) -> Treebank:
  """Reads a UD treebank's train/dev/test sentences.

  Args:
    folder: a treebank folder (see `find_treebank_files`); ignored when `files` names train.
    files: explicit paths {'train': ..., 'dev': ..., 'test': ...} ('' or None = not given;
      train and test are needed, dev is optional).
    max_length: passed to `read_conllu`.
    dev_fraction, seed: with no dev file, `held_out_dev(train, dev_fraction, seed)` makes one.

  Raises:
    DataError: a missing or malformed file, naming it (and its line).
  """
  files = {k: v for k, v in (files or {}).items() if v}
  if files.get("train"):
    paths = {split: pathlib.Path(files[split]) if files.get(split) else None
             for split in SPLITS}
    if paths["test"] is None:
      raise DataError("config.data.train_file is set but config.data.test_file is not; "
                      "name the test file too.", paths["train"])
  else:
    paths = find_treebank_files(folder)
  splits = {split: read_conllu(path, max_length) for split, path in paths.items() if path}
  sources = {split: str(path) for split, path in paths.items() if path}
  if paths["dev"] is None:
    splits["train"], splits["dev"] = held_out_dev(splits["train"], dev_fraction, seed)
    sources["dev"] = f"held out: {dev_fraction:.0%} of {sources['train']} (seed {seed})"
    logging.warning("No dev file: holding out %d of the training sentences as dev (%s).",
                    len(splits["dev"]), sources["dev"])
  return Treebank(splits["train"], splits["dev"], splits["test"], sources)


def load_ewt(data_dir: str | None = None, max_length: int | None = None) -> Treebank:
  """UD English-EWT v2.16 from `treebank_folder(data_dir)` (the bundled copy by default)."""
  return load_treebank(treebank_folder(data_dir), max_length=max_length)
