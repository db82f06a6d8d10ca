"""Batching: coverage, padding, fixed shapes, deterministic order and exact resume."""

import collections

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from birnn_jax.data import batching
from birnn_jax.data import sampling
from birnn_jax.data.batching import Example
from birnn_jax.data.conllu_data import UPOS_IDS
from birnn_jax.data.vocab import Vocab

BATCH, PAD_TO, MAX_CHARS, CHAR_PAD_TO = 8, 4, 6, 3


def _examples(n: int = 61, seed: int = 0, max_len: int = 30) -> list[Example]:
  """Random examples whose word ids are all nonzero (so padding is recognisable)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    length = int(rng.integers(1, max_len + 1))
    words = rng.integers(1, 50, length).astype(np.int32)
    tags = rng.integers(0, 17, length).astype(np.int32)
    chars = tuple(rng.integers(1, 30, int(rng.integers(1, 10))).astype(np.int32)
                  for _ in range(length))
    out.append(Example(words, tags, chars))
  return out


EXAMPLES = _examples()


def _epoch(seed=0, epoch=0, examples=EXAMPLES, batch_size=BATCH, pad_to=PAD_TO):
  """All training batches of one epoch, in order, built from the epoch's plan."""
  plan = sampling.epoch_plan([len(ex.words) for ex in examples], batch_size, seed, epoch, pad_to)
  return [batching.make_batch(examples, idx, batch_size, pad_to, MAX_CHARS, CHAR_PAD_TO)
          for idx in plan]


def _eval_batches(examples=EXAMPLES):
  return [batching.make_batch(examples, idx, BATCH, PAD_TO, MAX_CHARS, CHAR_PAD_TO)
          for idx in batching.eval_plan([len(ex.words) for ex in examples], BATCH)]


def _rows(batches):
  """The real rows of `batches` as hashable (words, tags, chars) tuples."""
  rows = []
  for b in batches:
    for r in range(BATCH):
      n = b["lengths"][r]
      if n:
        rows.append((tuple(b["words"][r, :n]), tuple(b["tags"][r, :n]),
                     b["chars"][r, :n].tobytes()))
  return rows


def _as_row(ex: Example, num_chars: int):
  chars = np.zeros((len(ex.words), num_chars), np.int32)
  for t, w in enumerate(ex.chars):
    chars[t, :min(len(w), num_chars)] = w[:num_chars]
  return tuple(ex.words), tuple(ex.tags), chars.tobytes()


def _assert_padding(b):
  lengths, mask = b["lengths"], b["mask"]
  steps = b["words"].shape[1]
  assert (mask == (np.arange(steps)[None, :] < lengths[:, None])).all()
  assert (b["words"][~mask] == 0).all() and (b["tags"][~mask] == 0).all()
  assert (b["chars"][~mask] == 0).all()
  assert (b["words"][mask] != 0).all()


def test_every_example_exactly_once_per_epoch():
  for epoch in range(3):
    batches = _epoch(epoch=epoch)
    assert len(batches) == batching.steps_per_epoch(len(EXAMPLES), BATCH) == 8
    seen = collections.Counter(r[:2] for r in _rows(batches))
    assert seen == collections.Counter(_as_row(ex, 1)[:2] for ex in EXAMPLES)
    assert sum(seen.values()) == len(EXAMPLES)


def test_batch_contents_follow_the_plan():
  plan = sampling.epoch_plan([len(ex.words) for ex in EXAMPLES], BATCH, 3, 1, PAD_TO)
  for idx, b in zip(plan, _epoch(seed=3, epoch=1)):
    num_chars = b["chars"].shape[2]
    assert _rows([b]) == [_as_row(EXAMPLES[i], num_chars) for i in idx]
    assert b["lengths"][:len(idx)].tolist() == [len(EXAMPLES[i].words) for i in idx]


def test_padding_is_zero_and_masked():
  for b in _epoch() + _eval_batches():
    _assert_padding(b)


