"""Rei (2017)'s neighbour-word objective (birnn_jax/tasks/neighbour_lm.py) and the word +
character tagger that carries it (wordchar.WordCharTagger with `neighbour_lm`).

The oracles: targets written out by hand; Jacobians (each chain's predictions do not depend
on the inputs on the side it predicts, and do on the other); a per-token numpy cross-entropy
for the sown sums; the same tagger without the head, its parameters renamed, for the logits.
"""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.data.vocab import UNK
from birnn_jax.linen import BiRNN
from birnn_jax.tasks import models
from birnn_jax.tasks import neighbour_lm
from birnn_jax.tasks import wordchar
from birnn_jax.training import config_lib
from birnn_jax.training import steps

SOWN = list(steps.SOWN)


def test_targets_are_the_neighbours_with_boundaries_rare_words_and_padding():
  words = jnp.array([[5, 9, 3, 0, 0],
                     [4, 2, 7, 8, 6]])
  lengths = jnp.array([3, 5])
  next_ids, previous_ids, real = neighbour_lm.neighbour_targets(words, lengths, vocab_size=8)
  b = neighbour_lm.BOUNDARY
  # Ids >= 8 (9 and 8 here) are predicted as UNK; padding predicts nothing (0, masked).
  np.testing.assert_array_equal(next_ids, [[UNK, 3, b, 0, 0], [2, 7, UNK, 6, b]])
  np.testing.assert_array_equal(previous_ids, [[b, 5, UNK, 0, 0], [b, 4, 2, 7, UNK]])
  np.testing.assert_array_equal(real, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_each_chain_never_sees_the_word_it_predicts(cell):
  """d next_logits[t] / d x[s] is 0 for every s > t (the forward chain has read x_1..x_t)
  and d previous_logits[t] / d x[s] is 0 for s < t; each is nonzero on its own side."""
  steps_, features = 5, 3
  chains = BiRNN(cell=cell, hidden_size=4, num_layers=1, merge="none")
  head = neighbour_lm.NeighbourLM(vocab_size=6, hidden_size=5)
  x = jax.random.normal(jax.random.key(0), (1, steps_, features))
  lengths = jnp.array([steps_])
  chain_vars = chains.init(jax.random.key(1), x, lengths)
  (f, bwd), _ = chains.apply(chain_vars, x, lengths)
  head_vars = head.init(jax.random.key(2), f, bwd)

  def predictions(x):
    (forward, backward), _ = chains.apply(chain_vars, x, lengths)
    return head.apply(head_vars, forward, backward)

  jac_next, jac_previous = jax.jacobian(predictions)(x)   # [1, T, V, 1, T, F]
  size = lambda j, t, s: float(jnp.abs(j[0, t, :, 0, s]).sum())
  for t in range(steps_):
    for s in range(steps_):
      assert (size(jac_next, t, s) > 0) == (s <= t), ("next", t, s)
      assert (size(jac_previous, t, s) > 0) == (s >= t), ("previous", t, s)


def tagger(num_layers=2, residual=False, neighbour=True, cell="lstm", dropout=0.0):
  encoder = BiRNN(cell=cell, hidden_size=5, num_layers=num_layers, residual=residual,
                  dropout=dropout, impl="scan")
  return wordchar.WordCharTagger(
      num_words=20, word_embed_size=4, num_tags=3, encoder=encoder,
      char_embedder=models.CharBiRNNEmbedder(num_chars=10, embed_size=4, hidden_size=3),
      neighbour_lm=neighbour_lm.NeighbourLM(vocab_size=12, hidden_size=6) if neighbour
      else None)


def batch(words):
  words = jnp.asarray(words, jnp.int32)
  chars = jnp.stack([words % 9 + 1, words % 7 + 1], axis=-1) * (words[..., None] > 0)
  lengths = jnp.sum(words > 0, axis=1).astype(jnp.int32)
  return words, chars, None, lengths


def head_predictions(model, variables, words):
  """The neighbour LM's (next, previous) logits in training mode (every dropout 0)."""
  _, state = model.apply(variables, *batch(words), deterministic=False,
                         rngs={"dropout": jax.random.key(3)}, capture_intermediates=True,
                         mutable=SOWN + ["intermediates"])
  return state["intermediates"]["neighbour_lm"]["__call__"][0]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_in_the_tagger_the_objective_reads_the_first_layer_chains_only(num_layers):
  """Changing the words after t leaves the forward chain's predictions up to t unchanged,
  and changing the words before t the backward chain's from t on, however deep the stack:
  the head reads the first layer, whose chains are apart (a second layer's are not)."""
  model = tagger(num_layers)
  words = np.array([[3, 15, 4, 9, 2, 0]])
  variables = model.init(jax.random.key(0), *batch(words))
  next_0, previous_0 = head_predictions(model, variables, words)
  later, earlier = words.copy(), words.copy()
  later[0, 3:5] = [7, 11]
  earlier[0, 0:2] = [6, 13]
  next_1, previous_1 = head_predictions(model, variables, later)
  np.testing.assert_array_equal(next_1[:, :3], next_0[:, :3])
  assert not np.allclose(previous_1[:, :3], previous_0[:, :3])   # the other side sees them
  next_2, previous_2 = head_predictions(model, variables, earlier)
  np.testing.assert_array_equal(previous_2[:, 2:], previous_0[:, 2:])
  assert not np.allclose(next_2[:, 2:], next_0[:, 2:])


def test_sown_objective_is_the_per_token_cross_entropy_on_real_tokens():
  """The sown sums equal a numpy cross-entropy over the real tokens against the hand-built
  targets, whatever the padding; 'losses' holds weight * (next + previous)."""
  model = tagger()
  words = np.array([[3, 15, 4, 0, 0, 0, 0], [5, 6, 7, 8, 2, 1, 0]])
  variables = model.init(jax.random.key(0), *batch(words))
  _, sown = model.apply(variables, *batch(words), deterministic=False,
                        rngs={"dropout": jax.random.key(3)}, mutable=SOWN)
  next_logits, previous_logits = head_predictions(model, variables, words)
  ids = np.where(words < 12, words, UNK)
  expected = {"next_word_nll": 0.0, "previous_word_nll": 0.0}
  for b, n in enumerate([3, 6]):
    for t in range(n):
      for name, logits, target in (
          ("next_word_nll", next_logits, ids[b, t + 1] if t + 1 < n else 0),
          ("previous_word_nll", previous_logits, ids[b, t - 1] if t > 0 else 0)):
        row = np.asarray(logits[b, t], np.float64)
        expected[name] += np.log(np.exp(row - row.max()).sum()) + row.max() - row[target]
  got = {k: float(v[0]) for k, v in sown["metrics"]["neighbour_lm"].items()}
  assert got == pytest.approx(expected, rel=1e-5)
  assert float(sown["losses"]["neighbour_lm"]["neighbour_lm"][0]) == pytest.approx(
      0.1 * sum(expected.values()), rel=1e-5)
  # More padding changes nothing.
  wider = np.pad(words, ((0, 0), (0, 5)))
  _, sown_wide = model.apply(variables, *batch(wider), deterministic=False,
                             rngs={"dropout": jax.random.key(3)}, mutable=SOWN)
  got_wide = {k: float(v[0]) for k, v in sown_wide["metrics"]["neighbour_lm"].items()}
  assert got_wide == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_layers,residual,cell", [(1, False, "lstm"), (2, False, "gru"),
                                                      (3, True, "lstm")])
