"""Word dropout: replacing word ids by UNK in training, so the UNK embedding is trained and
the tagger learns to read unknown words from their characters.

Two kinds, which the taggers combine: rare-word dropout, made with the training batch from
(seed, step) — a word seen c times in train is dropped with probability alpha / (alpha + c)
(`data.word_dropout_alpha`; Kiperwasser & Goldberg 2016), so rare words, which are like the
unseen words of test, are dropped most — and `WordDropout`, one probability for any word
inside the model (`model.word_dropout`).
"""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.data.vocab import PAD, UNK, Vocab


def rare_word_drop_probs(vocab: Vocab, counts: collections.Counter,
                         alpha: float) -> np.ndarray:
  """float [len(vocab)]: alpha / (alpha + count) for each word id; 0 for PAD and UNK."""
  probs = np.array([alpha / (alpha + counts[t]) if counts[t] else 0.0 for t in vocab.tokens])
  probs[:vocab.num_reserved] = 0.0
  return probs


def drop_words(words: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Word ids with each replaced by UNK with probability probs[id] (PAD keeps p = 0)."""
  drop = rng.random(words.shape) < probs[words]
  return np.where(drop, UNK, words).astype(words.dtype)


class WordDropout(nn.Module):
  """Replaces each real word id by UNK with probability `rate` (training only); PAD stays."""
  rate: float

  @nn.compact
  def __call__(self, words: jax.Array, deterministic: bool = True) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return words
    drop = jax.random.bernoulli(self.make_rng("dropout"), self.rate, words.shape)
    return jnp.where(drop & (words != PAD), UNK, words)
