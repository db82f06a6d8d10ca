"""CoNLL-U reader: small files written here, malformed input, the real EWT files, download."""

import collections
import hashlib
import io
import os
import pathlib
import shutil
import tempfile
import urllib.request

import conllu
import conllu.exceptions
import hypothesis
import hypothesis.strategies as st
import pytest

from birnn_jax.data import common
from birnn_jax.data import conllu_data
from birnn_jax.data.common import DataError
from birnn_jax.data.conllu_data import UPOS, read_conllu

DATA_ROOT = pathlib.Path(os.environ.get(
    common.ENV_VAR, pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
EWT_DIR = DATA_ROOT / conllu_data.EWT_SUBDIR


def _line(*cols: str) -> str:
  return "\t".join(cols) + "\n"


def _word(i: int, form: str, upos: str) -> str:
  return _line(str(i), form, form.lower(), upos, "_", "_", str(i - 1), "dep", "_", "_")


GOOD = (
    "# newdoc id = d1\n"
    "# sent_id = s1\n"
    "# text = I can't go.\n"
    + _word(1, "I", "PRON")
    + _line("2-3", "can't", "_", "_", "_", "_", "_", "_", "_", "_")
    + _word(2, "ca", "AUX")
    + _word(3, "n't", "PART")
    + _line("4", "go", "go", "VERB", "VB", "Mood=Imp|VerbForm=Fin", "0", "root", "0:root",
            "SpaceAfter=No")
    + _line("4.1", "went", "go", "VERB", "VBD", "_", "_", "_", "0:root", "_")
    + _word(5, ".", "PUNCT")
    + "\n"
    "# sent_id = s2\n"
    + _word(1, "New York", "PROPN")
    + _word(2, "_", "SYM")
    + "\n")
GOOD_SENTENCES = [
    [("I", "PRON"), ("ca", "AUX"), ("n't", "PART"), ("go", "VERB"), (".", "PUNCT")],
    [("New York", "PROPN"), ("_", "SYM")],
]


def _write(folder: pathlib.Path, content: str | bytes, name: str = "x.conllu") -> pathlib.Path:
  path = folder / name
  path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
  return path


# Well-formed input ---------------------------------------------------------------------------

def test_reads_words_and_skips_ranges_and_empty_nodes(tmp_path):
  assert read_conllu(_write(tmp_path, GOOD)) == GOOD_SENTENCES


def test_line_endings_and_trailing_blank_lines_do_not_matter(tmp_path):
  variants = [GOOD.rstrip("\n"), GOOD + "\n\n", GOOD.replace("\n", "\r\n"),
              "\n\n" + GOOD, "\ufeff" + GOOD]
  for n, text in enumerate(variants):
    assert read_conllu(_write(tmp_path, text, f"{n}.conllu")) == GOOD_SENTENCES


def test_max_length_at_the_limit_is_accepted(tmp_path):
  assert read_conllu(_write(tmp_path, GOOD), max_length=5) == GOOD_SENTENCES


def test_upos_is_the_17_universal_tags():
  assert len(UPOS) == len(set(UPOS)) == 17
  assert conllu_data.UPOS_IDS == {tag: i for i, tag in enumerate(UPOS)}


# Malformed input: every error names the file and the line ------------------------------------

def _bad_cases():
  s1 = _word(1, "Hi", "INTJ")
  nine = "\t".join(["2", "there", "there", "ADV", "_", "_", "1", "dep", "_"]) + "\n"
  return {
      "wrong_column_count": ("# c\n" + s1 + nine + "\n", 3, "expected 10 tab-separated "
                             "columns, found 9"),
      "unknown_upos": (s1 + "\n" + s1 + _word(2, "x", "NOUNY") + "\n", 4,
                       "unknown UPOS tag 'NOUNY'"),
      "lowercase_upos": (_word(1, "x", "noun"), 1, "unknown UPOS tag 'noun'"),
      "empty_file": ("", 1, "no sentences"),
      "blank_lines_only": ("\n\n\n", 3, "no sentences"),
      "comments_only": ("\n# just a comment\n", 2, "sentence has no words"),
      "range_only": (_line("1-2", "can't", *["_"] * 8), 1, "sentence has no words"),
      "too_long": (s1 + "\n" + "# s2\n" + _word(1, "a", "DET") + _word(2, "b", "NOUN")
                   + _word(3, "c", "VERB"), 3, "sentence has 3 words, more than max_length=2"),
      "missing_blank_line": (s1 + _word(2, "a", "DET") + _word(1, "b", "NOUN"), 3,
                             "word ID 1 out of order, expected 3"),
      "bad_id": (s1 + _line("x", *["_"] * 9), 2, "invalid ID 'x'"),
      "backwards_range": (s1 + _line("3-2", *["_"] * 9), 2, "invalid ID '3-2'"),
      "empty_column": (s1 + _line("2", "", "_", "NOUN", *["_"] * 6), 2, "column FORM is empty"),
      "space_padded_column": (s1 + _line("2", "a ", "_", "NOUN", *["_"] * 6), 2,
                              "column FORM has leading or trailing whitespace"),
      "double_space": (_line("1", "a  b", "_", "X", *["_"] * 6), 1, "two spaces in a row"),
      "indented_comment": (s1 + " # comment\n", 2, "expected 10 tab-separated columns"),
      "conllu_plus": ("# global.columns = ID FORM UPOS\n" + s1, 1, "CoNLL-U Plus"),
  }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_malformed_input_names_file_and_line(tmp_path, case):
  text, line, problem = _bad_cases()[case]
  path = _write(tmp_path, text, f"{case}.conllu")
  with pytest.raises(DataError) as info:
    read_conllu(path, max_length=2 if case == "too_long" else None)
  assert str(info.value).startswith(f"{path}:{line}: ")
  assert problem in str(info.value)
  assert (info.value.path, info.value.line) == (path, line)


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_invalid_utf8_names_file_and_line(tmp_path, bad):
  content = _word(1, "ok", "ADJ").encode() + b"\n2\tb" + bad + b"d" + b"\t_" * 8 + b"\n"
  path = _write(tmp_path, content)
  with pytest.raises(DataError, match=r"invalid UTF-8") as info:
    read_conllu(path)
  assert str(info.value).startswith(f"{path}:3: ")


def test_missing_file_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="cannot read"):
    read_conllu(tmp_path / "nope.conllu")


def test_max_length_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="max_length"):
    read_conllu(_write(tmp_path, GOOD), max_length=0)