def test_shapes_and_dtypes_are_fixed():
  shapes = set()
  for b in _epoch():
    rows, steps = b["words"].shape
    num_chars = b["chars"].shape[2]
    assert rows == BATCH and steps % PAD_TO == 0 and steps >= b["lengths"].max()
    assert num_chars % CHAR_PAD_TO == 0 or num_chars == MAX_CHARS
    assert num_chars <= MAX_CHARS
    assert b["tags"].shape == b["mask"].shape == (BATCH, steps)
    assert b["chars"].shape == (BATCH, steps, num_chars) and b["lengths"].shape == (BATCH,)
    assert {k: v.dtype for k, v in b.items()} == {
        "words": np.int32, "tags": np.int32, "chars": np.int32, "lengths": np.int32,
        "mask": np.bool_}
    shapes.add(b["words"].shape)
  assert len(shapes) <= -(-30 // PAD_TO)


def test_short_last_batch_is_padded_with_empty_rows():
  batches = _epoch()
  short = [b for b in batches if (b["lengths"] == 0).any()]
  assert len(short) == 1  # 61 = 7 * 8 + 5
  assert (short[0]["lengths"] == 0).sum() == 3
  assert not short[0]["mask"][short[0]["lengths"] == 0].any()


def test_same_seed_and_epoch_same_batches_otherwise_different():
  def key(batches):
    return [b["words"].tobytes() for b in batches]
  assert key(_epoch(0, 0)) == key(_epoch(0, 0))
  assert key(_epoch(0, 0)) != key(_epoch(0, 1))
  assert key(_epoch(0, 0)) != key(_epoch(1, 0))


def test_step_maps_to_the_epoch_batches():
  per_epoch = batching.steps_per_epoch(len(EXAMPLES), BATCH)
  epochs = {e: _epoch(seed=5, epoch=e) for e in range(3)}
  batcher = batching.StepBatcher(EXAMPLES, BATCH, 5, PAD_TO, MAX_CHARS, CHAR_PAD_TO)
  assert batcher.steps_per_epoch == per_epoch
  for step in range(3 * per_epoch):
    epoch, index = batcher.sampler.epoch_and_index(step)
    assert (epoch, index) == divmod(step, per_epoch)
    want, got = epochs[epoch][index], batcher(step)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    rows = batcher.indices(step)    # which example each real row holds
    assert len(rows) == int((want["lengths"] > 0).sum())
    for row, i in enumerate(rows):
      np.testing.assert_array_equal(want["words"][row, :len(EXAMPLES[i].words)],
                                    EXAMPLES[i].words)


def test_resumed_run_sees_the_same_batches():
  kwargs = dict(pad_to=PAD_TO, max_chars=MAX_CHARS, char_pad_to=CHAR_PAD_TO)
  straight = batching.StepBatcher(EXAMPLES, BATCH, 7, **kwargs)
  uninterrupted = [straight(s)["words"].tobytes() for s in range(20)]
  resumed = batching.StepBatcher(EXAMPLES, BATCH, 7, **kwargs)  # a new process at step 11
  assert [resumed(s)["words"].tobytes() for s in range(11, 20)] == uninterrupted[11:]


def test_bucketing_reduces_padding():
  examples = _examples(n=400, seed=1, max_len=60)
  def padded_fraction(batches):
    return 1 - sum(b["mask"].sum() for b in batches) / sum(b["mask"].size for b in batches)
  bucketed = _epoch(examples=examples, batch_size=16, pad_to=4)
  rng = np.random.default_rng(0)
  random_plan = np.array_split(rng.permutation(len(examples)), 25)
  unbucketed = [batching.make_batch(examples, idx, 16, 4) for idx in random_plan]
  assert padded_fraction(bucketed) < 0.5 * padded_fraction(unbucketed)


def test_eval_batches_sorted_and_complete():
  batches = _eval_batches()
  plan = batching.eval_plan([len(ex.words) for ex in EXAMPLES], BATCH)
  assert sorted(np.concatenate(plan).tolist()) == list(range(len(EXAMPLES)))
  lengths = np.concatenate([b["lengths"][b["lengths"] > 0] for b in batches])
  assert len(lengths) == len(EXAMPLES) and (np.diff(lengths) >= 0).all()
  for idx, b in zip(plan, batches):
    assert _rows([b]) == [_as_row(EXAMPLES[i], b["chars"].shape[2]) for i in idx]


def test_char_width_and_truncation():
  ex = Example(np.array([1, 2], np.int32), None,
               (np.arange(1, 12, dtype=np.int32), np.array([5], np.int32)))
  assert batching.make_batch([ex], [0], 2, pad_to=8)["chars"].shape == (2, 8, 16)
  b = batching.make_batch([ex], [0], 2, pad_to=8, max_chars=4)
  assert b["chars"].shape == (2, 8, 4) and "tags" not in b
  assert b["chars"][0, 0].tolist() == [1, 2, 3, 4] and b["chars"][0, 1].tolist() == [5, 0, 0, 0]
  assert batching.make_batch([ex], [0], 2, pad_to=8, max_chars=20,
                             char_pad_to=20)["chars"].shape == (2, 8, 20)


def test_words_only_examples():
  examples = [Example(np.array([3, 4, 5], np.int32)), Example(np.array([6], np.int32))]
  b = batching.make_batch(examples, [1, 0], 4, pad_to=2)
  assert sorted(b) == ["lengths", "mask", "words"]
  assert b["words"].tolist() == [[6, 0, 0, 0], [3, 4, 5, 0], [0] * 4, [0] * 4]


def test_bad_inputs_are_rejected():
  ex = Example(np.array([1, 2], np.int32), np.array([1], np.int32))
  with pytest.raises(ValueError, match="2 words but 1 tags"):
    batching.make_batch([ex], [0], 2)
  with pytest.raises(ValueError, match="batch_size=1"):
    batching.make_batch(EXAMPLES, [0, 1], 1)
  with pytest.raises(ValueError, match="differ"):
    batching.make_batch([EXAMPLES[0], Example(np.array([1], np.int32))], [0, 1], 2)
  with pytest.raises(ValueError, match="step"):
    sampling.BucketedEpochs([3] * 10, 2, 0).epoch_and_index(-1)
  with pytest.raises(ValueError, match="no examples"):
    batching.StepBatcher([], 4, 0)


def test_encode_tagged_with_vocabs():
  sentences = [[("The", "DET"), ("cat", "NOUN")], [("the", "DET"), ("Cat", "PROPN")]]
  words = Vocab.build([[f.lower() for f, _ in s] for s in sentences])
  chars = Vocab.build(f for s in sentences for f, _ in s)
  examples = batching.encode_tagged(sentences, words, UPOS_IDS, chars, lowercase=True)
  assert examples[0].words.tolist() == examples[1].words.tolist()
  assert examples[1].tags.tolist() == [UPOS_IDS["DET"], UPOS_IDS["PROPN"]]
  assert "".join(chars.decode(examples[1].chars[1])) == "Cat"
  assert batching.encode_tagged(sentences, words)[0].tags is None
  with pytest.raises(ValueError, match="sentence 0: tag 'DET' has no id"):
    batching.encode_tagged(sentences, words, {"NOUN": 0})


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=40),
                  batch_size=st.integers(1, 9), pad_to=st.integers(1, 8),
                  seed=st.integers(0, 2**32), epoch=st.integers(0, 5))
def test_plan_and_batches_hold_for_any_sizes(lengths, batch_size, pad_to, seed, epoch):
  examples = [Example(np.arange(1, n + 1, dtype=np.int32)) for n in lengths]
  plan = sampling.epoch_plan(lengths, batch_size, seed, epoch, pad_to)
  assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))
  assert all(1 <= len(idx) <= batch_size for idx in plan)
  for idx in plan:
    b = batching.make_batch(examples, idx, batch_size, pad_to)
    assert b["words"].shape[0] == batch_size and b["words"].shape[1] % pad_to == 0
    assert b["lengths"].tolist() == [lengths[i] for i in idx] + [0] * (batch_size - len(idx))
    assert b["mask"].sum() == sum(lengths[i] for i in idx) == (b["words"] != 0).sum()
