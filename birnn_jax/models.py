"""Deep (stacked) bidirectional RNNs: layer k reads layer k-1's merged outputs.

`BiRNN` is the one recurrent encoder every experiment and `from_torch` use. With
`bidirectional=False` the same module is a forward-only baseline.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from birnn_jax import bidirectional as bidi
from birnn_jax import cells as cells_lib
from birnn_jax import recurrence

Array = jax.Array


def stack_carries(carries: list):
  """Per-(layer, direction) carries -> PyTorch layout [L * num_dirs, B, H] when they all
  have one shape (LSTM: the pair (h_n, c_n)); otherwise the tuple itself."""
  leaves = [jax.tree.leaves(c) for c in carries]
  same_tree = all(jax.tree.structure(c) == jax.tree.structure(carries[0]) for c in carries)
  if same_tree and all([a.shape for a in l] == [a.shape for a in leaves[0]] for l in leaves):
    return jax.tree.map(lambda *a: jnp.stack(a), *carries)
  return tuple(carries)


def unstack_carries(carry, count: int) -> list:
  """Inverse of `stack_carries`: `count` carries whose leaves are [B, H]."""
  leaves = jax.tree.leaves(carry)
  if leaves and all(a.ndim == 3 and a.shape[0] == count for a in leaves):
    return [jax.tree.map(lambda a, i=i: a[i], carry) for i in range(count)]
  if isinstance(carry, (tuple, list)) and len(carry) == count:
    return list(carry)
  raise ValueError(f"initial_carry must hold {count} carries (one per layer and "
                   f"direction) as [{count}, B, H] arrays or a tuple of {count}; got "
                   f"shapes {jax.tree.map(jnp.shape, carry)}.")


class BiRNN(nn.Module):
  """A stack of (bi)directional recurrent layers.

  Attributes:
    cell: 'rnn' | 'gru' | 'lstm' (or a Flax cell module, used for every layer).
    hidden_size: H of the forward direction (and the backward one unless set).
    num_layers: number of stacked layers.
    bidirectional: False gives a forward-only stack (same parameters' names, no 'backward').
    merge: how the two directions combine: 'concat' | 'sum' | 'mean' | 'mul' | 'none'
      ('none' returns the (forward, backward) pair and is only valid for one layer).
    backward_cell, backward_hidden_size: let the backward direction differ.
    activation: 'tanh' | 'relu' for the 'rnn' cell.
    proj_size: LSTM output projection (PyTorch's proj_size); None for none.
    use_bias: biases b_ih and b_hh.
    dropout: rate between layers (not after the last), only when not deterministic.
    variational_dropout: the same dropout mask at every time step.
    residual: add each layer's input to its output from the second layer on.
    impl: one of `birnn_jax.IMPLS`; every implementation gives the same numbers.
    unroll: scan unroll factor.
    remat: with impl='fused', recompute gate activations in backprop instead of storing
      them, so memory for long sequences stays bounded.
    dtype, param_dtype: compute and parameter dtypes (carries stay float32).

  Call: `(x [B, T, D], lengths [B] | None, initial_carry=None, deterministic=True)` ->
  `(outputs [B, T, H_merged], final)`, zeros at padded steps. `final` is in PyTorch's
  layout `[L * num_dirs, B, H]` (LSTM: `(h_n, c_n)`) when every layer and direction has
  the same carry shape, else a tuple of per-(layer, direction) carries in that order.
  """
  cell: str | nn.Module = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = True
  merge: str = "concat"
  backward_cell: str | None = None
  backward_hidden_size: int | None = None
  activation: str = "tanh"
  proj_size: int | None = None
  use_bias: bool = True
  dropout: float = 0.0
  variational_dropout: bool = False
  residual: bool = False
  impl: str = "scan"
  unroll: int = 1
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.nowrap
  def make_cells(self) -> tuple[nn.Module, nn.Module | None]:
    """The (forward, backward) cells of every layer; backward is None if unidirectional."""
    def build(name, size):
      if isinstance(name, nn.Module):
        return name
      return cells_lib.make_cell(
          name, size, activation=self.activation, proj_size=self.proj_size,
          use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    forward = build(self.cell, self.hidden_size)
    if not self.bidirectional:
      return forward, None
    backward = build(self.backward_cell or self.cell,
                     self.backward_hidden_size or self.hidden_size)
    return forward, backward

  @nn.nowrap
  def validate(self) -> None:
    """Raises ValueError naming the attribute for any impossible setting."""
    if not isinstance(self.num_layers, int) or self.num_layers < 1:
      raise ValueError(f"num_layers must be a positive int, got {self.num_layers!r}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
    if self.backward_hidden_size is not None and self.backward_hidden_size <= 0:
      raise ValueError(f"backward_hidden_size must be positive, got "
                       f"{self.backward_hidden_size!r}.")
    bidi.check_impl(self.impl)
    forward, backward = self.make_cells()
    if backward is not None:
      bidi.merged_size(self.merge, bidi.output_size(forward), bidi.output_size(backward))
      if self.merge == "none" and self.num_layers > 1:
        raise ValueError("merge='none' returns a pair and cannot feed a next layer; "
                         f"use it with num_layers=1 (got {self.num_layers}).")

  @nn.compact
  def __call__(self, x: Array, lengths: Array | None = None, initial_carry=None,
               deterministic: bool = True):
    self.validate()
    lengths = recurrence.check_inputs(x, lengths, "BiRNN")
    forward, backward = self.make_cells()
    num_dirs = 2 if backward is not None else 1
    carries_in = (unstack_carries(initial_carry, self.num_layers * num_dirs)
                  if initial_carry is not None else [None] * (self.num_layers * num_dirs))
    carries_out = []
    y = x.astype(self.dtype)
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout > 0:
        y = nn.Dropout(self.dropout, broadcast_dims=(1,) if self.variational_dropout else (),
                       name=f"dropout_{layer}")(y, deterministic=deterministic)
      layer_in = y
      if backward is None:
        y, carry = bidi.Recurrent(forward, impl=self.impl, unroll=self.unroll,
                                  name=f"layer_{layer}")(y, lengths, carries_in[layer])
        carries_out.append(carry)
      else:
        pair = carries_in[2 * layer: 2 * layer + 2]
        y, carries = bidi.Bidirectional(
            forward, backward, merge=self.merge, impl=self.impl, unroll=self.unroll,
            remat=self.remat, name=f"layer_{layer}",
        )(y, lengths, None if pair[0] is None else tuple(pair))
        carries_out.extend(carries)
      if self.residual and layer > 0:  # Layers after the first map H_merged -> H_merged.
        y = y + layer_in
    return y, stack_carries(carries_out)


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


class Tagger(nn.Module):
  """Token ids [B, T] -> per-token logits [B, T, num_tags]: O_t = H_t W_hq + b_q.

  The encoder is any module mapping (x [B, T, E], lengths) -> (H [B, T, F], final),
  normally a `BiRNN`. `embed_dropout` drops embedding features during training.
  """
  vocab_size: int
  embed_size: int
  encoder: nn.Module
  num_tags: int
  embed_dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens: Array, lengths: Array, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
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
