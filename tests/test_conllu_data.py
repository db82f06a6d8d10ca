"""CoNLL-U reader: small files written here, malformed input, the bundled EWT files, any UD
treebank folder (naming, .xz, missing dev, bad folders, scripts)."""

import collections
import lzma
import pathlib
import tempfile
import unicodedata

import conllu
import conllu.exceptions
import hypothesis
import hypothesis.strategies as st
import pytest

from birnn_jax.data import common
from birnn_jax.data import conllu_data
from birnn_jax.data.common import DataError
from birnn_jax.data.conllu_data import UPOS, read_conllu


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
  # Forms come back NFC-normalised (e.g. U+F900 is read as U+8C48, the same ideograph).
  assert read_conllu(path) == [[(unicodedata.normalize("NFC", form), tag) for form, tag in s]
                               for s in sentences]


# The bundled UD English-EWT v2.16 files -----------------------------------------------------

@pytest.fixture(scope="module")
def ewt():
  return conllu_data.load_ewt()


def test_ewt_counts(ewt):
  sentences = {split: len(getattr(ewt, split)) for split in conllu_data.SPLITS}
  words = {split: sum(map(len, getattr(ewt, split))) for split in conllu_data.SPLITS}
  assert sentences == {"train": 12544, "dev": 2001, "test": 2077}
  assert words == {"train": 204577, "dev": 25147, "test": 25094}


def test_ewt_tags_are_upos_and_all_occur(ewt):
  for split in conllu_data.SPLITS:
    counts = collections.Counter(tag for s in getattr(ewt, split) for _, tag in s)
    assert set(counts) == set(UPOS)


def test_ewt_first_sentence(ewt):
  assert ewt.train[0][:4] == [("Al", "PROPN"), ("-", "PUNCT"), ("Zaman", "PROPN"),
                              (":", "PUNCT")]


def test_ewt_is_read_from_the_bundled_copy_by_default(ewt, monkeypatch):
  monkeypatch.delenv(common.ENV_VAR, raising=False)
  assert conllu_data.treebank_folder(None) == common.BUNDLED_DIR / "ud_english_ewt"
  assert all(src.endswith(".conllu.xz") for src in ewt.sources.values())


def test_bundled_ewt_is_the_released_bytes():
  folder = common.BUNDLED_DIR / conllu_data.EWT.subdir
  for name, digest in conllu_data.EWT.sha256.items():
    common.verify_sha256(folder / (name + ".xz"), digest)
  assert (folder / "LICENSE.txt").is_file() and (folder / "SOURCE.md").is_file()


# Any UD treebank ------------------------------------------------------------------------------

def _treebank(folder: pathlib.Path, prefix: str = "xx_test", splits=("train", "dev", "test"),
              compress: bool = False, sentences: str = GOOD) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for n, split in enumerate(splits):
    name = f"{prefix}-ud-{split}.conllu"
    data = (sentences * (n + 1)).encode()
    if compress:
      (folder / (name + ".xz")).write_bytes(lzma.compress(data))
    else:
      (folder / name).write_bytes(data)
  return folder


@pytest.mark.parametrize("prefix", ["el_gdt", "ja_gsd", "en_ewt", "qtd_sagt"])
def test_finds_the_ud_files_of_any_language(tmp_path, prefix):
  folder = _treebank(tmp_path / prefix, prefix)
  (folder / "README.md").write_text("not a treebank file")
  found = conllu_data.find_treebank_files(folder)
  assert {k: p.name for k, p in found.items()} == {
      s: f"{prefix}-ud-{s}.conllu" for s in conllu_data.SPLITS}


def test_xz_reads_the_same_as_plain(tmp_path):
  plain = conllu_data.load_treebank(_treebank(tmp_path / "plain"))
  packed = conllu_data.load_treebank(_treebank(tmp_path / "packed", compress=True))
  assert packed.sources["train"].endswith(".conllu.xz")
  assert (plain.train, plain.dev, plain.test) == (packed.train, packed.dev, packed.test)
  assert [len(plain.train), len(plain.dev), len(plain.test)] == [2, 4, 6]


def test_a_damaged_xz_file_is_a_clear_error(tmp_path):
  folder = _treebank(tmp_path / "tb", compress=True)
  (folder / "xx_test-ud-train.conllu.xz").write_bytes(b"\xfd7zXZ\x00 not really xz")
  with pytest.raises(DataError, match=r"xx_test-ud-train.conllu.xz: cannot read"):
    conllu_data.load_treebank(folder)


