"""UNER .iob2 reader (birnn_jax/data/iob2.py): small files written here, malformed input
naming file and line, the OTH / B-O mapping, corpus folders (any prefix, .xz), and the
bundled UNER Danish-DDT."""

import collections
import lzma
import pathlib

import pytest

from birnn_jax.data import common
from birnn_jax.data import iob2
from birnn_jax.data.common import DataError


def _token(i, token, tag, misc="O#O", mark="s"):
  return "\t".join([str(i), token, tag, misc, mark]) + "\n"


GOOD = (
    "# sent_id = train-v2-0\n"
    "# text = Kjeld Christensen bor i Århus.\n"
    + _token(1, "Kjeld", "B-PER") + _token(2, "Christensen", "I-PER")
    + _token(3, "bor", "O") + _token(4, "i", "O") + _token(5, "Århus", "B-LOC")
    + _token(6, ".", "O")
    + "\n"
    "# sent_id = train-v2-1\n"
    + _token(1, "SID", "B-ORG", "B-ORG#O") + _token(2, "vandt", "O")
    + "\n")
GOOD_SENTENCES = [
    [("Kjeld", "B-PER"), ("Christensen", "I-PER"), ("bor", "O"), ("i", "O"),
     ("Århus", "B-LOC"), (".", "O")],
    [("SID", "B-ORG"), ("vandt", "O")],
]


def _write(folder: pathlib.Path, content: str | bytes, name: str = "x.iob2") -> pathlib.Path:
  path = folder / name
  data = content.encode("utf-8") if isinstance(content, str) else content
  path.write_bytes(lzma.compress(data) if name.endswith(".xz") else data)
  return path


# Well-formed input ---------------------------------------------------------------------------

def test_reads_tokens_and_tags(tmp_path):
  assert iob2.read_iob2(_write(tmp_path, GOOD)) == GOOD_SENTENCES


def test_tolerates_crlf_bom_extra_blank_lines_and_no_final_blank_line(tmp_path):
  text = "\ufeff" + GOOD.replace("\n", "\r\n").replace("\r\n\r\n", "\r\n\r\n\r\n")
  assert iob2.read_iob2(_write(tmp_path, text.rstrip("\r\n"))) == GOOD_SENTENCES


def test_reads_xz_compressed_files(tmp_path):
  assert iob2.read_iob2(_write(tmp_path, GOOD, "x.iob2.xz")) == GOOD_SENTENCES


def test_oth_and_b_o_are_read_as_outside(tmp_path):
  text = (_token(1, "Roskilde", "B-OTH") + _token(2, "Festival", "I-OTH")
          + _token(3, "og", "B-O") + _token(4, "Oslo", "B-LOC") + "\n")
  assert iob2.read_iob2(_write(tmp_path, text)) == [
      [("Roskilde", "O"), ("Festival", "O"), ("og", "O"), ("Oslo", "B-LOC")]]
  assert iob2.normalize_tag("I-OTH") == "O" and iob2.normalize_tag("I-PER") == "I-PER"


def test_tokens_are_nfc_normalised(tmp_path):
  decomposed = "A\u030arhus"                       # A + combining ring above
  path = _write(tmp_path, _token(1, decomposed, "B-LOC") + "\n")
  assert iob2.read_iob2(path) == [[("\u00c5rhus", "B-LOC")]]


# Malformed input: each names file and line ---------------------------------------------------

@pytest.mark.parametrize("bad_line, problem", [
    ("1\tKjeld\tB-PER\n", "expected 5 tab-separated columns"),
    ("1\tKjeld\tB-PER\tO\ts\textra\n", "found 6"),
    ("1 Kjeld B-PER O s\n", "found 1"),
    ("x\tKjeld\tB-PER\tO\ts\n", "invalid ID 'x'"),
    ("2\tKjeld\tB-PER\tO\ts\n", "token ID 2 out of order, expected 1"),
    ("1\t\tB-PER\tO\ts\n", "token column is empty"),
    ("1\tKjeld\tPER\tO\ts\n", "invalid tag 'PER'"),
    ("1\tKjeld\tE-PER\tO\ts\n", "invalid tag 'E-PER'"),
    ("1\tKjeld\tB-\tO\ts\n", "invalid tag 'B-'"),
])
def test_malformed_token_lines_name_file_and_line(tmp_path, bad_line, problem):
  text = GOOD + "# sent_id = bad\n" + bad_line + "\n"
  path = _write(tmp_path, text)
  with pytest.raises(DataError, match=problem) as info:
    iob2.read_iob2(path)
  bad_number = text.splitlines().index(bad_line.rstrip("\n")) + 1
  assert (info.value.path, info.value.line) == (path, bad_number)
  assert str(info.value).startswith(f"{path}:{bad_number}: ")


