"""The ELMo-style biLM task: neither LM sees what it predicts (gradients and token swaps),
the embedding and softmax are one parameter each shared by both directions, `embed` gives
one 2H-wide vector per token that depends on context, the punctuation labels align with the
d2l word tokens, and the :smoke config trains, writes results.json and predicts."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from birnn_jax.training import config_lib
from birnn_jax import errors
from birnn_jax.training import train
from birnn_jax.training import trained
from birnn_jax.data import conllu_data
from birnn_jax.tasks import bilm
from helpers import write_greek_treebank

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg="smoke"):
  return config_lib.load_experiment(ROOT / "experiments" / "bilm_time_machine.py", arg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = load_config()
  task = bilm.Task(config, tmp_path_factory.mktemp("bilm_task"))
  model = task.model()
  batch = task.train_batch(0)
  params = model.init(jax.random.key(0), batch["tokens"], batch["lengths"])["params"]
  return config, task, model, params


def dependence(fn, x, lengths):
  """[B, T, B, T]: whether output (b, t) of fn (-> [B, T, V]) depends on input x[b', s]."""
  proj = jax.random.normal(jax.random.key(1), (jax.eval_shape(fn, x, lengths).shape[-1],))
  jac = jax.jit(jax.jacrev(lambda x, lengths: fn(x, lengths) @ proj))(x, lengths)
  # jac: [B, T, B, T, E]
  return np.asarray(jnp.abs(jac).sum(-1)) > 0


def test_forward_lm_sees_only_the_past_backward_lm_only_the_future(setup):
  config, _, model, params = setup
  lengths = jnp.asarray([7, 4])
  x = jax.random.normal(jax.random.key(2), (2, 7, config.model.embed_size))
  logits = lambda x, lengths, d: model.apply({"params": params}, x, lengths,
                                             method=bilm.BiLM.logits_from_embeddings)[d]
  fwd = dependence(lambda x, l: logits(x, l, "forward"), x, lengths)
  bwd = dependence(lambda x, l: logits(x, l, "backward"), x, lengths)
  t = np.arange(7)
  for b, n in enumerate(np.asarray(lengths)):
    real = (t[:, None] < n) & (t[None, :] < n)
    # Forward logits at t depend on exactly the inputs 0..t; backward on exactly t..n-1.
    np.testing.assert_array_equal(fwd[b, :, b], real & (t[None, :] <= t[:, None]))
    np.testing.assert_array_equal(bwd[b, :, b], real & (t[None, :] >= t[:, None]))
    other = 1 - b
    assert not fwd[b, :, other].any() and not bwd[b, :, other].any()


def test_changing_a_target_token_leaves_its_prediction_unchanged(setup):
  """The loss term for x_{t+1} (forward) and x_{t-1} (backward) cannot read that token."""
  _, task, model, params = setup
  batch = task.train_batch(0)
  tokens, lengths = np.asarray(batch["tokens"]), np.asarray(batch["lengths"])
  apply = jax.jit(lambda tok: model.apply({"params": params}, tok, lengths))
  before = apply(tokens)
  t = 5
  changed = tokens.copy()
  changed[:, t] = (changed[:, t] + 7) % len(task.vocab)
  after = apply(changed)
  # Forward logits at s < t predict x_{s+1}, incl. x_t itself at s = t - 1.
  np.testing.assert_array_equal(before["forward"][:, :t], after["forward"][:, :t])
  np.testing.assert_array_equal(before["backward"][:, t + 1:], after["backward"][:, t + 1:])
  assert not np.allclose(before["forward"][:, t], after["forward"][:, t])
  assert not np.allclose(before["backward"][:, t], after["backward"][:, t])
  # So the forward loss terms for x_1..x_t and the backward ones for x_{t+1}.. are unchanged.
  nll = lambda logits, targets: np.asarray(
      optax.softmax_cross_entropy_with_integer_labels(logits, targets))
  np.testing.assert_array_equal(nll(before["forward"][:, :t], tokens[:, 1:t + 1]),
                                nll(after["forward"][:, :t], tokens[:, 1:t + 1]))
  np.testing.assert_array_equal(nll(before["backward"][:, t + 1:], tokens[:, t:-1]),
                                nll(after["backward"][:, t + 1:], tokens[:, t:-1]))


def test_embedding_and_softmax_are_one_parameter_each_shared_by_both_directions(setup):
  config, task, model, params = setup
  flat = config_lib.flatten(jax.tree.map(np.asarray, params))
  assert [k for k in flat if "embedding" in k] == ["embed.embedding"]
  assert sorted(k for k in flat if k.startswith("softmax")) == ["softmax.bias",
                                                                "softmax.kernel"]
  top = {k.split(".")[0] for k in flat}
  layers = config.model.num_layers
  assert top == {"embed", "softmax"} | {f"{d}_lm_{j}" for d in ("forward", "backward")
                                        for j in range(layers)}
  # Two LMs with their own recurrent weights ...
  for j in range(layers):
    f = jax.tree.leaves(params[f"forward_lm_{j}"])
    b = jax.tree.leaves(params[f"backward_lm_{j}"])
    assert not any(np.allclose(u, v) for u, v in zip(f, b) if u.size > 1)
  # ... each of whose losses trains the one embedding and the one softmax.
  batch = task.train_batch(0)

  @jax.jit
  def grads(p):
    loss = lambda p, d: task.metric_sums(
        model.apply({"params": p}, batch["tokens"], batch["lengths"]), batch)[f"{d}_loss"]
    return {d: jax.grad(loss)(p, d) for d in ("forward", "backward")}

  for direction, g in grads(params).items():
    other = "backward" if direction == "forward" else "forward"
    for name in ("embed", "softmax"):
      assert any(np.abs(x).sum() > 0 for x in jax.tree.leaves(g[name])), (direction, name)
    assert all(np.abs(x).sum() == 0 for j in range(layers)
               for x in jax.tree.leaves(g[f"{other}_lm_{j}"]))


def test_embed_gives_one_contextual_vector_per_token(setup):
  config, task, model, params = setup
  sentences = ["I sat peering down that well.", "Intellectual as well as physical",
               "well"]
  out = task.embed(params, sentences)
  width = 2 * config.model.hidden_size
  assert [toks for toks, _ in out] == [
      ["i", "sat", "peering", "down", "that", "well"],
      ["intellectual", "as", "well", "as", "physical"], ["well"]]
  for toks, vecs in out:
    assert vecs.shape == (len(toks), width) and vecs.dtype == np.float32
  a, b, c = out[0][1][5], out[1][1][2], out[2][1][0]
  assert not np.allclose(a, b) and not np.allclose(a, c)
  # The mix: gamma * sum_j s_j h_j with h_0 = [e; e] and fixed equal weights.
  layers = task.embed_layers(params, sentences)[0][1]
  assert layers.shape == (config.model.num_layers + 1, 6, width)
  np.testing.assert_allclose(out[0][1], layers.mean(0), rtol=1e-5, atol=1e-6)
  e = np.asarray(params["embed"]["embedding"])[task.vocab.token_to_id("well")]
  np.testing.assert_allclose(layers[0, 5], np.concatenate([e, e]), rtol=1e-6)
  # A sentence read alone gives the same vectors as inside a padded batch.
  alone = task.embed(params, sentences[1:2])[0][1]
  np.testing.assert_allclose(alone, out[1][1], rtol=1e-5, atol=1e-6)
  # The similarity report: contextual < 1, context-free exactly 1.
  result, report = task.similarity_report(params, sentences, "well")
  assert result["context_free_cosine_min"] == pytest.approx(1.0)
  assert result["mean_offdiag_cosine"] < 0.9999
  assert "s1:5" in report and "s2:2" in report and "s3:0" in report


def test_stream_states_match_windows(setup):
  """Long streams are read in overlapping windows; every position gets filled."""
  config, task, _, params = setup
  ids = task.ids["valid"][:50]
  states = task.stream_layer_states(params, ids)
  assert states.shape == (config.model.num_layers + 1, 50, 2 * config.model.hidden_size)
  assert np.all(np.abs(states[1:]).sum(-1) > 0)
  # The first window's first core tokens come from reading ids[:seq_len] directly.
  direct = task.embed_layers(params, [" ".join(task.vocab.decode(ids[:config.data.seq_len]))])
  core = config.data.seq_len - 2 * (config.data.seq_len // 4)
  np.testing.assert_allclose(states[:, :core], direct[0][1][:, :core], rtol=1e-5, atol=1e-5)


def test_book_token_reads_other_corpora_like_the_book():
  assert [bilm.book_token(f) for f in ("Don't", "U.S.", "3.5", ",", "e-mail", "Time")] == [
      "dont", "us", "", "", "email", "time"]


def test_frozen_features_are_the_sentence_read_without_punctuation(setup):
  """Each token's features are the biLM's layer states of the sentence as the book would
  have it (letters only); tokens without letters and padding get zeros."""
  config, task, _, params = setup
  features = bilm.FrozenFeatures(task, params)
  forms = ["The", "light", ",", "I", "said", "42", "."]
  ids, positions = features.encode(forms)
  np.testing.assert_array_equal(positions, [0, 1, -1, 2, 3, -1, -1])
  np.testing.assert_array_equal(ids, task.vocab.encode(["the", "light", "i", "said"]))
  other = features.encode(["well", "well"])
  out = features([(ids, positions), other], batch_size=3, num_steps=9)
  width = 2 * config.model.hidden_size
  assert out.shape == (3, 9, config.model.num_layers + 1, width) and out.dtype == np.float32
  direct = task.embed_layers(params, ["the light i said"])[0][1]      # [L + 1, 4, 2H]
  np.testing.assert_allclose(out[0, [0, 1, 3, 4]], direct.transpose(1, 0, 2), rtol=1e-5,
                             atol=1e-6)
  assert np.all(out[0, [2, 5, 6, 7, 8]] == 0) and np.all(out[2] == 0)
  assert np.all(out[1, 2:] == 0) and np.abs(out[1, :2, 1:]).sum() > 0
  # A row's features do not depend on the other rows or on the padding.
  alone = features([other], batch_size=1, num_steps=2)
  np.testing.assert_allclose(alone[0], out[1, :2], rtol=1e-5, atol=1e-6)


def test_restoring_a_pretrained_run_names_the_problem(tmp_path):
  restore = lambda: bilm.FrozenFeatures.from_workdir(tmp_path, trained.restore_run)
  with pytest.raises(errors.NoCheckpointError, match="config.json does not exist"):
    restore()
  (tmp_path / "config.json").write_text(json.dumps({"task": "pos"}))
  with pytest.raises(errors.WorkdirMismatchError, match="'pos' run, not a 'bilm' run"):
    restore()
  (tmp_path / "config.json").write_text(json.dumps({"task": "bilm"}))
  with pytest.raises(errors.NoCheckpointError, match="no checkpoint"):
    restore()


def test_punctuation_labels_align_with_d2l_words():
  raw = "The Time-Machine, he said. 'Well?' It's--\nthere;"
  words, labels = bilm.punctuation_labels(raw)
  assert words == ["the", "time", "machine", "he", "said", "well", "it", "s", "there"]
  assert [bilm.PROBE_CLASSES[i] for i in labels] == [
      "none", "none", "pause", "none", "end", "end", "none", "pause", "end"]


def test_treebank_text_reads_forms_like_frozen_features_do():
  """A treebank's words are exactly the tokens `FrozenFeatures` gives a tagger (forms with
  letters, as `book_token`s); its punctuation forms label what followed each word."""
  sentences = [[("Don't", "AUX"), ("go", "VERB"), (",", "PUNCT"), ("3.5", "NUM"),
                ("U.S.", "PROPN"), ("--", "PUNCT"), ("ok", "INTJ"), ("!", "PUNCT")],
               [("e-mail", "NOUN"), ("$", "SYM"), ("me", "PRON")]]
  raw = bilm.task.treebank_text(sentences)
  words, labels = bilm.task.labelled_words(raw)
  assert words == ["dont", "go", "us", "ok", "email", "me"]
  assert words == [bilm.book_token(f) for s in sentences for f, _ in s if bilm.book_token(f)]
  assert [bilm.PROBE_CLASSES[i] for i in labels] == [
      "none", "pause", "pause", "end", "none", "end"]


def test_treebank_corpus_trains_on_the_treebank_splits(tmp_path):
  """data.corpus='treebank': train/valid/test are the bundled EWT's train/dev/test words,
  and the probe's labels cover all of them."""
  config = load_config("treebank,smoke")
  assert config.data.corpus == "treebank"
  task = bilm.Task(config, tmp_path)
  treebank = conllu_data.load_ewt()
  for name, split in zip(("train", "valid", "test"), conllu_data.SPLITS):
    raw = bilm.task.treebank_text(getattr(treebank, split))
    np.testing.assert_array_equal(task.ids[name],
                                  task.vocab.encode(bilm.task.labelled_words(raw)[0]))
  assert len(task.labels) == sum(len(ids) for ids in task.ids.values())
  assert "google" in task.vocab.tokens and "morlocks" not in task.vocab.tokens


def test_treebank_without_latin_letters_is_refused_naming_the_file(tmp_path):
  folder = write_greek_treebank(tmp_path / "UD_Greek-Tiny")
  config = load_config("treebank,smoke")
  config.data.dir = str(folder)
  with pytest.raises(errors.DataError, match=r"-ud-train\.conllu.*letters a-z in its train"):
    bilm.Task(config, tmp_path / "run")


def test_probes():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 400)
  x = np.eye(3)[y] + 0.1 * rng.normal(size=(400, 3))
  pred = bilm.ridge_probe(x[:300], y[:300], x[300:], 3, 1.0)
  assert bilm.probe_scores(pred, y[300:], 3)["balanced_accuracy"] > 0.95
  # Balanced accuracy: any constant prediction scores 1/3 however skewed the labels.
  gold = np.array([0] * 90 + [1] * 5 + [2] * 5)
  scores = bilm.probe_scores(np.zeros(100, np.int64), gold, 3)
  assert scores["balanced_accuracy"] == pytest.approx(1 / 3)
  # The lookup: each type's class after balancing (a 1-in-3 rare class beats a 2-in-3
  # frequent one), class 0 for unseen types.
  ids = np.array([5, 5, 5, 6, 6, 7, 7, 7, 7, 7, 7, 7])
  labels = np.array([0, 0, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0])
  pred = bilm.lookup_probe(ids, labels, np.array([5, 6, 7, 9]), 3)
  np.testing.assert_array_equal(pred, [1, 2, 0, 0])


@pytest.mark.parametrize("key, value", [("model.bidirectional", True),
                                        ("model.embed_size", 8),
                                        ("model.mix_weights", (0.0, 1.0)),
                                        ("data.level", "char"),
                                        ("data.corpus", "wikipedia")])
def test_invalid_config_names_the_key(tmp_path, key, value):
  config = load_config()
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=f"config.{key}"):
    bilm.Task(config, tmp_path)


