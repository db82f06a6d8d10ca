"""Length-bucketed, padded batches of fixed row count for sequence tagging.

A batch is a dict of numpy arrays (B = batch_size, T = padded time, C = padded word length):

    words    int32 [B, T]     word ids, 0 (PAD) after each sentence's end
    tags     int32 [B, T]     tag ids, 0 at padding (present if the examples have tags)
    chars    int32 [B, T, C]  character ids of each word, 0-padded (if the examples have chars)
    lengths  int32 [B]        words per row; 0 for the padding rows of a short last batch
    mask     bool  [B, T]     True exactly at real words (t < lengths[b])

Every batch has exactly B rows, T is a multiple of `pad_to` and C a multiple of `char_pad_to`
(capped by `max_chars`), so a jitted step sees few distinct shapes.

Training order is `sampling.BucketedEpochs` (`StepBatcher(step)` is a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would);
evaluation (`eval_plan`) goes through the examples sorted by length, each exactly once.
"""

from typing import Iterable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from birnn_jax.data import sampling
from birnn_jax.data.sampling import check_positive, steps_per_epoch  # noqa: F401 (re-export)

Batch = dict[str, np.ndarray]


class Example(NamedTuple):
  """One encoded sentence.

  Attributes:
    words: int32 [T] word ids.
    tags: int32 [T] tag ids, or None (e.g. when predicting).
    chars: T arrays int32 [L_t], the character ids of each word, or None.
  """
  words: np.ndarray
  tags: np.ndarray | None = None
  chars: tuple[np.ndarray, ...] | None = None


class _Encoder(Protocol):
  """Anything with `encode(tokens) -> int32 [n]`, e.g. a `Vocab`."""

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    ...


def encode_tagged(sentences: Iterable[Sequence[tuple[str, str]]], word_vocab: _Encoder,
                  tag_ids: Mapping[str, int] | None = None, char_vocab: _Encoder | None = None,
                  lowercase: bool = False) -> list[Example]:
  """Encodes sentences of (form, tag) pairs.

  Args:
    sentences: e.g. the output of `read_conllu`.
    word_vocab: maps (possibly lowercased) forms to ids.
    tag_ids: tag -> id (e.g. `UPOS_IDS`); None leaves `tags` out.
    char_vocab: maps the characters of each form (case kept) to ids; None leaves `chars` out.
    lowercase: lowercase forms before the word lookup.

  Raises:
    ValueError: a tag is not in `tag_ids`.
  """
  examples = []
  for n, sentence in enumerate(sentences):
    forms = [form for form, _ in sentence]
    words = word_vocab.encode([f.lower() for f in forms] if lowercase else forms)
    tags = None if tag_ids is None else _encode_tags(sentence, tag_ids, n)
    chars = None if char_vocab is None else tuple(char_vocab.encode(f) for f in forms)
    examples.append(Example(words, tags, chars))
  return examples


def _encode_tags(sentence, tag_ids: Mapping[str, int], n: int) -> np.ndarray:
  try:
    return np.array([tag_ids[tag] for _, tag in sentence], dtype=np.int32)
  except KeyError as e:
    raise ValueError(f"sentence {n}: tag {e.args[0]!r} has no id.") from None


# Order ---------------------------------------------------------------------------------------

