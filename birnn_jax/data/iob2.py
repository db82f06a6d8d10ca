"""Universal NER (UNER) `.iob2` files: tokens with IOB2 named-entity tags.

The format (https://www.universalner.org; UNER v1), one token per line:

    # sent_id = train-v2-0
    # text = På fredag har SID inviteret til reception i SID-huset ...
    1<TAB>På<TAB>O<TAB>O#O<TAB>s
    2<TAB>fredag<TAB>O<TAB>O#O<TAB>s
    3<TAB>har<TAB>O<TAB>O#O<TAB>s
    4<TAB>SID<TAB>B-ORG<TAB>B-ORG#O<TAB>s
    <blank line>

Five tab-separated columns: ID (1, 2, ... within the sentence), token, IOB2 tag, then two
annotation columns this reader ignores. Lines starting with '#' are comments; a blank line
ends a sentence. Tags are `O`, `B-<type>` or `I-<type>`; as the official UNER loaders do,
the `OTH` ("other") type and a literal `B-O` are read as `O`. Tokens are NFC-normalised, as
the CoNLL-U reader does. Files may be plain or xz-compressed (`x.iob2.xz`).

A UNER corpus is a folder of `*-train.iob2`, `*-dev.iob2` and `*-test.iob2` (any prefix,
plain or .xz). UNER Danish-DDT (4,383 / 564 / 565 sentences) is bundled with the project:

    splits = load_uner()                        # config.data.dir, $BIRNN_DATA_DIR, bundled
    splits.train[0][:4]                         # [("På", "O"), ("fredag", "O"), ("har", "O"),
                                                #  ("SID", "B-ORG")]
    load_uner("UNER_English-EWT/")              # any folder of UNER files
"""

import os
import pathlib
import re
import unicodedata
from typing import Collection, Iterator, NamedTuple

from birnn_jax.data import cache
from birnn_jax.data import common
from birnn_jax.data.common import DataError

Sentence = list[tuple[str, str]]  # (token, IOB2 tag) per token

SPLITS = ("train", "dev", "test")
NUM_COLUMNS = 5
DANISH_DDT_SUBDIR = "uner_danish_ddt"
# Tags read as O (the official UNER loaders' mapping).
OUTSIDE_ALIASES = frozenset({"B-OTH", "I-OTH", "B-O"})
SUFFIX = ".iob2"

_TAG = re.compile(r"O|[BI]-\S+")
_ID = re.compile(r"[1-9][0-9]{0,8}")


class Corpus(NamedTuple):
  """A UNER corpus's three splits, each a list of sentences, and the file each came from."""
  train: list[Sentence]
  dev: list[Sentence]
  test: list[Sentence]
  sources: dict[str, str]


# Reading -------------------------------------------------------------------------------------

# The reader's output version (`cache.cached`): bump it when a file would read otherwise.
READER_VERSION = 1


def read_iob2(path: str | os.PathLike, labels: Collection[str] | None = None,
              max_length: int | None = None) -> list[Sentence]:
  """Reads a UNER `.iob2` file (plain or .xz) into sentences of (token, tag).

  Args:
    path: the file.
    labels: the tags allowed after the OTH / B-O mapping (e.g. a task's label set); None
      allows any `O`, `B-X` or `I-X`.
    max_length: the longest sentence allowed, in tokens; None = no limit.

  A file read before (the same bytes, the same reader and arguments) comes from the
  parsed-corpus cache (`data.cache`) instead of being parsed again.

  Returns:
    The sentences in file order (at least one), OTH and B-O tags read as O.

  Raises:
    DataError: naming file and line, for a line that is not valid UTF-8; a token line
      without 5 tab-separated columns, with an empty token, an ID out of order or a tag
      that is not IOB2 (or not in `labels`); a sentence longer than `max_length`; a missing
      or unreadable file; or a file with no sentences.
  """
  if max_length is not None and max_length < 1:
    raise ValueError(f"max_length must be None or >= 1, got {max_length}.")
  return cache.cached(parse_iob2, path, READER_VERSION, labels=labels, max_length=max_length)


def parse_iob2(path: str | os.PathLike, labels: Collection[str] | None = None,
               max_length: int | None = None) -> list[Sentence]:
  """`read_iob2` without the cache: always parses the file."""
  return list(iter_iob2(path, labels, max_length))