@pytest.mark.slow
def test_smoke_trains_then_predicts(tmp_path, capsys):
  config = load_config()
  config.train.num_steps = 2
  summary = train.run_experiment(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  for key in ("valid_forward_perplexity", "valid_backward_perplexity",
              "test_forward_perplexity", "test_backward_perplexity"):
    assert np.isfinite(saved[key]) and saved[key] > 1
  assert saved["polysemy"]["word"] == "light"
  assert saved["polysemy"]["by_layer"]["h0"]["cross_sense_mean_cosine"] == pytest.approx(1.0)
  assert saved["polysemy"]["context_free_cosine_min"] == pytest.approx(1.0)
  # A constant guess recalls one class of three: balanced accuracy exactly 1/3.
  assert saved["probe"]["constant_class_balanced_accuracy"] == pytest.approx(1 / 3)
  assert summary["probe"] == saved["probe"] and "polysemy_report" not in saved
  assert "Cosine similarity of the biLM (ELMo) vectors of 'light'" in capsys.readouterr().out
  assert (tmp_path / bilm.VOCAB_FILE).exists()
  out = train.predict(config, tmp_path, "The bright light of the lamp | to light a spill | "
                      "light")
  assert "Cosine similarity" in out and "s1:2" in out and "s2:1" in out and "s3:0" in out
  assert "Context-free embedding: cosine 1.000 .. 1.000" in out
  assert "same sense" in train.predict(config, tmp_path, "")  # the built-in passages
  with pytest.raises(ValueError, match="does not occur"):
    train.predict(config, tmp_path, "no such word here | light")


@pytest.mark.slow
def test_smoke_config_end_to_end(tmp_path):
  config = load_config()
  summary = train.run_experiment(config, tmp_path)
  assert summary["steps"] == config.train.num_steps
  vocab_size = len(bilm.Task(config, tmp_path).vocab)
  for d in ("forward", "backward"):  # better than a uniform guess after a few steps
    assert summary[f"test_{d}_perplexity"] < vocab_size
  assert {f"{name}_balanced_accuracy" for name in (
      "bilm", "forward_only", "backward_only", "context_free", "context_free_lookup",
      "constant_class")} <= set(summary["probe"])
