"""A tagging task whose labels need the right context ("I can can a can"), made in code.

Tokens are drawn i.i.d. and uniformly from `vocab_size` words; word w belongs to class
w % num_classes. The first `num_ambiguous` words are ambiguous:
- an unambiguous word's tag is its class;
- an ambiguous word's tag is `num_classes + class(next word)`, or `2 * num_classes` when it
  is the sentence's last word.
So an ambiguous word's tag is decided by the word to its right. A model that reads only the
left context can do no better, on an ambiguous word at position t, than the Bayes guess:
the next word's class is independent of the past, and the sentence ends at t with the hazard
h(t) = P(length = t+1 | length > t) of the (uniform) length distribution, so its expected
accuracy there is max(h(t), (1 - h(t)) * max_c q_c), with q_c the share of words in class c.
`left_context_ceiling` averages that over a data set: the best accuracy (in expectation)
any left-to-right tagger can reach on it. A bidirectional tagger can reach 100%.

Ids: 0 is padding; word w has id w + 1. Tags of padding are 0 and masked out.
"""

import dataclasses

import numpy as np

from birnn_jax import errors


@dataclasses.dataclass(frozen=True)
class SyntheticTagging:
  vocab_size: int = 24
  num_classes: int = 3
  num_ambiguous: int = 6
  min_length: int = 6
  max_length: int = 20

  def __post_init__(self):
    if not 0 < self.num_ambiguous < self.vocab_size:
      raise errors.ConfigError(f"config.data.num_ambiguous={self.num_ambiguous} must be in "
                       f"(0, vocab_size={self.vocab_size}).")
    if not 1 <= self.min_length <= self.max_length:
      raise errors.ConfigError(f"config.data.min_length={self.min_length} and config.data.max_length="
                       f"{self.max_length} must satisfy 1 <= min <= max.")
    if self.num_classes < 2:
      raise errors.ConfigError(f"config.data.num_classes={self.num_classes} must be >= 2.")

  @property
  def num_tags(self) -> int:
    return 2 * self.num_classes + 1

  @property
  def num_ids(self) -> int:
    return self.vocab_size + 1

  def tags(self, words_T: np.ndarray) -> np.ndarray:
    """Tags of one sentence of word indices [T] -> [T]."""
    classes = words_T % self.num_classes
    next_tag = np.append(self.num_classes + classes[1:], 2 * self.num_classes)
    return np.where(words_T < self.num_ambiguous, next_tag, classes)

  def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """tokens, tags [B, max_length] int32; lengths [B] int32; mask [B, max_length] bool.

    Sentence b's words are the next lengths[b] draws, sentence after sentence: one draw of
    all of them gives the same numbers as one draw per sentence, several times faster (the
    trainer makes a batch per step, beside the device's work)."""
    lengths = rng.integers(self.min_length, self.max_length + 1, size=batch_size)
    mask = np.arange(self.max_length)[None, :] < lengths[:, None]
    words_BT = np.zeros((batch_size, self.max_length), np.int64)
    words_BT[mask] = rng.integers(0, self.vocab_size, size=int(lengths.sum()))  # row-major
    classes = words_BT % self.num_classes
    next_tag = np.concatenate([self.num_classes + classes[:, 1:],
                               np.zeros((batch_size, 1), np.int64)], axis=1)
    last = np.arange(self.max_length)[None, :] == lengths[:, None] - 1
    next_tag = np.where(last, 2 * self.num_classes, next_tag)
    tags = np.where(words_BT < self.num_ambiguous, next_tag, classes)
    return {"tokens": np.where(mask, words_BT + 1, 0).astype(np.int32),
            "tags": np.where(mask, tags, 0).astype(np.int32),
            "lengths": lengths.astype(np.int32), "mask": mask}

  def hazard(self, t: np.ndarray) -> np.ndarray:
    """P(length == t + 1 | length > t) under lengths uniform in [min_length, max_length]."""
    t = np.asarray(t)
    return np.where(t + 1 >= self.min_length, 1.0 / np.maximum(self.max_length - t, 1), 0.0)

  def left_context_accuracy(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Per real token [N], the Bayes-optimal left-context tagger's chance of being right."""
    shares = np.bincount(np.arange(self.vocab_size) % self.num_classes) / self.vocab_size
    t = np.broadcast_to(np.arange(batch["tokens"].shape[1]), batch["tokens"].shape)
    h = self.hazard(t)
    ambiguous = (batch["tokens"] - 1) < self.num_ambiguous
    p = np.where(ambiguous, np.maximum(h, (1 - h) * shares.max()), 1.0)
    return p[batch["mask"]]

  def left_context_ceiling(self, batch: dict[str, np.ndarray]) -> tuple[float, float]:
    """(expected accuracy of the best left-context tagger on `batch`, its std. error)."""
    p = self.left_context_accuracy(batch)
    return float(p.mean()), float(np.sqrt(np.sum(p * (1 - p))) / p.size)