def iter_iob2(path: str | os.PathLike, labels: Collection[str] | None = None,
              max_length: int | None = None) -> Iterator[Sentence]:
  """The sentences of a `.iob2` file, one at a time (the file is decompressed and decoded at
  once); see `read_iob2`."""
  if max_length is not None and max_length < 1:
    raise ValueError(f"max_length must be None or >= 1, got {max_length}.")
  count = 0
  for start, sentence in _sentences(path, common.read_lines(path), labels):
    if max_length is not None and len(sentence) > max_length:
      raise DataError(f"sentence has {len(sentence)} tokens, more than "
                      f"max_length={max_length}.", path, start)
    count += 1
    yield sentence
  if count == 0:
    raise DataError("no sentences in the file.", path)


def normalize_tag(tag: str) -> str:
  """The tag as read: OTH tags and a literal B-O become O, anything else is unchanged."""
  return "O" if tag in OUTSIDE_ALIASES else tag


def _sentences(path, lines: list[str], labels: Collection[str] | None
               ) -> Iterator[tuple[int, Sentence]]:
  """(first line number, sentence) for each sentence of a file's lines, checking each line."""
  sentence: Sentence = []
  start = 0
  for number, text in enumerate(lines, 1):
    if not text.strip():
      if sentence:
        yield start, sentence
      sentence = []
      continue
    if text.startswith("#"):
      continue
    if not sentence:
      start = number
    sentence.append(_token(text, len(sentence) + 1, labels, path, number))
  if sentence:
    yield start, sentence


def _token(text: str, expected_id: int, labels: Collection[str] | None, path,
           number: int) -> tuple[str, str]:
  """(token, tag) of a token line, or a DataError naming the problem."""
  cols = text.split("\t")
  if len(cols) != NUM_COLUMNS:
    raise DataError(f"expected {NUM_COLUMNS} tab-separated columns (ID, token, tag and two "
                    f"annotation columns), found {len(cols)}.", path, number)
  token_id, token, tag = cols[0], cols[1], cols[2]
  if not _ID.fullmatch(token_id):
    raise DataError(f"invalid ID {token_id!r}; expected a token number.", path, number)
  if int(token_id) != expected_id:
    raise DataError(f"token ID {token_id} out of order, expected {expected_id} (is the blank "
                    "line between two sentences missing?).", path, number)
  if not token.strip():
    raise DataError("the token column is empty.", path, number)
  if not _TAG.fullmatch(tag):
    raise DataError(f"invalid tag {tag!r}; expected O, B-<type> or I-<type>.", path, number)
  tag = normalize_tag(tag)
  if labels is not None and tag not in labels:
    raise DataError(f"unknown tag {tag!r}; expected one of {', '.join(labels)}.", path, number)
  return unicodedata.normalize("NFC", token), tag


# Corpora -------------------------------------------------------------------------------------

def find_split_files(folder: str | os.PathLike) -> dict[str, pathlib.Path]:
  """split -> the folder's `*-<split>.iob2` (or `.iob2.xz`) file, for train, dev and test.

  A plain file and its `.xz` twin count as one (the plain one is read).

  Raises:
    DataError: the folder is missing, or a split has no file or more than one.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError("not a directory.", folder)
  files = {}
  for split in SPLITS:
    pattern = f"*-{split}{SUFFIX}"
    names = sorted({common.plain_name(p) for p in folder.glob(pattern)} |
                   {common.plain_name(p) for p in folder.glob(pattern + ".xz")})
    if len(names) != 1:
      found = f"found {', '.join(names)}" if names else "found none"
      raise DataError(f"expected one {pattern} file (plain or .xz), {found}.", folder)
    files[split] = common.find_file(folder, names[0])
  return files


def uner_folder(data_dir: str | None = None, subdir: str = DANISH_DDT_SUBDIR) -> pathlib.Path:
  """Where a UNER corpus is read from.

  `data_dir` (`config.data.dir`) may itself be a folder of UNER files (`*-train.iob2`, ...,
  e.g. a user's UNER English-EWT download) or a root holding `<subdir>/`; unset, the search
  goes on as `common.resolve_data_dir` says: $BIRNN_DATA_DIR, then the bundled copy.
  """
  if data_dir:
    folder = pathlib.Path(data_dir).expanduser()
    if any(folder.glob(f"*-train{SUFFIX}")) or any(folder.glob(f"*-train{SUFFIX}.xz")):
      return folder
  return common.resolve_data_dir(data_dir or None, subdir)


def load_uner(data_dir: str | None = None, labels: Collection[str] | None = None,
              max_length: int | None = None, subdir: str = DANISH_DDT_SUBDIR) -> Corpus:
  """Reads the train, dev and test files of a UNER corpus (see `uner_folder`, `read_iob2`).

  Raises:
    DataError: a folder or file is missing, or a file is malformed.
  """
  files = find_split_files(uner_folder(data_dir, subdir))
  return Corpus(**{split: read_iob2(path, labels, max_length) for split, path in files.items()},
                sources={split: str(path) for split, path in files.items()})
