"""The word-and-character input machinery (birnn_jax/tasks/wordchar/): the tokeniser, the
character encoder's clipping, rare-word dropout, the character table's distinct rows. The
tagger built on them (deduplicated characters give the same logits, word dropout only in
training) is tested with the POS task (tests/test_pos.py), NER's casing in tests/test_ner.py."""

import collections

import numpy as np
import pytest

from birnn_jax.data.vocab import PAD, UNK, Vocab
from birnn_jax.tasks import wordchar


def test_tokenize_splits_punctuation_and_clitics():
  known = {"mr."}
  tokens = wordchar.tokenize("\"I can't go,\" said Mr. Smith (in the U.S.)... OK?",
                        lambda w: w.lower() in known)
  assert tokens == ['"', "I", "ca", "n't", "go", ",", '"', "said", "Mr.", "Smith", "(", "in",
                    "the", "U.S.", ")", "...", "OK", "?"]
  assert wordchar.tokenize("  ") == []


def test_char_encoder_keeps_prefix_and_suffix_of_long_words():
  vocab = Vocab.build(["internationalization"])
  enc = wordchar.CharEncoder(vocab, max_chars=8)
  assert enc.clip("internationalization") == "intetion"
  assert enc.clip("short") == "short"
  np.testing.assert_array_equal(vocab.decode(enc.encode("internationalization")),
                                list("intetion"))


def test_rare_words_are_dropped_more_and_padding_never():
  vocab = Vocab(["<pad>", "<unk>", "the", "rare"])
  counts = {"the": 999, "rare": 1}
  probs = wordchar.rare_word_drop_probs(vocab, collections.Counter(counts), alpha=1.0)
  np.testing.assert_allclose(probs, [0.0, 0.0, 1 / 1000, 0.5])
  words = np.tile(np.array([[2, 3, 1, 0]], np.int32), (2000, 1))
  dropped = wordchar.drop_words(words, probs, np.random.default_rng(0))
  assert np.all(dropped[:, 3] == PAD) and np.all(dropped[:, 2] == UNK)
  assert np.mean(dropped[:, 0] == UNK) < 0.01
  assert 0.45 < np.mean(dropped[:, 1] == UNK) < 0.55
  assert set(np.unique(dropped[:, 1])) == {UNK, 3}


@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (300, 1), (500, 16)])
def test_unique_rows_is_numpys_unique(shape):
  rng = np.random.default_rng(1)
  rows = rng.integers(-3, 4, shape).astype(np.int32)
  rows[shape[0] // 2:] = rows[:shape[0] - shape[0] // 2]      # half the rows repeated
  expected_rows, expected_index = np.unique(rows, axis=0, return_inverse=True)
  got_rows, got_index = wordchar.unique_rows(rows)
  np.testing.assert_array_equal(got_rows, expected_rows)
  np.testing.assert_array_equal(got_index, expected_index.reshape(-1))
  np.testing.assert_array_equal(got_rows[got_index], rows)
