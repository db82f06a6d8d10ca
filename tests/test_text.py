"""Tests for birnn_jax.data.text: The Time Machine reader, tokens, splits, batches, masking."""

import collections
import hashlib
import lzma
import pathlib
import re

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from birnn_jax.data import common
from birnn_jax.data import text
from birnn_jax.data.common import DataError
from birnn_jax.data.vocab import UNK, Vocab

TM_FILE = common.BUNDLED_DIR / "time_machine" / "timemachine.txt.xz"


@pytest.fixture(scope="module")
def tm_text():
  return text.read_time_machine()


def _write(tmp_path, data: bytes) -> pathlib.Path:
  folder = tmp_path / "time_machine"
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "timemachine.txt"
  path.write_bytes(data)
  return path


# ------------------------------------------------------------------------------------------------
# Reading and preprocessing.


def test_preprocess_matches_d2l_on_snippet():
  raw = ("The Time Traveller (for so it will be convenient to speak of him)\n"
         "was expounding a recondite matter to us. His grey eyes--shone!")
  assert text.preprocess(raw) == ("the time traveller for so it will be convenient to speak of "
                                  "him was expounding a recondite matter to us his grey eyes "
                                  "shone ")
  assert text.preprocess("The Time Traveller (for so it") == "the time traveller for so it"


def test_real_file_matches_d2l_and_measured_facts(tm_text):
  raw = common.read_bytes(TM_FILE).decode("utf-8")
  # d2l 1.0, ch. 9.2: TimeMachine._preprocess(raw) on the whole text.
  assert tm_text == re.sub("[^A-Za-z]+", " ", raw).lower()
  assert len(raw) == 178_979
  assert len(tm_text) == 173_428  # d2l reports len(corpus) == 173428 for char tokens
  assert tm_text.startswith("the time machine by h g wells i the time traveller for so it")
  assert sorted(set(tm_text)) == [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
  words = tm_text.split()
  assert len(words) == 32_775 and len(set(words)) == 4_579
  assert collections.Counter(words).most_common(3) == [("the", 2261), ("i", 1267),
                                                       ("and", 1245)]
  # The bundled copy is d2l's file: the sha1 d2l checks, and the sha256 we check.
  assert hashlib.sha1(raw.encode()).hexdigest() == "090b5e7e70c295757f55df93cb0a180b9691891a"
  common.verify_sha256(TM_FILE, text.TIME_MACHINE.sha256[text.FILENAME])


def test_bundled_copy_is_the_default_and_env_var_wins(tmp_path, monkeypatch):
  monkeypatch.delenv(common.ENV_VAR, raising=False)
  assert text.time_machine_path() == TM_FILE
  _write(tmp_path, b"Only this.\n")
  monkeypatch.setenv(common.ENV_VAR, str(tmp_path))
  assert text.read_time_machine() == "only this "


def test_plain_and_xz_files_read_the_same(tmp_path):
  plain = _write(tmp_path / "plain", b"The Time Machine, by H. G. Wells\n")
  packed = tmp_path / "packed" / "time_machine" / "timemachine.txt.xz"
  packed.parent.mkdir(parents=True)
  packed.write_bytes(lzma.compress(plain.read_bytes()))
  assert text.read_time_machine(str(tmp_path / "packed")) == text.read_time_machine(
      str(tmp_path / "plain")) == "the time machine by h g wells "


def test_vocab_sizes_on_real_file(tm_text):
  # d2l's char vocab has 28 tokens: 26 letters, space and <unk>; ours adds <pad> (and <mask>).
  full_chars = text.build_vocab(text.tokenize(tm_text, "char"), specials=())
  assert len(full_chars) == 29
  char = text.corpus_from_text(tm_text, "char", specials=("<mask>",))
  assert len(char.vocab) == 30 and char.vocab.tokens[:4] == ("<pad>", "<unk>", "<mask>", " ")
  assert len(text.corpus_from_text(tm_text, "char").vocab) == 29   # no specials by default
  assert (len(char.train), len(char.valid), len(char.test)) == (156_085, 8_671, 8_672)
  assert not np.any(char.valid == UNK) and not np.any(char.test == UNK)
  word = text.corpus_from_text(tm_text, "word", specials=("<mask>",))
  assert (len(word.train), len(word.valid), len(word.test)) == (29_497, 1_638, 1_640)
  assert len(word.vocab) == 4_329  # 4,326 distinct train words + pad, unk, mask
  assert len(text.corpus_from_text(tm_text, "word", min_freq=2).vocab) == 2_024  # no <mask>
  # The vocab is from train only: held-out words unseen in train are UNK (about 8%).
  assert 0.07 < np.mean(word.valid == UNK) < 0.09 and 0.07 < np.mean(word.test == UNK) < 0.09


def test_invalid_utf8_names_file_and_line(tmp_path):
  path = _write(tmp_path, b"good line\nanother\nbad \xff byte\nlast\n")
  with pytest.raises(DataError) as e:
    text.read_time_machine(str(tmp_path))
  assert e.value.line == 3 and pathlib.Path(e.value.path) == path
  assert "timemachine.txt:3:" in str(e.value) and "column 5" in str(e.value)


def test_empty_and_letterless_files(tmp_path):
  _write(tmp_path, b"")
  with pytest.raises(DataError, match="timemachine.txt: the file is empty"):
    text.read_time_machine(str(tmp_path))
  _write(tmp_path, "1895 -- 42!\n\n\u00e9\n".encode())
  with pytest.raises(DataError, match="no letters"):
    text.read_time_machine(str(tmp_path))


def test_missing_file_or_folder(tmp_path):
  with pytest.raises(DataError, match="no time_machine/ folder|config.data.dir"):
    text.read_time_machine(str(tmp_path / "nowhere"))
  (tmp_path / "time_machine").mkdir()
  with pytest.raises(DataError, match="no timemachine.txt"):
    text.read_time_machine(str(tmp_path))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
                 st.lists(st.sampled_from([b"ab", b"\n", b" ", b"\xc3\xa9", b"\xff", b"\xc3"]),
                          max_size=30).map(b"".join)))
