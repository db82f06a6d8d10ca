"""Rei (2017)'s auxiliary objective for sequence labelling: each chain predicts its neighbour.

"Semi-supervised Multitask Learning for Sequence Labeling" (Rei, ACL 2017): beside the tags,
the forward chain's state H→_t predicts the next word w_{t+1} and the backward chain's state
H←_t the previous word w_{t-1}, on the same training sentences, no extra data. The forward
state has read x_1..x_t only and the backward one x_t..x_T only, so neither has seen the word
it predicts: this needs the two chains kept apart, which only the first layer of a stacked
BiRNN has (a second layer's forward chain reads the first layer's backward states, which
have seen the whole sentence). `wordchar.WordCharTagger` therefore runs its first layer with
its chains apart (`merge='none'`) when it has this head.

    m→_t = tanh(H→_t W→_m + b→_m),   P(w_{t+1} | w_1..w_t) = softmax(m→_t W→_q + b→_q)
    m←_t = tanh(H←_t W←_m + b←_m),   P(w_{t-1} | w_t..w_T) = softmax(m←_t W←_q + b←_q)
    E = E_tags + weight * (E→ + E←)        (token sums of the negative log-likelihoods)

Targets are word ids below `vocab_size` (ids are frequency-ranked, `data.vocab.Vocab`, so
these are the most frequent words; Rei keeps 7,500), rarer ones as UNK; past a sentence's
ends (w_{T+1}, w_0) the target is the sentence boundary, given id 0 (PAD: no real word has
it). Padding tokens predict nothing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from birnn_jax.data.vocab import PAD, UNK

Array = jax.Array
BOUNDARY = PAD   # the target past either end of a sentence


def neighbour_targets(words_BxT: Array, lengths_B: Array, vocab_size: int
                      ) -> tuple[Array, Array, Array]:
  """-> (next int32 [B, T], previous int32 [B, T], real bool [B, T]).

  next[b, t] = words[b, t + 1] (BOUNDARY at t = lengths[b] - 1), previous[b, t] =
  words[b, t - 1] (BOUNDARY at t = 0), each id >= `vocab_size` replaced by UNK; `real`
  marks the tokens t < lengths[b], the only ones that predict.
  """
  steps = words_BxT.shape[1]
  t = jnp.arange(steps)[None, :]
  real = t < lengths_B[:, None]
  words = jnp.where(words_BxT < vocab_size, words_BxT, UNK).astype(jnp.int32)
  following = jnp.pad(words[:, 1:], ((0, 0), (0, 1)))
  preceding = jnp.pad(words[:, :-1], ((0, 0), (1, 0)))
  next_ids = jnp.where(t < lengths_B[:, None] - 1, following, BOUNDARY)
  previous_ids = jnp.where(t > 0, preceding, BOUNDARY)
  return (jnp.where(real, next_ids, BOUNDARY), jnp.where(real, previous_ids, BOUNDARY), real)


class NeighbourLM(nn.Module):
  """(forward [B, T, F→], backward [B, T, F←]) -> (next logits, previous logits), each
  float32 [B, T, vocab_size]: the two separate predictors of the module docstring.

  Attributes:
    vocab_size: the words predicted (ids below it; the rest as UNK, 0 the boundary).
    hidden_size: the tanh layer's size m (Rei: 50).
    weight: the objective's weight against the tagging loss (`losses`' term).
  """
  vocab_size: int
  hidden_size: int = 50
  weight: float = 0.1

  @nn.compact
  def __call__(self, forward_BxTxF: Array, backward_BxTxF: Array) -> tuple[Array, Array]:
    def predict(h, name):
      m = jnp.tanh(nn.Dense(self.hidden_size, name=f"{name}_hidden")(h))
      return nn.Dense(self.vocab_size, name=f"{name}_softmax")(m).astype(jnp.float32)
    return predict(forward_BxTxF, "next"), predict(backward_BxTxF, "previous")

  def losses(self, next_logits: Array, previous_logits: Array, words_BxT: Array,
             lengths_B: Array) -> dict[str, Array]:
    """Token sums of the negative log-likelihood of the next word ('next_word_nll') and of
    the previous word ('previous_word_nll'), over real tokens only."""
    next_ids, previous_ids, real = neighbour_targets(words_BxT, lengths_B, self.vocab_size)
    nll = lambda logits, ids: jnp.sum(jnp.where(
        real, optax.softmax_cross_entropy_with_integer_labels(logits, ids), 0.0))
    return {"next_word_nll": nll(next_logits, next_ids),
            "previous_word_nll": nll(previous_logits, previous_ids)}

  def add_objective(self, forward_BxTxF: Array, backward_BxTxF: Array, words_BxT: Array,
                    lengths_B: Array) -> None:
    """Computes the objective and sows it: `weight * (E→ + E←)` into the 'losses'
    collection (the train step adds it to the loss, `training.steps`), and each
    direction's token-summed NLL into 'metrics' (logged per token as train_*)."""
    sums = self.losses(*self(forward_BxTxF, backward_BxTxF), words_BxT, lengths_B)
    self.sow("losses", "neighbour_lm", self.weight * (sums["next_word_nll"]
                                                      + sums["previous_word_nll"]))
    for name, value in sums.items():
      self.sow("metrics", name, value)