def test_a_conllu_error_is_reported_at_its_line(tmp_path, monkeypatch):
  """Errors raised inside conllu (none known after our checks) still get a line number."""
  original = conllu.parse_token_and_metadata

  def fragile(data, *args, **kwargs):
    if "BOOM" in data:
      raise conllu.exceptions.ParseException("boom")
    return original(data, *args, **kwargs)

  monkeypatch.setattr(conllu, "parse_token_and_metadata", fragile)
  text = GOOD + "# s3\n" + _word(1, "fine", "ADJ") + _word(2, "BOOM", "NOUN") + "\n"
  path = _write(tmp_path, text)
  with pytest.raises(DataError, match="conllu cannot parse this line: boom") as info:
    read_conllu(path)
  assert info.value.line == GOOD.count("\n") + 3


# Properties ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch():
  with tempfile.TemporaryDirectory() as folder:
    yield pathlib.Path(folder)


_FRAGMENTS = [b"\t", b"\n", b"\r", b" ", b"  ", b"#", b"1", b"2", b"0", b"-", b".", b"_",
              b"=", b"|", b":", b"\xff", b"\xc3\xa9", b"\xef\xbb\xbf", b"\x0c", b"\x1c",
              b"# global.columns = ID FORM\n", b"1-2", b"3.1", b"0:root"]
_FRAGMENTS += [tag.encode() for tag in UPOS]
_FRAGMENTS += [_word(i, "w", "NOUN").encode() for i in (1, 2, 3)]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(content=st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=3)),
             max_size=60).map(b"".join)))
def test_any_bytes_either_parse_or_raise_data_error(scratch, content):
  path = _write(scratch, content, "fuzz.conllu")
  try:
    sentences = read_conllu(path, max_length=4)
  except DataError as e:
    assert str(e).startswith(f"{path}:")
    return
  assert sentences and all(1 <= len(s) <= 4 for s in sentences)
  assert all(tag in conllu_data.UPOS_IDS for s in sentences for _, tag in s)


_FORM = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                min_size=1, max_size=8).filter(lambda f: f == f.strip() and "  " not in f)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(st.lists(st.lists(st.tuples(_FORM, st.sampled_from(UPOS)), min_size=1,
                                    max_size=6), min_size=1, max_size=4))
def test_valid_files_round_trip(scratch, sentences):
  blocks = ["".join(_word(i, form, tag) for i, (form, tag) in enumerate(s, 1))
            for s in sentences]
  path = _write(scratch, "\n".join(blocks) + "\n", "roundtrip.conllu")
  assert read_conllu(path) == [list(s) for s in sentences]


# The real UD English-EWT v2.16 files ---------------------------------------------------------

@pytest.fixture(scope="module")
def ewt():
  if not EWT_DIR.is_dir():
    pytest.skip(f"no {EWT_DIR}")
  return conllu_data.load_ewt(str(DATA_ROOT))


def test_ewt_counts(ewt):
  sentences = {split: len(s) for split, s in ewt._asdict().items()}
  words = {split: sum(map(len, s)) for split, s in ewt._asdict().items()}
  assert sentences == {"train": 12544, "dev": 2001, "test": 2077}
  assert words == {"train": 204577, "dev": 25147, "test": 25094}


def test_ewt_tags_are_upos_and_all_occur(ewt):
  for split in ewt:
    counts = collections.Counter(tag for s in split for _, tag in s)
    assert set(counts) == set(UPOS)


