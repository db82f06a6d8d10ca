"""Model pieces several tasks share: a `BiRNN` from `config.model`, the token tagger and
the character-level word embedder.

Models never read the config themselves: `birnn_from_config` unpacks it at this boundary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from birnn_jax.linen import BiRNN

Array = jax.Array


def birnn_from_config(model, **overrides) -> BiRNN:
  """The BiRNN that `config.model` describes (shared keys of `config_lib.base_config`)."""
  attrs = dict(cell=model.cell, hidden_size=model.hidden_size, num_layers=model.num_layers,
               bidirectional=model.bidirectional, merge=model.merge,
               activation=model.activation, dropout=model.dropout,
               variational_dropout=model.variational_dropout, residual=model.residual,
               impl=model.impl, unroll=model.unroll, remat=model.remat,
               dtype=jnp.dtype(model.dtype))
  attrs.update(overrides)
  return BiRNN(**attrs)


# The variable (collection, name) that adversarial training adds to the input embeddings.
PERTURBED = ("perturbations", "inputs")


def perturbable(module: nn.Module, x: Array) -> Array:
  """`x` (a model's input embeddings [B, T, D]) plus the variable 'perturbations'/'inputs'
  when the caller passes one: the point adversarial training moves (`training.steps`).
  Flax's `module.perturb`, except that `init` creates nothing, so the variables a user's
  `model.init` returns hold no batch-shaped array that a later batch would not fit."""
  collection, name = PERTURBED
  return x if module.is_initializing() else module.perturb(name, x, collection=collection)


class Tagger(nn.Module):
  """Token ids [B, T] -> per-token logits [B, T, num_tags]: O_t = H_t W_hq + b_q.

  The encoder is any module mapping (x [B, T, E], lengths) -> (H [B, T, F], final),
  normally a `BiRNN`. `embed_dropout` drops embedding features during training. The
  embeddings are the point that adversarial training perturbs (`perturbable`).
  """
  vocab_size: int
  embed_size: int
  encoder: nn.Module
  num_tags: int
  embed_dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens: Array, lengths: Array, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
    x = perturbable(self, x)
    x = nn.Dropout(self.embed_dropout)(x, deterministic=deterministic)
    h, _ = self.encoder(x, lengths, deterministic=deterministic)
    return nn.Dense(self.num_tags, name="head")(h).astype(jnp.float32)


class CharBiRNNEmbedder(nn.Module):
  """A word's characters -> one vector (Plank et al. 2016): a one-layer BiRNN over the
  characters of each word; the word's vector is [forward final state, backward final state].

  Padding characters (id 0) must come after a word's real ones. By the recurrence contract
  the final states are those after each word's own last (forward) and first (backward) real
  character, so a word's vector does not depend on how far it is padded, in characters or in
  time; a word with no characters (a padding position) gets the zero vector.

  Attributes:
    num_chars: character vocabulary size (id 0 = padding).
    embed_size: character embedding size.
    hidden_size: H of each direction; the output has 2 * H features.
    cell: 'rnn' | 'gru' | 'lstm'.
    impl: any of `birnn_jax.IMPLS`.
    dtype: compute dtype of the BiRNN.

  Call: `chars <int>[..., C]` -> `<float>[..., 2 * hidden_size]`.
  """
  num_chars: int
  embed_size: int = 32
  hidden_size: int = 64
  cell: str = "lstm"
  impl: str = "scan"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, chars: Array) -> Array:
    lead, num_chars = chars.shape[:-1], chars.shape[-1]
    flat = chars.reshape(-1, num_chars)
    lengths = jnp.sum(flat != 0, axis=-1).astype(jnp.int32)
    x = nn.Embed(self.num_chars, self.embed_size, name="embed")(flat)
    _, final = BiRNN(cell=self.cell, hidden_size=self.hidden_size, num_layers=1,
                     bidirectional=True, impl=self.impl, dtype=self.dtype,
                     name="birnn")(x, lengths)
    h = final[0] if isinstance(final, tuple) else final   # LSTM: (h_n, c_n); h_n [2, N, H]
    vectors = jnp.concatenate([h[0], h[1]], axis=-1).astype(jnp.float32)
    return vectors.reshape(lead + (2 * self.hidden_size,))