def test_tag_logits_are_the_plain_taggers(num_layers, residual, cell):
  """With the head, the tagger computes the same logits as without it, given the same
  encoder parameters (renamed: `chains` is layer 0, `layer_k` layer k); no sown loss at
  evaluation."""
  words = np.array([[3, 15, 4, 9, 0], [5, 6, 7, 8, 2]])
  with_head = tagger(num_layers, residual, cell=cell, dropout=0.3)
  plain = tagger(num_layers, residual, neighbour=False, cell=cell, dropout=0.3)
  variables = with_head.init(jax.random.key(0), *batch(words))
  params = flax.core.unfreeze(variables["params"])
  renamed = {k: v for k, v in params.items()
             if k not in ("chains", "neighbour_lm") and not k.startswith("layer_")}
  renamed["encoder"] = {"layer_0": params["chains"]["layer_0"],
                        **{f"layer_{k}": params[f"layer_{k}"]["layer_0"]
                           for k in range(1, num_layers)}}
  expected = plain.apply({"params": renamed}, *batch(words))
  got, sown = with_head.apply(variables, *batch(words), mutable=SOWN)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  assert sown == {}


def test_with_sown_adds_losses_and_reports_metrics():
  sums = {"loss": jnp.float32(2.0), "count": jnp.float32(4.0)}
  sown = {"losses": {"a": {"aux": (jnp.float32(1.5),)}},
          "metrics": {"a": {"nll": (jnp.float32(15.0),)}}}
  out = steps.with_sown(sums, sown)
  assert float(out["loss"]) == 3.5 and float(out["aux"]) == 1.5 and float(out["nll"]) == 15
  assert steps.with_sown(sums, {}) == sums


@pytest.mark.parametrize("key,value,named", [
    ("neighbour_lm_weight", -0.1, "config.model.neighbour_lm_weight"),
    ("bidirectional", False, "config.model.bidirectional"),
    ("merge", "sum", "config.model.merge"),
    ("neighbour_lm_vocab", 2, "config.model.neighbour_lm_vocab"),
    ("neighbour_lm_hidden", 0, "config.model.neighbour_lm_hidden"),
])
def test_impossible_settings_are_refused_naming_the_key(key, value, named):
  config = config_lib.load_experiment(
      pathlib.Path(__file__).resolve().parents[1] / "experiments" / "pos_ewt.py", "smoke")
  config.model.neighbour_lm_weight = 0.1
  config.model[key] = value
  with pytest.raises(errors.ConfigError, match=named.replace(".", r"\.")):
    wordchar.check_encoder_config(config)
