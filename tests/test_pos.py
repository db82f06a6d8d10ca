"""POS tagging on UD English-EWT (birnn_jax/tasks/pos.py, experiments/pos_ewt.py).

Fast tests check the pieces (the character embedder's padding invariance, deduplicated
characters giving the same logits, word dropout only in training, the forward-only
encoder's causality; the word-and-character machinery alone: tests/test_wordchar.py); the slow
ones train the :smoke config end to end on the bundled EWT files and use its
checkpoint for predict and its vocabularies.
"""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

from birnn_jax.training import config_lib
from birnn_jax import errors
from birnn_jax.tasks import models
from birnn_jax.training import train
from birnn_jax.training import trained
from birnn_jax.data import conllu_data
from birnn_jax.data.vocab import PAD, UNK, Vocab
from birnn_jax.tasks import pos
from birnn_jax.tasks import wordchar
from helpers import write_greek_treebank

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg="smoke"):
  return config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py", arg)


# Fast: the pieces ------------------------------------------------------------------------------


def test_char_embedder_ignores_padding():
  """A word's vector is the same whatever its character padding and its place in the batch;
  a word with no characters (a padding position) gets zeros."""
  embedder = models.CharBiRNNEmbedder(num_chars=12, embed_size=4, hidden_size=5)
  word = [3, 7, 2, 9]
  short = np.zeros((1, 1, 4), np.int32)
  short[0, 0] = word
  wide = np.zeros((2, 3, 11), np.int32)
  wide[1, 2, :4] = word
  wide[0, 0, :2] = [5, 5]
  variables = embedder.init(jax.random.key(0), wide)
  v_short = embedder.apply(variables, short)
  v_wide = embedder.apply(variables, wide)
  assert v_short.shape == (1, 1, 10) and v_wide.shape == (2, 3, 10)
  np.testing.assert_allclose(v_short[0, 0], v_wide[1, 2], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(v_wide[0, 1], np.zeros(10))
  assert np.abs(v_short).sum() > 0


class Jitted:
  """A module's `init` and `apply`, each under jit: called eagerly, flax traces and compiles
  every scan again on each call, seconds for this tagger, against one compile per shape."""

  def __init__(self, module):
    self.init = jax.jit(module.init)
    self.apply = jax.jit(module.apply, static_argnames=("deterministic",))


def tiny_model(word_dropout=0.0, bidirectional=True):
  config = load_config()
  config.model.word_dropout = word_dropout
  config.model.embed_dropout = config.model.output_dropout = config.model.dropout = 0.0
  config.model.bidirectional = bidirectional
  return Jitted(wordchar.model_from_config(config.model, num_words=30, num_chars=20,
                                           num_tags=len(pos.TAGS)))


def tiny_inputs(seed=0, batch=3, steps=8, chars=6):
  rng = np.random.default_rng(seed)
  lengths = np.array([8, 5, 1][:batch], np.int32)
  mask = np.arange(steps)[None, :] < lengths[:, None]
  words = np.where(mask, rng.integers(2, 30, (batch, steps)), PAD).astype(np.int32)
  char_ids = rng.integers(1, 20, (batch, steps, chars)) * mask[..., None]
  char_ids[..., 4:] = 0
  return words, char_ids.astype(np.int32), lengths


def test_word_dropout_only_in_training():
  words, chars, lengths = tiny_inputs()
  drop = wordchar.WordDropout(rate=0.5)
  same = drop.apply({}, words, deterministic=True)
  np.testing.assert_array_equal(same, words)
  dropped = np.asarray(drop.apply({}, words, deterministic=False,
                                  rngs={"dropout": jax.random.key(1)}))
  real = words != PAD
  assert np.all(dropped[~real] == PAD)                       # padding stays padding
  assert np.all((dropped[real] == words[real]) | (dropped[real] == UNK))
  assert 0 < np.mean(dropped[real] == UNK) < 1

  with_dropout, without = tiny_model(word_dropout=0.9), tiny_model(word_dropout=0.0)
  variables = without.init(jax.random.key(0), words, chars, None, lengths)
  eval_a = with_dropout.apply(variables, words, chars, None, lengths, deterministic=True)
  eval_b = without.apply(variables, words, chars, None, lengths, deterministic=True)
  np.testing.assert_array_equal(eval_a, eval_b)             # no dropout at evaluation
  train_a = with_dropout.apply(variables, words, chars, None, lengths, deterministic=False,
                               rngs={"dropout": jax.random.key(2)})
  train_b = without.apply(variables, words, chars, None, lengths, deterministic=False,
                          rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(train_b, eval_b)             # all other dropouts are 0 here
  assert not np.allclose(train_a, eval_a)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_forward_only_tagger_reads_only_the_left_context(bidirectional):
  """With model.bidirectional=False the tag at t depends on words <= t only."""
  model = tiny_model(bidirectional=bidirectional)
  words, chars, lengths = tiny_inputs()
  variables = model.init(jax.random.key(0), words, chars, None, lengths)
  changed_words, changed_chars = words.copy(), chars.copy()
  changed_words[0, 5] = 3 if words[0, 5] != 3 else 4
  changed_chars[0, 5, :4] = (chars[0, 5, :4] % 19) + 1
  a = model.apply(variables, words, chars, None, lengths)
  b = model.apply(variables, changed_words, changed_chars, None, lengths)
  left_same = np.allclose(a[0, :5], b[0, :5], atol=1e-6)
  assert left_same != bidirectional
  np.testing.assert_allclose(a[1:], b[1:], atol=1e-6)        # other sentences untouched
  encoder_params = jax.tree.map(lambda x: 0, variables["params"]["encoder"])
  has_backward = "backward" in json.dumps(encoder_params)
  assert has_backward == bidirectional


def test_bilm_features_enter_through_a_learned_mix():
  """ELMo's use: frozen layer states [B, T, K, F] mixed by softmax(w) and gamma (learned
  here, from equal weights and 1), then concatenated to the word's other features."""
  model = tiny_model()
  words, chars, lengths = tiny_inputs()
  bilm = np.random.default_rng(1).normal(size=words.shape + (3, 10)).astype(np.float32)
  variables = model.init(jax.random.key(0), words, chars, None, lengths, bilm)
  params = variables["params"]
  np.testing.assert_array_equal(params["bilm_mix"], np.zeros(3))
  assert float(params["bilm_gamma"]) == 1.0
  assert "bilm_mix" not in model.init(jax.random.key(0), words, chars, None, lengths)["params"]

  def logits(p, features):
    return model.apply({"params": p}, words, chars, None, lengths, features)

  # The mix is what the tagger reads: features with the same mix give the same logits.
  shuffled = bilm[:, :, ::-1]
  np.testing.assert_allclose(logits(params, bilm), logits(params, shuffled), rtol=1e-5,
                             atol=1e-6)
  changed = bilm.copy()
  changed[0, 2] += 1.0
  a, b = logits(params, bilm), logits(params, changed)
  assert not np.allclose(a[0, 2], b[0, 2]) and np.allclose(a[1:], b[1:], atol=1e-6)
  grads = jax.grad(lambda p: logits(p, bilm).sum())(params)
  assert np.abs(grads["bilm_gamma"]) > 0 and np.abs(grads["bilm_mix"]).sum() > 0


def test_extra_features_are_appended_and_none_changes_nothing():
  """`extra` [B, T, F] (e.g. NER's casing embedding) widens x_t by F; None is the plain
  tagger (same parameters, same logits)."""
  model = tiny_model()
  words, chars, lengths = tiny_inputs()
  plain = model.init(jax.random.key(0), words, chars, None, lengths)
  np.testing.assert_array_equal(
      model.apply(plain, words, chars, None, lengths, extra=None),
      model.apply(plain, words, chars, None, lengths))
  extra = np.random.default_rng(3).normal(size=words.shape + (4,)).astype(np.float32)
  variables = model.init(jax.random.key(0), words, chars, None, lengths, extra=extra)
  in_plain = jax.tree.map(np.shape, plain["params"])
  in_extra = jax.tree.map(np.shape, variables["params"])
  assert jax.tree.structure(in_plain) == jax.tree.structure(in_extra)
  assert in_plain != in_extra     # only the first encoder layer's input width differs
  a = model.apply(variables, words, chars, None, lengths, extra=extra)
  changed = extra.copy()
  changed[0, 2] += 1.0
  b = model.apply(variables, words, chars, None, lengths, extra=changed)
  assert not np.allclose(a[0, 2], b[0, 2]) and np.allclose(a[1:], b[1:], atol=1e-6)


@pytest.mark.parametrize("key, value, match", [
    ("model.bilm_layers", "some", "config.model.bilm_layers"),
    ("data.train_sentences", -1, "config.data.train_sentences"),
    ("model.bilm_workdir", "/nonexistent/bilm", "config.model.bilm_workdir='/nonexistent")])
def test_invalid_bilm_config_names_the_key(cached_ewt, tmp_path, key, value, match):
  config = load_config()
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=match):
    pos.Task(config, tmp_path)


def test_bilm_variants_need_a_bilm():
  config = load_config("bilm,smoke")
  assert config.compare_bilm and config.data.train_sentences == 1000
  with pytest.raises(ValueError, match="config.model.bilm_workdir"):
    pos.Task.variants(config)
  config.model.bilm_workdir = "/some/bilm"
  variants = pos.Task.variants(config)
  assert list(variants) == ["elmo", "context_free", "no_bilm"]
  assert not any(v.compare_bilm for v in variants.values())
  assert variants["no_bilm"].model.bilm_workdir == ""
  assert variants["context_free"].model.bilm_layers == "context_free"
  assert variants["elmo"].model.bilm_layers == "all"
  assert list(pos.Task.variants(load_config())) == [""]


def test_direction_variants_and_their_summary():
  config = load_config("smoke")
  config.compare_directions = True
  variants = pos.Task.variants(config)
  assert list(variants) == ["bidirectional", "forward"]
  assert [v.model.bidirectional for v in variants.values()] == [True, False]
  assert not any(v.compare_directions for v in variants.values())
  results = {name: {"test_accuracy": acc, "dev_accuracy": acc - 0.01,
                    "test_unseen_accuracy": 0.8, "test_unseen_count": 10,
                    "train_seconds": 1.0, "num_params": 5,
                    "test_per_tag_accuracy": {"SCONJ": sconj}}
             for name, acc, sconj in (("bidirectional", 0.95, 0.87), ("forward", 0.93, 0.62))}
  summary, verdict = pos.Task.summarize(config, results)
  assert summary["bidirectional_minus_forward_test_accuracy"] == pytest.approx(0.02)
  assert "+2.00% for the backward chain" in verdict and "SCONJ 87.0% vs 62.0%" in verdict
  config.compare_bilm = True
  with pytest.raises(ValueError, match="choose one comparison"):
    pos.Task.variants(config)


def char_rows(rng, batch, steps, width, lengths):
  """int32 [batch, steps, width]: position (b, t) holds a random form of lengths[b, t]."""
  ids = rng.integers(1, 20, (batch, steps, width))
  return np.where(np.arange(width) < lengths[..., None], ids, PAD).astype(np.int32)


@pytest.mark.parametrize("width, long_forms, tiered", [
    (6, 2, False),       # C < 8: one table
    (16, 2, True),       # a few long forms: tiers of 16, 8 and 4 characters
    (16, 12, False)])    # more long forms than the 16-character tier holds: one table
def test_dedup_chars_gives_the_same_logits(width, long_forms, tiered):
  rng = np.random.default_rng(0)
  words, _, lengths = tiny_inputs()
  size, steps = words.shape
  char_lengths = np.where(np.arange(steps) < lengths[:, None], rng.integers(1, 5, words.shape), 0)
  char_lengths.reshape(-1)[:long_forms] = width          # long forms at the first positions
  chars = char_rows(rng, size, steps, width, char_lengths)
  chars[1, :5], chars[2, 0] = chars[0, :5], chars[0, 7]     # repeated word forms
  batch = wordchar.dedup_chars({"words": words, "chars": chars, "lengths": lengths})
  assert isinstance(batch["chars"], tuple) == tiered
  tiers = batch["chars"] if tiered else (batch["chars"],)
  assert [t.shape[:1] for t in tiers] == [(size,)] * len(tiers)   # shardable along batch
  assert sum(t.shape[1] for t in tiers) == steps // 2
  if tiered:
    assert [t.shape[2] for t in tiers] == [16, 8, 4]
  table = wordchar.char_table(batch["chars"])          # no form is cut short by its tier
  np.testing.assert_array_equal(table[batch["char_index"]], chars)
  model = tiny_model()
  variables = model.init(jax.random.key(0), words, chars, None, lengths)
  np.testing.assert_allclose(
      model.apply(variables, words, batch["chars"], batch["char_index"], lengths),
      model.apply(variables, words, chars, None, lengths), rtol=1e-5, atol=1e-6)


# Any UD treebank: a tiny Greek one without a dev file ----------------------------------------


def greek_config(folder, num_epochs):
  config = load_config()
  config.data.dir = str(folder)
  config.data.pad_to = 8
  config.data.eval_batch_size = 16
  config.train.num_epochs = num_epochs
  config.train.log_every_epochs = 0.5
  config.train.eval_every_epochs = 1
  config.train.checkpoint_every_epochs = 1
  # Constant: a cosine schedule's length is part of the compiled step, so the longer resumed
  # run would compile it again.
  config.optim.schedule = "constant"
  return config


@pytest.fixture(scope="module")
def greek_task(tmp_path_factory):
  """A Task on the tiny Greek treebank (data, vocabularies saved in its workdir), no training:
  the bundled EWT would take seconds to parse for checks that need any treebank."""
  config = greek_config(write_greek_treebank(tmp_path_factory.mktemp("data") / "UD_Greek"), 1)
  return config, pos.Task(config, tmp_path_factory.mktemp("pos_task"))


@pytest.mark.usefixtures("compile_cache")
def test_the_eval_steps_predictions_are_the_prediction_programs(tmp_path):
  """extra_results reads the test predictions from the eval step (split_predictions); they
  are the tags the task's own prediction program gives, example for example."""
  config = greek_config(write_greek_treebank(tmp_path / "UD_Greek"), 1)
  trainer = train.Trainer(config, tmp_path / "run")
  # Scaled up, an untrained model's tags vary from word to word (a misplaced row shows).
  params = jax.tree.map(lambda x: 30.0 * x, trainer.init_state()["params"])
  got = trainer.task.split_predictions(params, "test", trainer.evaluate)
  examples, predict = trainer.task.examples["test"], trainer.task.prediction_fn()
  assert len(got) == len(examples) > 1
  assert len({int(t) for tags in got for t in tags}) > 2
  for idx, batch in trainer.task.indexed_eval_batches("test"):
    tags = np.asarray(predict(params, *trainer.task.model_inputs(batch)))
    for row, i in enumerate(idx):
      np.testing.assert_array_equal(got[i], tags[row, :len(examples[i].words)])


@pytest.mark.usefixtures("compile_cache")
def test_any_treebank_trains_in_epochs_evaluates_predicts_and_resumes(tmp_path):
  folder = write_greek_treebank(tmp_path / "UD_Greek-Tiny")
  workdir = tmp_path / "run"
  results = train.run_experiment(greek_config(folder, 2), workdir)
  # 50 sentences, 5 held out as dev: 45 train / batch 16 = 3 steps per epoch.
  assert results["sentences"] == {"train": 45, "dev": 5, "test": 10}
  assert results["steps_per_epoch"] == 3 and results["steps"] == 6 and results["epochs"] == 2
  assert "held out: 10%" in results["data_sources"]["dev"]
  assert results["data_sources"]["test"].endswith("el_tiny-ud-test.conllu.xz")
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 3, 4, 6]             # log every 1.5 -> 2 steps
  assert [r["step"] for r in rows if "eval_accuracy" in r] == [3, 6]
  words = Vocab.load(workdir / wordchar.WORD_VOCAB_FILE)
  assert "γυναικα" in words and "ΓΥΝΑΙΚΑ" not in words          # Unicode lowercasing
  assert "Γ" in Vocab.load(workdir / wordchar.CHAR_VOCAB_FILE)
  out = train.predict(greek_config(folder, 2), workdir, "Ο άνθρωπος γράφει.")
  assert [p.rsplit("/", 1)[0] for p in out.split()] == ["Ο", "άνθρωπος", "γράφει", "."]
  assert all(p.rsplit("/", 1)[1] in conllu_data.UPOS for p in out.split())
  evaluated = train.evaluate_experiment(greek_config(folder, 2), workdir)
  assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])
  # More epochs on the same workdir resume from step 6 (like a longer num_steps).
  longer = train.run_experiment(greek_config(folder, 3), workdir)
  assert longer["steps"] == 9 and longer["epochs"] == 3
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 3, 4, 6, 8, 9]