def test_missing_dev_holds_out_a_seeded_tenth_of_train(tmp_path):
  distinct = "".join(_word(1, f"w{i}", "NOUN") + "\n" for i in range(30))
  folder = _treebank(tmp_path / "tb", splits=("train", "test"), sentences=distinct)
  full = read_conllu(folder / "xx_test-ud-train.conllu")
  tb = conllu_data.load_treebank(folder, seed=3)
  assert len(full) == 30 and len(tb.dev) == 3 and len(tb.train) == 27
  assert sorted(tb.train + tb.dev) == sorted(full)
  assert tb.train == [s for s in full if s not in tb.dev]      # file order kept
  assert "held out: 10%" in tb.sources["dev"] and "seed 3" in tb.sources["dev"]
  again = conllu_data.load_treebank(folder, seed=3)
  assert (again.train, again.dev) == (tb.train, tb.dev)
  assert conllu_data.held_out_dev(full, 0.1, seed=4)[1] != tb.dev


def test_a_folder_without_train_names_what_it_found(tmp_path):
  folder = _treebank(tmp_path / "tb", splits=("dev", "test"))
  with pytest.raises(DataError, match=r"tb: no train file .*found xx_test-ud-dev.conllu, "
                     r"xx_test-ud-test.conllu"):
    conllu_data.load_treebank(folder)


def test_two_candidate_train_files_are_an_error(tmp_path):
  folder = _treebank(tmp_path / "tb")
  _treebank(folder, prefix="yy_other", splits=("train",))
  with pytest.raises(DataError, match=r"2 candidate train files: xx_test-ud-train.conllu, "
                     r"yy_other-ud-train.conllu"):
    conllu_data.find_treebank_files(folder)


def test_a_plain_file_and_its_xz_twin_are_one_candidate(tmp_path):
  folder = _treebank(tmp_path / "tb")
  _treebank(folder, compress=True)
  assert conllu_data.find_treebank_files(folder)["train"].name == "xx_test-ud-train.conllu"


def test_an_empty_or_missing_folder_is_an_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no CoNLL-U files"):
    conllu_data.find_treebank_files(tmp_path / "empty")
  with pytest.raises(DataError, match="not a directory"):
    conllu_data.find_treebank_files(tmp_path / "nowhere")


def test_explicit_files(tmp_path):
  folder = _treebank(tmp_path / "tb")
  files = {s: str(folder / f"xx_test-ud-{s}.conllu") for s in ("train", "test")}
  tb = conllu_data.load_treebank(None, files={**files, "dev": ""})
  assert len(tb.train) + len(tb.dev) == 2 and len(tb.test) == 6
  with pytest.raises(DataError, match="test_file is not"):
    conllu_data.load_treebank(None, files={"train": files["train"]})


def test_a_root_with_ud_english_ewt_is_still_a_data_dir(tmp_path):
  _treebank(tmp_path / "ud_english_ewt", prefix="en_ewt")
  assert conllu_data.treebank_folder(str(tmp_path)) == tmp_path / "ud_english_ewt"
  assert conllu_data.treebank_folder(str(tmp_path / "ud_english_ewt")) == (
      tmp_path / "ud_english_ewt")


NON_LATIN = {
    "Greek": ("ΟΔΟΣ", "οδος"),
    "Cyrillic": ("Москва", "москва"),
    "CJK": ("東京", "東京"),
    "Arabic": ("القاهرة", "القاهرة"),
}


@pytest.mark.parametrize("script", sorted(NON_LATIN))
def test_words_in_any_script(tmp_path, script):
  form, lowered = NON_LATIN[script]
  body = _word(1, form, "PROPN") + _word(2, "!", "PUNCT") + "\n"
  path = _write(tmp_path, body, "x.conllu")
  assert read_conllu(path) == [[(form, "PROPN"), ("!", "PUNCT")]]
  assert form.lower() == lowered


def test_forms_are_nfc_normalised(tmp_path):
  decomposed, composed = "cafe\u0301", "caf\u00e9"
  path = _write(tmp_path, _word(1, decomposed, "NOUN") + _word(2, "\uf900", "NOUN") + "\n",
                "x.conllu")
  assert read_conllu(path) == [[(composed, "NOUN"), ("\u8c48", "NOUN")]]  # U+F900 is U+8C48
