"""Files a trained tagger reads and writes: column files kept byte for byte, and plain text.

A column file (CoNLL-U, UNER's .iob2, CoNLL-style NER columns) is a sequence of sentence
blocks: comment lines ('#'), token lines of tab-separated columns, and a blank line that ends
the block. Tagging such a file replaces one column of the token lines and keeps every other
byte: comments, the other columns, line endings, and (CoNLL-U) multiword-token lines `1-2`
and empty nodes `8.1`, which are not words and are passed through untouched.

    blocks = read_blocks(open("in.conllu", "rb"), "in.conllu", CONLLU)
    for block in blocks:                       # block.forms: the words to tag
      out.write(block.with_column(["NOUN", ...]))

Plain text is one pre-tokenised sentence per line (tokens split on whitespace); an empty line
is no sentence. Every reader streams: it holds one block at a time.
"""

import dataclasses
import re
from typing import BinaryIO, Iterable, Iterator, NamedTuple

from birnn_jax.data import common
from birnn_jax.data.common import DataError

_WORD_ID = re.compile(r"[1-9][0-9]{0,8}")
_RANGE_ID = re.compile(r"[1-9][0-9]{0,8}-[1-9][0-9]{0,8}")
_EMPTY_ID = re.compile(r"(0|[1-9][0-9]{0,8})\.[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class ColumnFormat:
  """Where a column file keeps its words and its tags.

  Attributes:
    name: the format's name ('conllu', 'iob2').
    num_columns: tab-separated columns a token line must have (None: at least `tag_column + 1`).
    form_column, tag_column: 0-based columns of the word and of the tag to predict.
    skip_ids: CoNLL-U: token lines whose ID is a range or an empty node are not words.
  """
  name: str
  num_columns: int | None
  form_column: int
  tag_column: int
  skip_ids: bool = False


CONLLU = ColumnFormat("conllu", 10, form_column=1, tag_column=3, skip_ids=True)
IOB2 = ColumnFormat("iob2", None, form_column=1, tag_column=2)


class Block(NamedTuple):
  """One sentence block of a column file, as read.

  Attributes:
    lines: the block's lines exactly as read (decoded, with their line endings), the
      closing blank line included.
    word_lines: the index into `lines` of each word's token line, in order.
    forms: each word's form.
    first_line: the file's line number of `lines[0]` (1-based).
    tag_column: the column that `with_column` replaces.
  """
  lines: list[str]
  word_lines: list[int]
  forms: list[str]
  first_line: int
  tag_column: int

  def with_column(self, tags: Iterable[str]) -> str:
    """The block's text with each word's tag column set to `tags` (one per word)."""
    lines = list(self.lines)
    tags = list(tags)
    if len(tags) != len(self.word_lines):
      raise ValueError(f"{len(tags)} tags for the {len(self.word_lines)} words of the block "
                       f"at line {self.first_line}.")
    for index, tag in zip(self.word_lines, tags):
      lines[index] = replace_column(lines[index], self.tag_column, tag)
    return "".join(lines)


def replace_column(line: str, column: int, value: str) -> str:
  """`line` with its tab-separated `column` set to `value`, its line ending kept."""
  body = line.rstrip("\r\n")
  cols = body.split("\t")
  cols[column] = value
  return "\t".join(cols) + line[len(body):]


def read_blocks(file: BinaryIO, path, fmt: ColumnFormat) -> Iterator[Block]:
  """The sentence blocks of an open binary file, checking each token line.

  Raises:
    DataError: naming `path` and the line, for a line that is not UTF-8, a token line with
      too few columns, an empty form, or (CoNLL-U) an ID that is not a word, range or
      empty-node ID.
  """
  lines: list[str] = []
  word_lines: list[int] = []
  forms: list[str] = []
  first = 1
  number = 0
  for number, raw in enumerate(file, 1):
    text = _decode(raw, path, number)
    if not lines:
      first = number
    lines.append(text)
    body = text.rstrip("\r\n")
    if not body.strip():
      yield Block(lines, word_lines, forms, first, fmt.tag_column)
      lines, word_lines, forms = [], [], []
      continue
    if body.startswith("#"):
      continue
    form = _word_form(body, fmt, path, number)
    if form is not None:
      word_lines.append(len(lines) - 1)
      forms.append(form)
  if lines:
    yield Block(lines, word_lines, forms, first, fmt.tag_column)


def _decode(raw: bytes, path, number: int) -> str:
  """The line as read, line ending included; DataError naming file and line if not UTF-8."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    common.decode_line(raw, path, number)  # raises the DataError that names the byte
    raise


def _word_form(body: str, fmt: ColumnFormat, path, number: int) -> str | None:
  """The word form of a token line, None for a CoNLL-U line that is not a word."""
  cols = body.split("\t")
  needed = fmt.num_columns or fmt.tag_column + 1
  if len(cols) < needed or (fmt.num_columns and len(cols) != fmt.num_columns):
    expected = f"{fmt.num_columns}" if fmt.num_columns else f"at least {needed}"
    raise DataError(f"expected {expected} tab-separated columns in a {fmt.name} token "
                    f"line, found {len(cols)}.", path, number)
  if fmt.skip_ids:
    if _RANGE_ID.fullmatch(cols[0]) or _EMPTY_ID.fullmatch(cols[0]):
      return None
    if not _WORD_ID.fullmatch(cols[0]):
      raise DataError(f"invalid ID {cols[0]!r}; expected a word, range or empty-node ID.",
                      path, number)
  form = cols[fmt.form_column]
  if not form.strip():
    raise DataError("the form column is empty.", path, number)
  return form


class Line(NamedTuple):
  """A plain-text sentence: its line number, its text (without the line ending), its tokens."""
  number: int
  text: str
  tokens: list[str]


def read_lines(file: BinaryIO, path) -> Iterator[Line]:
  """The non-empty lines of an open binary file, each split on whitespace.

  Raises:
    DataError: naming `path` and the line, for a line that is not UTF-8.
  """
  for number, raw in enumerate(file, 1):
    text = common.decode_line(raw, path, number).rstrip("\r\n")
    tokens = text.split()
    if tokens:
      yield Line(number, text, tokens)


def conllu_sentence(sentence_id: int, text: str, forms: list[str], tags: list[str]) -> str:
  """A CoNLL-U block for a plain-text sentence: `# sent_id`, `# text`, one token line per
  form with its UPOS tag (other columns '_'), and the closing blank line."""
  lines = [f"# sent_id = {sentence_id}\n", f"# text = {text}\n"]
  lines += [f"{i}\t{form}\t_\t{tag}\t_\t_\t_\t_\t_\t_\n"
            for i, (form, tag) in enumerate(zip(forms, tags), 1)]
  return "".join(lines) + "\n"
