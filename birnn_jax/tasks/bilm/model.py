"""ELMo's biLM (Peters et al. 2018): a forward and a backward LM sharing one embedding and one
softmax. The backward LM is the same kind of forward-only stack run on each sequence reversed
within its length (`tasks.common.flip_within_lengths`), so there is no second RNN
implementation. See `birnn_jax/tasks/bilm/__init__.py` for the experiment.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax import errors
from birnn_jax.tasks import models
from birnn_jax.tasks import common

Array = jax.Array


def mix_weights(weights: Sequence[float], num_layers: int) -> np.ndarray:
  """s = softmax(w) over the L + 1 representations; () gives equal weights 1 / (L + 1)."""
  w = np.zeros(num_layers + 1) if len(weights) == 0 else np.asarray(weights, np.float64)
  if w.shape != (num_layers + 1,):
    raise errors.ConfigError(f"config.model.mix_weights={tuple(weights)!r} is invalid: expected () or "
                     f"{num_layers + 1} numbers (the embedding and {num_layers} layers).")
  e = np.exp(w - w.max())
  return (e / e.sum()).astype(np.float32)


class BiLM(nn.Module):
  """ELMo's biLM: a forward and a backward LM with a shared embedding and softmax.

  Attributes:
    vocab_size: V.
    layer: a forward-only single-layer `models.BiRNN`; cloned for each layer of each
      direction (2 * num_layers independent stacks' layers, none shared).
    num_layers: L, layers per direction.
    dropout: rate on the embeddings, between layers and before the softmax (training only).
    residual: add a layer's input to its output from the second layer on (ELMo does).
    mix_weights: fixed softmax-normalised layer weights s_0..s_L (see `mix_weights`).
    mix_gamma: ELMo's scale gamma.

  The embedding width is the layer's hidden size H, so h_0 = [e; e] matches [f_j; b_j].
  """
  vocab_size: int
  layer: models.BiRNN
  num_layers: int = 2
  dropout: float = 0.0
  residual: bool = False
  mix_weights: tuple[float, ...] = ()
  mix_gamma: float = 1.0

  def setup(self):
    if self.layer.bidirectional or self.layer.num_layers != 1:
      raise ValueError("BiLM.layer must be a forward-only single-layer BiRNN (each LM reads "
                       "only one side of every target).")
    self.embed = nn.Embed(self.vocab_size, self.layer.hidden_size)
    self.forward_lm = [self.layer.clone(parent=None) for _ in range(self.num_layers)]
    self.backward_lm = [self.layer.clone(parent=None) for _ in range(self.num_layers)]
    self.softmax = nn.Dense(self.vocab_size)
    self.drop = nn.Dropout(self.dropout)

  def _stack(self, layers, x_BxTxE: Array, lengths_B: Array, deterministic: bool
             ) -> list[Array]:
    """The outputs [B, T, H] of every layer of one forward-only stack."""
    outputs, y = [], x_BxTxE
    for j, layer in enumerate(layers):
      layer_in = self.drop(y, deterministic=deterministic) if j else y
      y, _ = layer(layer_in, lengths_B)
      if self.residual and j:
        y = y + layer_in
      outputs.append(y)
    return outputs

  def states_from_embeddings(self, x_BxTxE: Array, lengths_B: Array,
                             deterministic: bool = True) -> tuple[list[Array], list[Array]]:
    """(forward, backward): per-layer hidden states [B, T, H] of each LM, in text order.

    forward[j][:, t] depends on x[:, :t+1] only; backward[j][:, t] on x[:, t:lengths] only.
    """
    x_BxTxE = self.drop(x_BxTxE, deterministic=deterministic)
    flip = lambda a: common.flip_within_lengths(a, lengths_B)
    forward = self._stack(self.forward_lm, x_BxTxE, lengths_B, deterministic)
    backward = [flip(y) for y in
                self._stack(self.backward_lm, flip(x_BxTxE), lengths_B, deterministic)]
    return forward, backward

  def logits_from_embeddings(self, x_BxTxE: Array, lengths_B: Array,
                             deterministic: bool = True) -> dict[str, Array]:
    """Next-token logits of the forward LM and previous-token logits of the backward LM,
    [B, T, V] each, through the one shared softmax."""
    forward, backward = self.states_from_embeddings(x_BxTxE, lengths_B, deterministic)
    head = lambda h: self.softmax(self.drop(h, deterministic=deterministic)).astype(jnp.float32)
    return {"forward": head(forward[-1]), "backward": head(backward[-1])}

  def __call__(self, tokens_BxT: Array, lengths_B: Array, deterministic: bool = True):
    return self.logits_from_embeddings(self.embed(tokens_BxT), lengths_B, deterministic)

  def layer_states(self, tokens_BxT: Array, lengths_B: Array) -> Array:
    """[L + 1, B, T, 2H]: h_0 = [e; e], h_j = [f_j; b_j]; zeros at padding."""
    e = self.embed(tokens_BxT)
    e = e * (jnp.arange(tokens_BxT.shape[1]) < lengths_B[:, None])[..., None]
    forward, backward = self.states_from_embeddings(e, lengths_B)
    layers = [jnp.concatenate([e, e], -1)] + [
        jnp.concatenate([f, b], -1) for f, b in zip(forward, backward)]
    return jnp.stack(layers)

  def elmo(self, tokens_BxT: Array, lengths_B: Array) -> Array:
    """ELMo vectors [B, T, 2H] = gamma * sum_j s_j h_j (fixed s; see the module docstring)."""
    s = jnp.asarray(mix_weights(self.mix_weights, self.num_layers))
    return self.mix_gamma * jnp.einsum("l,lbtd->btd", s, self.layer_states(tokens_BxT,
                                                                          lengths_B))