def test_reader_on_random_bytes_returns_text_or_data_error(tmp_path_factory, data):
  path = _write(tmp_path_factory.mktemp("rand"), data)
  try:
    out = text.read_time_machine(str(path.parent.parent))
  except DataError as e:
    assert str(path) in str(e)
  else:
    assert out.strip() and set(out) <= set(" abcdefghijklmnopqrstuvwxyz")
    assert "  " not in out


# ------------------------------------------------------------------------------------------------
# Tokens, vocabulary, splits.


def test_tokenize_levels():
  assert text.tokenize("the cat", "char") == list("the cat")
  assert text.tokenize("the  cat ", "word") == ["the", "cat"]
  with pytest.raises(ValueError, match="level"):
    text.tokenize("x", "byte")


@pytest.mark.parametrize("level", ["char", "word"])
def test_encode_decode_round_trip(tm_text, level, tmp_path):
  corpus = text.corpus_from_text(tm_text, level)
  train_tokens, _, _ = text.split_stream(text.tokenize(tm_text, level))
  assert text.decode(corpus.train, corpus.vocab, level) == text.detokenize(train_tokens, level)
  sample = "the time traveller smiled"
  assert text.decode(text.encode(text.tokenize(sample, level), corpus.vocab), corpus.vocab,
                     level) == sample
  # Saved and loaded (as a workdir would), the vocab gives the same ids.
  corpus.vocab.save(tmp_path / "vocab.json")
  assert np.array_equal(text.encode(train_tokens, Vocab.load(tmp_path / "vocab.json")),
                        corpus.train)


def test_vocab_from_train_only():
  corpus = text.corpus_from_text("a b a b a b a b a zebra", "word", fractions=(0.8, 0.1, 0.1))
  assert "zebra" not in corpus.vocab and corpus.test.tolist() == [UNK]
  assert corpus.valid.tolist() == [corpus.vocab.token_to_id("a")]
  assert corpus.vocab.tokens == ("<pad>", "<unk>", "a", "b")   # no task tokens by default


@pytest.mark.parametrize("n", [20, 101, 173_428])
def test_splits_disjoint_contiguous_and_covering(n):
  stream = np.arange(n)
  train, valid, test = text.split_stream(stream)
  assert np.array_equal(np.concatenate([train, valid, test]), stream)
  assert len(train) and len(valid) and len(test)
  assert len(train) == int(0.9 * n) and len(valid) == int(0.05 * n)
  tokens = list("abcdefghijklmnopqrst")
  assert sum(text.split_stream(tokens), []) == tokens


def test_split_errors():
  with pytest.raises(ValueError, match="too short"):
    text.split_stream(np.arange(10))  # 5% of 10 is 0 tokens
  with pytest.raises(ValueError, match="sum"):
    text.split_bounds(100, (0.5, 0.2, 0.2))
  assert text.split_bounds(10, (1.0, 0.0, 0.0)) == (0, 10, 10, 10)


# ------------------------------------------------------------------------------------------------
# Windows and deterministic batches.


def test_windows_shapes_and_content():
  ids = np.arange(23)
  w = text.windows(ids, 5)
  assert w.shape == (4, 5) and w.dtype == np.int32
  assert np.array_equal(w[:, 0], [0, 5, 10, 15]) and np.array_equal(w[1], np.arange(5, 10))
  w2 = text.windows(ids, 5, stride=2)
  assert w2.shape == ((23 - 5) // 2 + 1, 5) and np.array_equal(w2[3], np.arange(6, 11))
  assert text.windows(ids, 23).shape == (1, 23)
  w2[0, 0] = 99  # a copy, not a view of ids
  assert ids[0] == 0
  with pytest.raises(ValueError, match="shorter"):
    text.windows(ids, 24)
  with pytest.raises(ValueError, match=">= 1"):
    text.windows(ids, 5, stride=0)
