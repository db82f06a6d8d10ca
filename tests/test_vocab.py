"""Vocab: deterministic ids, frequency cut-offs, UNK, JSON round trips, characters."""

import json
import random

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from birnn_jax.data.common import DataError
from birnn_jax.data.vocab import PAD, PAD_TOKEN, UNK, UNK_TOKEN, Vocab

SENTENCES = [["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat"], ["the", "end"]]


def test_ids_by_frequency_then_alphabet():
  vocab = Vocab.build(SENTENCES)
  assert (PAD, UNK) == (0, 1)
  assert vocab.tokens == (PAD_TOKEN, UNK_TOKEN, "the", "cat", "sat", "a", "dog", "end")
  assert len(vocab) == 8


def test_order_does_not_depend_on_input_order():
  shuffled = [list(s) for s in SENTENCES]
  random.Random(0).shuffle(shuffled)
  for s in shuffled:
    random.Random(1).shuffle(s)
  assert Vocab.build(shuffled) == Vocab.build(SENTENCES)


def test_min_freq_and_max_size():
  assert Vocab.build(SENTENCES, min_freq=2).tokens == (
      PAD_TOKEN, UNK_TOKEN, "the", "cat", "sat")
  assert Vocab.build(SENTENCES, min_freq=4).tokens == (PAD_TOKEN, UNK_TOKEN)
  assert Vocab.build(SENTENCES, max_size=4).tokens == (PAD_TOKEN, UNK_TOKEN, "the", "cat")
  with pytest.raises(ValueError, match="min_freq"):
    Vocab.build(SENTENCES, min_freq=0)
  with pytest.raises(ValueError, match="max_size"):
    Vocab.build(SENTENCES, max_size=1)


def test_specials_follow_pad_and_unk_and_are_not_counted_twice():
  vocab = Vocab.build(SENTENCES + [["<mask>", "<unk>"]], specials=["<mask>"])
  assert vocab.tokens[:4] == (PAD_TOKEN, UNK_TOKEN, "<mask>", "the")
  assert vocab.num_reserved == 3
  assert vocab.tokens.count("<unk>") == vocab.tokens.count("<mask>") == 1


def test_encode_decode_and_unk():
  vocab = Vocab.build(SENTENCES, min_freq=2)
  ids = vocab.encode(["the", "cat", "zebra", "a"])
  assert ids.dtype == np.int32 and ids.shape == (4,)
  assert ids.tolist() == [2, 3, UNK, UNK]
  assert vocab.decode(ids) == ["the", "cat", UNK_TOKEN, UNK_TOKEN]
  assert vocab.decode(np.array([[0, 4]])) == [PAD_TOKEN, "sat"]
  assert vocab.encode([]).shape == (0,)
  assert vocab.token_to_id("sat") == 4 and vocab.token_to_id("zebra") == UNK
  assert "cat" in vocab and "zebra" not in vocab
  with pytest.raises(IndexError):
    vocab.decode([len(vocab)])


def test_characters():
  chars = Vocab.build(["abc", "ab", "b"])
  assert chars.tokens == (PAD_TOKEN, UNK_TOKEN, "b", "a", "c")
  assert chars.encode("cab!").tolist() == [4, 3, 2, UNK]
  assert "".join(chars.decode(chars.encode("cab"))) == "cab"


def test_save_load_round_trip(tmp_path):
  vocab = Vocab.build(SENTENCES + [["naïve", "日本"]], specials=["<bos>"])
  path = tmp_path / "sub" / "vocab.json"
  vocab.save(path)
  loaded = Vocab.load(path)
  assert loaded == vocab and loaded.num_reserved == 3
  assert loaded.encode(["日本", "x"]).tolist() == vocab.encode(["日本", "x"]).tolist()
  assert json.loads(path.read_text(encoding="utf-8"))["tokens"] == list(vocab.tokens)
  assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left


@pytest.mark.parametrize("content, problem", [
    ("{not json", "invalid JSON"),
    ('{"tokens": ["<pad>", "<unk>"]}', "not a vocabulary file"),
    ('{"format": "birnn_jax.vocab/1", "num_reserved": 2, "tokens": ["<unk>", "<pad>"]}',
     "ids 0 and 1"),
    ('{"format": "birnn_jax.vocab/1", "num_reserved": 2, "tokens": ["<pad>", "<unk>", "a",'
     ' "a"]}', "more than once"),
    ('{"format": "birnn_jax.vocab/1", "tokens": ["<pad>", "<unk>"]}', "malformed"),
])
def test_load_rejects_malformed_files(tmp_path, content, problem):
  path = tmp_path / "vocab.json"
  path.write_text(content, encoding="utf-8")
  with pytest.raises(DataError, match=problem) as info:
    Vocab.load(path)
  assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
  with pytest.raises(DataError, match="cannot read"):
    Vocab.load(tmp_path / "nope.json")


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(train=st.lists(st.lists(st.text(max_size=3), max_size=6), max_size=6),
                  query=st.lists(st.text(max_size=3), max_size=8),
                  min_freq=st.integers(1, 3))
def test_encode_then_decode_is_identity_up_to_unk(train, query, min_freq):
  vocab = Vocab.build(train, min_freq=min_freq)
  counts = {}
  for t in (t for s in train for t in s):
    counts[t] = counts.get(t, 0) + 1
  expected = [t if counts.get(t, 0) >= min_freq or t in (PAD_TOKEN, UNK_TOKEN)
              else UNK_TOKEN for t in query]
  assert vocab.decode(vocab.encode(query)) == expected
  assert len(vocab) == 2 + sum(n >= min_freq for t, n in counts.items()
                               if t not in (PAD_TOKEN, UNK_TOKEN))