def test_ewt_first_sentence(ewt):
  assert ewt.train[0][:4] == [("Al", "PROPN"), ("-", "PUNCT"), ("Zaman", "PROPN"),
                              (":", "PUNCT")]


def test_ewt_checksums_match_the_shared_files():
  if not EWT_DIR.is_dir():
    pytest.skip(f"no {EWT_DIR}")
  for name, digest in conllu_data.EWT_SHA256.items():
    conllu_data.verify_sha256(EWT_DIR / name, digest)


# Data-dir resolution and download (never touches the network) --------------------------------

def _tiny_ewt(root: pathlib.Path) -> dict[str, str]:
  """Writes a small fake ud_english_ewt/ under root; returns name -> sha256."""
  folder = root / conllu_data.EWT_SUBDIR
  folder.mkdir(parents=True)
  for n, name in enumerate(conllu_data.EWT_FILES.values()):
    _write(folder, GOOD * (n + 1), name)
  return {name: conllu_data.sha256_file(folder / name)
          for name in conllu_data.EWT_FILES.values()}


def test_load_ewt_falls_back_to_the_env_var(tmp_path, monkeypatch):
  _tiny_ewt(tmp_path)
  monkeypatch.setenv(common.ENV_VAR, str(tmp_path))
  splits = conllu_data.load_ewt(None)
  assert [len(s) for s in splits] == [2, 4, 6]


def test_load_ewt_names_missing_files(tmp_path):
  (tmp_path / conllu_data.EWT_SUBDIR).mkdir()
  with pytest.raises(DataError, match="missing en_ewt-ud-train.conllu"):
    conllu_data.load_ewt(str(tmp_path))


def _serve(folder: pathlib.Path, calls: list, corrupt: bool = False):
  """A stand-in for urllib.request.urlopen serving files of `folder` by name."""
  def urlopen(url, timeout=None):
    calls.append(url)
    data = (folder / url.rsplit("/", 1)[1]).read_bytes()
    return io.BytesIO(data[:-1] + b"!" if corrupt else data)
  return urlopen


def test_download_verifies_and_keeps_good_files(tmp_path, monkeypatch):
  if not EWT_DIR.is_dir():
    pytest.skip(f"no {EWT_DIR}")
  calls = []
  monkeypatch.setattr(urllib.request, "urlopen", _serve(EWT_DIR, calls))
  folder = conllu_data.download_ewt(tmp_path)
  assert folder == tmp_path / conllu_data.EWT_SUBDIR
  assert sorted(p.name for p in folder.iterdir()) == sorted(conllu_data.EWT_FILES.values())
  assert all(url.startswith("https://raw.githubusercontent.com/UniversalDependencies/"
                            "UD_English-EWT/") for url in calls)
  assert len(calls) == 3
  conllu_data.download_ewt(tmp_path)
  assert len(calls) == 3  # nothing fetched again


def test_corrupt_download_fails_and_leaves_nothing(tmp_path, monkeypatch):
  source = tmp_path / "source"
  hashes = _tiny_ewt(source)
  monkeypatch.setattr(conllu_data, "EWT_SHA256", hashes)
  monkeypatch.setattr(urllib.request, "urlopen",
                      _serve(source / conllu_data.EWT_SUBDIR, [], corrupt=True))
  with pytest.raises(DataError, match="en_ewt-ud-train.conllu: sha256 is .*, expected"):
    conllu_data.download_ewt(tmp_path / "cache")
  assert list((tmp_path / "cache" / conllu_data.EWT_SUBDIR).iterdir()) == []


def test_load_ewt_downloads_into_the_cache_when_asked(tmp_path, monkeypatch):
  source = tmp_path / "source"
  monkeypatch.setattr(conllu_data, "EWT_SHA256", _tiny_ewt(source))
  monkeypatch.setattr(urllib.request, "urlopen", _serve(source / conllu_data.EWT_SUBDIR, []))
  monkeypatch.delenv(common.ENV_VAR, raising=False)
  monkeypatch.setattr(common, "CACHE_DIR", tmp_path / "cache")
  with pytest.raises(DataError, match="download_ewt"):
    conllu_data.load_ewt(None)
  assert [len(s) for s in conllu_data.load_ewt(None, download=True)] == [2, 4, 6]
  assert (tmp_path / "cache" / conllu_data.EWT_SUBDIR / "en_ewt-ud-dev.conllu").is_file()


def test_verify_sha256_rejects_a_corrupted_copy(tmp_path):
  good = _write(tmp_path, GOOD, "good.conllu")
  digest = hashlib.sha256(GOOD.encode()).hexdigest()
  conllu_data.verify_sha256(good, digest)
  bad = tmp_path / "bad.conllu"
  shutil.copy(good, bad)
  with open(bad, "r+b") as f:
    f.seek(10)
    f.write(b"X")
  with pytest.raises(DataError, match="bad.conllu: sha256 is"):
    conllu_data.verify_sha256(bad, digest)