def test_data_files_config_errors(tmp_path):
  config = load_config()
  config.data.test_file = str(tmp_path / "x-ud-test.conllu")
  with pytest.raises(ValueError, match=r"config\.data\.train_file=''"):
    pos.Task(config, tmp_path / "run")
  config = load_config()
  config.data.dev_fraction = 1.5
  with pytest.raises(ValueError, match=r"config\.data\.dev_fraction=1\.5"):
    pos.Task(config, tmp_path / "run")
  config = load_config()
  config.data.dir = str(tmp_path)
  with pytest.raises(conllu_data.DataError, match=r"no train file"):
    pos.Task(config, tmp_path / "run")


# Slow: the smoke config on the real files ----------------------------------------------------

@pytest.fixture(scope="module")
def cached_ewt():
  """Reads EWT once for this module (every Task would otherwise parse the files again)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(conllu_data, "read_conllu", functools.lru_cache(conllu_data.read_conllu))
    yield


@pytest.fixture(scope="module")
def smoke_run(cached_ewt, tmp_path_factory):
  config = load_config()
  assert config.train.batch_size % 8 == 0
  workdir = tmp_path_factory.mktemp("pos_smoke")
  results = train.run_experiment(config, workdir)
  return config, workdir, results


@pytest.mark.slow
def test_smoke_trains_end_to_end(smoke_run):
  config, workdir, results = smoke_run
  saved = json.loads((workdir / "results.json").read_text())
  # The token accuracy is the per-tag accuracies weighted by the tag counts.
  per_tag = sum(saved["test_per_tag_accuracy"][t] * n
                for t, n in saved["test_per_tag_count"].items())
  assert saved["test_accuracy"] == pytest.approx(per_tag / 25094)
  assert saved["steps"] == config.train.num_steps
  assert set(saved["test_per_tag_accuracy"]) <= set(conllu_data.UPOS)
  assert sum(saved["test_per_tag_count"].values()) == 25094   # every EWT test word
  assert 0 < saved["test_unseen_count"] < 25094
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert "eval_accuracy" in json.loads(lines[-1])


def test_word_dropout_only_in_training_batches(greek_task):
  config, task = greek_task
  undropped = task.batcher(0)["words"]
  train_words = task.train_batch(0)["words"]
  assert np.array_equal(train_words, task.train_batch(0)["words"])   # a function of step
  changed = train_words != undropped
  assert changed.any() and np.all(train_words[changed] == UNK)
  for split in task.eval_splits:
    batches = task.eval_batches(split)
    plain = [pos.batching.make_batch(task.examples[split], idx, config.data.eval_batch_size,
                                     **task.padding)
             for idx in pos.batching.eval_plan([len(ex.words) for ex in task.examples[split]],
                                               config.data.eval_batch_size)]
    assert len(batches) == len(plain)
    for a, b in zip(batches, plain):
      np.testing.assert_array_equal(a["words"], b["words"])


@pytest.mark.slow
def test_predict_gives_one_tag_per_word(smoke_run):
  config, workdir, _ = smoke_run
  text = "The quick brown fox can't jump over the lazy dog, said Mr. Smith."
  out = train.predict(config, workdir, text)
  pairs = out.split()
  assert [p.rsplit("/", 1)[0] for p in pairs] == wordchar.tokenize(
      text, lambda w: w.lower() in Vocab.load(workdir / wordchar.WORD_VOCAB_FILE))
  assert all(p.rsplit("/", 1)[1] in conllu_data.UPOS for p in pairs)


@pytest.mark.slow
def test_bilm_comparison_end_to_end(cached_ewt, tmp_path):
  """A biLM pretrained on The Time Machine feeds the tagger's three variants; every variant
  trains, is scored, and predict reads the biLM too."""
  bilm_config = config_lib.load_experiment(ROOT / "experiments" / "bilm_time_machine.py",
                                           "smoke")
  bilm_config.train.num_steps = 2
  train.run_experiment(bilm_config, tmp_path / "bilm")
  config = load_config("bilm,smoke")
  config.model.bilm_workdir = str(tmp_path / "bilm")
  config.data.train_sentences = 100
  summary = train.run_experiment(config, tmp_path / "pos")
  saved = json.loads((tmp_path / "pos" / "results.json").read_text())
  assert saved == summary
  for name in ("no_bilm", "context_free", "elmo"):
    own = json.loads((tmp_path / "pos" / name / "results.json").read_text())
    assert saved[name]["test_accuracy"] == own["test_accuracy"], name
  assert saved["elmo_gain"] == pytest.approx(
      saved["elmo"]["test_accuracy"] - saved["no_bilm"]["test_accuracy"])
  assert saved["elmo"]["num_params"] == saved["context_free"]["num_params"] + 2
  variants = pos.Task.variants(config)
  elmo = pos.Task(variants["elmo"], tmp_path / "pos" / "elmo",
                  restore_run=trained.restore_run)
  assert elmo.train_batch(0)["bilm"].shape[2] == bilm_config.model.num_layers + 1
  context_free = pos.Task(variants["context_free"], tmp_path / "pos" / "context_free",
                          restore_run=trained.restore_run)
  np.testing.assert_array_equal(context_free.eval_batches("dev")[0]["bilm"],
                                elmo.eval_batches("dev")[0]["bilm"][:, :, :1])
  assert "bilm" not in pos.Task(variants["no_bilm"], tmp_path / "x").train_batch(0)
  assert len(Vocab.load(tmp_path / "pos" / "elmo" / wordchar.WORD_VOCAB_FILE)) < 3000
  out = train.predict(config, tmp_path / "pos", "The light is on.")   # the elmo variant
  assert len(out.split()) == 5


def test_vocabularies_are_saved_and_reused(greek_task, tmp_path):
  config, task = greek_task
  words = Vocab.load(task.workdir / wordchar.WORD_VOCAB_FILE)
  chars = Vocab.load(task.workdir / wordchar.CHAR_VOCAB_FILE)
  assert words == task.word_vocab and chars == task.char_vocab
  assert "γυναικα" in words and "ΓΥΝΑΙΚΑ" not in words        # lowercased words (Unicode)
  assert "Γ" in chars and "γ" in chars                        # characters keep case
  train_words = {w.lower() for s in task.sentences["train"] for w, _ in s}
  assert set(words.tokens[2:]) == train_words                 # train only, min_freq 1
  # A workdir whose saved vocabulary the data no longer builds is refused, and left as it was.
  shuffled = Vocab(list(words.tokens[:2]) + list(reversed(words.tokens[2:])))
  shuffled.save(tmp_path / wordchar.WORD_VOCAB_FILE)
  with pytest.raises(errors.WorkdirMismatchError, match="vocab_words.json differs"):
    pos.Task(config, tmp_path)
  assert Vocab.load(tmp_path / wordchar.WORD_VOCAB_FILE) == shuffled


@pytest.mark.parametrize("low,helps", [(0.002, True), (-0.001, False)])
def test_compare_bilm_over_seeds_is_judged_by_the_paired_difference(low, helps):
  summary = {"seeds": [0, 1, 2], "elmo_helps": not helps, "paired_differences": {
      "elmo_minus_no_bilm": {"test_accuracy": {"mean": 0.01, "ci95": [low, 0.02]}}}}
  judged, verdict = pos.Task.judge_over_seeds(summary, "one seed said so.")
  assert judged["elmo_helps"] is helps
  assert verdict.startswith("ELMo features help" if helps else "No clear gain")
  assert "over 3 seeds" in verdict and verdict.endswith("means: one seed said so.")
  assert pos.Task.judge_over_seeds({"seeds": [0]}, "v") == ({"seeds": [0]}, "v")
