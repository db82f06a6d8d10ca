"""The word + character tagger that POS and NER share, and the checks of its config keys.

For the words of a sentence x_1..x_T (Plank et al. 2016 style): each word's characters go
through a one-layer character BiRNN (`models.CharBiRNNEmbedder`), whose two final states are
the word's character vector; the word itself is looked up in a word embedding (with word
dropout, `word_dropout`); [word embedding; character vector] (dropout `model.embed_dropout`)
feeds a stacked BiRNN over the sentence (`models.birnn_from_config`); per token
O_t = H_t W_hq + b_q (dropout `model.output_dropout` on H_t). With
`model.neighbour_lm_weight` > 0 the training loss also has Rei (2017)'s auxiliary objective
(`tasks.neighbour_lm`): the first layer's chains predict each word's neighbours.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from birnn_jax.tasks import config_keys
from birnn_jax.tasks import models
from birnn_jax.tasks import neighbour_lm as neighbour_lm_lib
from birnn_jax.tasks.wordchar.chars import map_char_rows
from birnn_jax.tasks.wordchar.word_dropout import WordDropout


class WordCharTagger(nn.Module):
  """(words [B, T], chars, char_index, lengths [B], bilm) -> logits [B, T, num_tags].

  x_t = [E w_t ; char_embedder(chars_t)], H = encoder(x, lengths), O_t = H_t W_hq + b_q.
  `chars` is [B, T, C] with `char_index` None, or the deduplicated table (or its tiers) with
  `char_index` [B, T] (see `dedup_chars`); both give the same logits.
  `bilm` is None or frozen biLM layer states [B, T, K, F]; then x_t also holds ELMo's
  gamma * sum_k softmax(w)_k bilm_{t,k} with w and gamma learned here.
  `extra` is None or other per-token features [B, T, F] appended to x_t last (e.g. the NER
  task's casing embedding); None leaves the model exactly as without it.
  `neighbour_lm` is None or a `neighbour_lm.NeighbourLM`: then the encoder's first layer runs
  with its chains apart (parameters `chains`, each layer above it `layer_k`) and, in training
  (`deterministic=False`), its forward chain predicts the next word and its backward chain
  the previous one, sown as an auxiliary loss; the logits are computed as without it.
  x_t is the point that adversarial training perturbs (`models.perturbable`).
  """
  num_words: int
  word_embed_size: int
  char_embedder: nn.Module
  encoder: nn.Module
  num_tags: int
  word_dropout: float = 0.0
  embed_dropout: float = 0.0
  output_dropout: float = 0.0
  neighbour_lm: nn.Module | None = None

  @nn.compact
  def __call__(self, words, chars, char_index, lengths, bilm=None,
               deterministic: bool = True, extra=None):
    targets = words   # the neighbour LM predicts the words before the model's word dropout
    words = WordDropout(self.word_dropout, name="word_dropout")(words, deterministic)
    w = nn.Embed(self.num_words, self.word_embed_size, name="embed")(words)
    if char_index is None:
      c = self.char_embedder(chars)
    else:
      c = jnp.take(map_char_rows(self.char_embedder, chars), char_index, axis=0)
    features = [w, c.astype(w.dtype)]
    if bilm is not None:
      mix = self.param("bilm_mix", nn.initializers.zeros, (bilm.shape[2],))
      gamma = self.param("bilm_gamma", nn.initializers.ones, ())
      elmo = gamma * jnp.einsum("k,btkf->btf", jax.nn.softmax(mix), bilm)
      features.append(elmo.astype(w.dtype))
    if extra is not None:
      features.append(extra.astype(w.dtype))
    x = jnp.concatenate(features, axis=-1)
    x = models.perturbable(self, x)
    x = nn.Dropout(self.embed_dropout)(x, deterministic=deterministic)
    if self.neighbour_lm is None:
      h, _ = self.encoder(x, lengths, deterministic=deterministic)
    else:
      h = self.encode_with_neighbour_lm(x, lengths, targets, deterministic)
    h = nn.Dropout(self.output_dropout)(h, deterministic=deterministic)
    return nn.Dense(self.num_tags, name="head")(h).astype(jnp.float32)

  def encode_with_neighbour_lm(self, x, lengths, words, deterministic: bool):
    """The encoder's stack with its first layer's chains kept apart: what `self.encoder`
    computes (dropout and residuals between layers as `core.layers.stack_layers` places
    them), plus, in training, the neighbour LM's objective on the first layer's chains."""
    enc = self.encoder
    first = enc.clone(parent=self, name="chains", num_layers=1, merge="none")
    (forward, backward), _ = first(x, lengths, deterministic=deterministic)
    h = jnp.concatenate([forward, backward], axis=-1)
    if not deterministic:
      drop = nn.Dropout(self.output_dropout, name="neighbour_lm_dropout")
      self.neighbour_lm.add_objective(drop(forward, deterministic=False),
                                      drop(backward, deterministic=False), words, lengths)
    elif self.is_initializing():   # init is deterministic: make the head's parameters
      self.neighbour_lm(forward, backward)
    for layer in range(1, enc.num_layers):
      h_in = nn.Dropout(enc.dropout, broadcast_dims=(1,) if enc.variational_dropout else (),
                        name=f"dropout_{layer}")(h, deterministic=deterministic)
      upper = enc.clone(parent=self, name=f"layer_{layer}", num_layers=1)
      h, _ = upper(h_in, lengths, deterministic=deterministic)
      if enc.residual:
        h = h + h_in
    return h


def model_from_config(model_config, num_words: int, num_chars: int,
                      num_tags: int) -> WordCharTagger:
  """The tagger `config.model` describes, with `num_tags` outputs per token (POS: the
  UPOS tags; NER: the entity labels of its scheme)."""
  m = model_config
  dtype = jnp.dtype(m.dtype)
  char_embedder = models.CharBiRNNEmbedder(
      num_chars=num_chars, embed_size=m.char_embed_size, hidden_size=m.char_hidden_size,
      cell=m.cell, impl=m.impl, dtype=dtype)
  weight = config_keys.added_key(m, "model.neighbour_lm_weight")
  neighbour_lm = None if not weight else neighbour_lm_lib.NeighbourLM(
      vocab_size=min(num_words, config_keys.added_key(m, "model.neighbour_lm_vocab")),
      hidden_size=config_keys.added_key(m, "model.neighbour_lm_hidden"), weight=weight)
  return WordCharTagger(num_words=num_words, word_embed_size=m.embed_size,
                   char_embedder=char_embedder, encoder=models.birnn_from_config(m),
                   num_tags=num_tags, word_dropout=m.word_dropout,
                   embed_dropout=m.embed_dropout, output_dropout=m.output_dropout,
                   neighbour_lm=neighbour_lm)


def check_encoder_config(config) -> None:
  """Checks the keys of the word + character encoder and its batches, which the tagging
  tasks share (POS, NER): a ConfigError naming the first impossible one."""
  d, m = config.data, config.model
  config_keys.check_at_least(config, {"data.max_length": 1, "data.min_freq": 1,
                                     "data.max_chars": 2, "data.pad_to": 1,
                                     "data.eval_batch_size": 1, "model.char_embed_size": 1,
                                     "model.char_hidden_size": 1})
  config_keys.check(d.word_dropout_alpha >= 0, "data.word_dropout_alpha",
                   d.word_dropout_alpha, ">= 0 (0 disables)")
  for key in ("word_dropout", "embed_dropout", "output_dropout"):
    config_keys.check(0.0 <= m[key] < 1.0, f"model.{key}", m[key], "a rate in [0, 1)")
  weight = config_keys.added_key(m, "model.neighbour_lm_weight")
  config_keys.check(weight >= 0, "model.neighbour_lm_weight", weight, ">= 0 (0 disables)")
  if weight:
    config_keys.check(m.bidirectional, "model.bidirectional", m.bidirectional,
                      "True with model.neighbour_lm_weight > 0 (it needs both chains)")
    config_keys.check(m.merge == "concat", "model.merge", m.merge,
                      "'concat' with model.neighbour_lm_weight > 0")
    for key, minimum in (("neighbour_lm_vocab", 3), ("neighbour_lm_hidden", 1)):
      value = config_keys.added_key(m, f"model.{key}")
      config_keys.check(value >= minimum, f"model.{key}", value, f">= {minimum}")