def test_missing_blank_line_between_sentences_is_an_id_error(tmp_path):
  path = _write(tmp_path, GOOD.replace("\n\n# sent_id = train-v2-1\n", "\n"))
  with pytest.raises(DataError, match="out of order, expected 7.*blank line") as info:
    iob2.read_iob2(path)
  assert info.value.line == 9


def test_invalid_utf8_names_the_line(tmp_path):
  path = _write(tmp_path, GOOD.encode() + _token(1, "x", "O").encode().replace(b"x", b"\xff"))
  with pytest.raises(DataError, match="invalid UTF-8 .*0xff") as info:
    iob2.read_iob2(path)
  assert info.value.line == GOOD.count("\n") + 1


def test_labels_restrict_the_tags(tmp_path):
  labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
  path = _write(tmp_path, GOOD)
  with pytest.raises(DataError, match="unknown tag 'B-ORG'") as info:
    iob2.read_iob2(path, labels)
  assert info.value.line == 11
  # B-OTH maps to O before the check, so it is allowed.
  assert iob2.read_iob2(_write(tmp_path, _token(1, "x", "B-OTH") + "\n"), labels) == [
      [("x", "O")]]


def test_empty_missing_and_too_long(tmp_path):
  with pytest.raises(DataError, match="no sentences"):
    iob2.read_iob2(_write(tmp_path, "# just a comment\n\n"))
  with pytest.raises(DataError, match="cannot read"):
    iob2.read_iob2(tmp_path / "nope.iob2")
  with pytest.raises(DataError, match="6 tokens, more than max_length=5") as info:
    iob2.read_iob2(_write(tmp_path, GOOD), max_length=5)
  assert info.value.line == 3
  assert len(iob2.read_iob2(_write(tmp_path, GOOD), max_length=6)) == 2


# Corpus folders ------------------------------------------------------------------------------

def _corpus(folder, prefix="en_ewt-ud", compressed=("test",)):
  folder.mkdir(parents=True, exist_ok=True)
  for split in iob2.SPLITS:
    suffix = ".xz" if split in compressed else ""
    _write(folder, GOOD, f"{prefix}-{split}.iob2{suffix}")
  return folder


def test_any_folder_of_uner_files_with_any_prefix(tmp_path):
  folder = _corpus(tmp_path / "UNER_English-EWT")
  corpus = iob2.load_uner(str(folder))
  assert corpus.train == corpus.dev == corpus.test == GOOD_SENTENCES
  assert corpus.sources["test"].endswith("en_ewt-ud-test.iob2.xz")
  # A root holding the corpus's subdir works too.
  root = tmp_path / "root"
  _corpus(root / iob2.DANISH_DDT_SUBDIR, prefix="da_ddt-ud")
  assert iob2.load_uner(str(root)).dev == GOOD_SENTENCES


def test_plain_file_wins_over_its_xz_twin(tmp_path):
  folder = _corpus(tmp_path / "c", compressed=())
  _write(folder, _token(1, "other", "O") + "\n", "en_ewt-ud-dev.iob2.xz")
  assert iob2.find_split_files(folder)["dev"].name == "en_ewt-ud-dev.iob2"


def test_folders_with_a_missing_or_ambiguous_split_fail(tmp_path):
  folder = _corpus(tmp_path / "c")
  (folder / "en_ewt-ud-dev.iob2").unlink()
  with pytest.raises(DataError, match=r"expected one \*-dev.iob2 file .*found none"):
    iob2.find_split_files(folder)
  _write(folder, GOOD, "a-dev.iob2")
  _write(folder, GOOD, "b-dev.iob2.xz")
  with pytest.raises(DataError, match="found a-dev.iob2, b-dev.iob2"):
    iob2.find_split_files(folder)
  with pytest.raises(DataError, match="config.data.dir"):
    iob2.load_uner(str(tmp_path / "nowhere"))


def test_bundled_danish_ddt(monkeypatch):
  monkeypatch.delenv(common.ENV_VAR, raising=False)
  corpus = iob2.load_uner()
  assert [len(getattr(corpus, s)) for s in iob2.SPLITS] == [4383, 564, 565]
  assert corpus.train[0][:4] == [("På", "O"), ("fredag", "O"), ("har", "O"), ("SID", "B-ORG")]
  tags = collections.Counter(t for s in corpus.test for _, t in s)
  assert set(tags) == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}
  assert tags["B-PER"] == 184 and tags["B-ORG"] == 172 and tags["B-LOC"] == 90