def eval_plan(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
  """The example indices of each evaluation batch: sorted by length, each index once."""
  order = np.argsort(np.asarray(lengths), kind="stable")
  num_batches = steps_per_epoch(len(order), batch_size)
  return [order[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


# Padding -------------------------------------------------------------------------------------

def bucket_length(length: int, minimum: int = 8) -> int:
  """A prediction batch's padded length: the next power of two >= `length` (at least
  `minimum`), so tagging sentences of any lengths compiles O(log(longest)) shapes."""
  padded = max(int(minimum), 1)
  while padded < length:
    padded *= 2
  return padded


def make_batch(examples: Sequence[Example], indices: Sequence[int] | np.ndarray,
               batch_size: int, pad_to: int = 8, max_chars: int | None = None,
               char_pad_to: int | None = None) -> Batch:
  """Pads `examples[indices]` into one batch of exactly `batch_size` rows.

  Args:
    examples: all examples; they must agree on having tags and on having chars.
    indices: 1 to `batch_size` example indices; rows after them are padding (length 0).
    batch_size: B, the number of rows.
    pad_to: T is the longest length rounded up to a multiple of this (at least `pad_to`).
    max_chars: cap on C; longer words keep their first `max_chars` characters. None = no cap.
    char_pad_to: C is the longest word rounded up to a multiple of this (default `pad_to`);
      `char_pad_to=max_chars` gives every batch C = max_chars.

  Returns:
    The batch dict described in the module docstring.
  """
  char_pad_to = char_pad_to or pad_to
  check_positive(batch_size=batch_size, pad_to=pad_to, char_pad_to=char_pad_to,
                  max_chars=1 if max_chars is None else max_chars)
  rows = [examples[i] for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
  if not 1 <= len(rows) <= batch_size:
    raise ValueError(f"a batch needs 1 to batch_size={batch_size} examples, got {len(rows)}.")
  _check_rows(rows, examples[0])
  lengths = np.zeros(batch_size, np.int32)
  lengths[:len(rows)] = [len(ex.words) for ex in rows]
  num_steps = _round_up(max(int(lengths.max()), 1), pad_to)
  batch = {"words": _pad_rows([ex.words for ex in rows], batch_size, num_steps)}
  if examples[0].tags is not None:
    batch["tags"] = _pad_rows([ex.tags for ex in rows], batch_size, num_steps)
  if examples[0].chars is not None:
    batch["chars"] = _pad_chars(rows, batch_size, num_steps, max_chars, char_pad_to)
  batch["lengths"] = lengths
  batch["mask"] = np.arange(num_steps)[None, :] < lengths[:, None]
  return batch


def _pad_rows(seqs: list[np.ndarray], batch_size: int, num_steps: int) -> np.ndarray:
  """int32 [batch_size, num_steps], row b = seqs[b] then zeros."""
  out = np.zeros((batch_size, num_steps), np.int32)
  for b, seq in enumerate(seqs):
    out[b, :len(seq)] = seq
  return out


def _pad_chars(rows: list[Example], batch_size: int, num_steps: int,
               max_chars: int | None, char_pad_to: int) -> np.ndarray:
  """int32 [batch_size, num_steps, C], each word's characters then zeros."""
  longest = max((len(w) for ex in rows for w in ex.chars), default=1)
  num_chars = _round_up(max(longest, 1), char_pad_to)
  if max_chars is not None:
    num_chars = min(num_chars, max_chars)
  out = np.zeros((batch_size, num_steps, num_chars), np.int32)
  for b, ex in enumerate(rows):
    for t, word in enumerate(ex.chars):
      word = word[:num_chars]
      out[b, t, :len(word)] = word
  return out


def _check_rows(rows: list[Example], first: Example) -> None:
  """Raises ValueError unless the rows have the fields of `first`, of matching lengths."""
  for ex in rows:
    if (ex.tags is None) != (first.tags is None) or (
        (ex.chars is None) != (first.chars is None)):
      raise ValueError("examples differ in whether they have tags or chars.")
    for name in ("tags", "chars"):
      value = getattr(ex, name)
      if value is not None and len(value) != len(ex.words):
        raise ValueError(f"an example has {len(ex.words)} words but {len(value)} {name}.")


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


# Batches -------------------------------------------------------------------------------------

class StepBatcher:
  """The padded training batch of each step, in `sampling.BucketedEpochs` order.

      batcher = StepBatcher(train_examples, batch_size=32, seed=config.seed)
      batch = batcher(step)   # a pure function of (examples, seed, step): exact resume
  """

  def __init__(self, examples: Sequence[Example], batch_size: int, seed: int,
               pad_to: int = 8, max_chars: int | None = None, char_pad_to: int | None = None):
    self.examples, self.batch_size, self.seed = examples, batch_size, seed
    self._pad = dict(pad_to=pad_to, max_chars=max_chars, char_pad_to=char_pad_to)
    self.sampler = sampling.BucketedEpochs(_lengths(examples), batch_size, seed, pad_to)
    self.steps_per_epoch = self.sampler.steps_per_epoch

  def indices(self, step: int) -> np.ndarray:
    """The example indices of the rows of step `step`'s batch (its real rows, in order)."""
    return self.sampler.indices(step)

  def __call__(self, step: int) -> Batch:
    return make_batch(self.examples, self.indices(step), self.batch_size, **self._pad)


def _lengths(examples: Sequence[Example]) -> np.ndarray:
  return np.fromiter((len(ex.words) for ex in examples), dtype=np.int64, count=len(examples))
