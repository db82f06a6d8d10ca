"""NER with a BiLSTM-CRF on UNER (birnn_jax/tasks/ner.py, experiments/ner_uner.py).

Fast tests (the entity counts and scores: tests/test_entities.py): the model's heads and
casing feature; config errors; the experiment's summary; a tiny UNER folder trained end to end (any folder of UNER files).
Slow: the :smoke config on the bundled Danish-DDT, all three variants, then predict.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqeval.metrics import sequence_labeling

from birnn_jax.training import config_lib
from birnn_jax import crf as crf_lib
from birnn_jax.training import train
from birnn_jax.data.vocab import Vocab
from birnn_jax.tasks import entities
from birnn_jax.tasks import ner
from helpers import write_uner
from birnn_jax.tasks import wordchar

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = pathlib.Path(__file__).resolve().parents[1]
LABELS = entities.LABELS


def load_config(arg="smoke"):
  return config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", arg)


# The scorers -----------------------------------------------------------------------------------

def tiny_inputs(batch=3, steps=8, chars=5, num_words=30, num_chars=20):
  rng = np.random.default_rng(2)
  lengths = np.array([8, 5, 1][:batch], np.int32)
  mask = np.arange(steps)[None, :] < lengths[:, None]
  words = np.where(mask, rng.integers(2, num_words, (batch, steps)), 0).astype(np.int32)
  char_ids = (rng.integers(1, num_chars, (batch, steps, chars)) * mask[..., None])
  tags = np.where(mask, rng.integers(0, len(LABELS), (batch, steps)), 0).astype(np.int32)
  return dict(words=words, chars=char_ids.astype(np.int32), lengths=lengths, mask=mask,
              tags=tags)


@pytest.mark.parametrize("head, scheme", [("crf", "iob2"), ("softmax", "iob2"),
                                          ("crf", "iobes"), ("softmax", "iobes")])
def test_heads_loss_and_predictions(head, scheme, random_variables):
  """Either head in either tag scheme: the loss of the scheme's tags, and predictions as
  IOB2 ids (valid IOB2 from the CRF's constrained Viterbi)."""
  config = load_config()
  config.model.head = head
  config.model.tag_scheme = scheme
  labels = entities.scheme_labels(scheme)
  # Character classes for the casing feature: PAD, UNK, then lower / upper / digit.
  classes = (0, 4) + (1, 2, 3) * 6
  model = ner.model_from_config(config.model, num_words=30, num_chars=20, classes=classes)
  b = tiny_inputs()
  inputs = (b["words"], b["chars"], None, b["lengths"])
  variables = random_variables(model, *inputs, scale=1.0)
  out = jax.jit(model.apply)(variables, *inputs)
  assert out["emissions"].shape == (3, 8, len(labels))
  pred = np.asarray(out["predicted"])
  assert np.all(pred[~b["mask"]] == 0)
  sums = ner.loss_sums(out, b, head)
  assert float(sums["count"]) == 14
  if head == "crf":
    assert set(variables["params"]["crf"]) == {"transitions", "start", "end"}
    want = -crf_lib.log_likelihood(out["emissions"], b["tags"], b["lengths"],
                                   *(variables["params"]["crf"][k]
                                     for k in ("transitions", "start", "end"))).sum()
    assert all(crf_lib.is_valid_bio([LABELS[t] for t in row[:n]])
               for row, n in zip(pred, b["lengths"]))
  else:
    log_p = jax.nn.log_softmax(out["emissions"])
    want = -jnp.sum(jnp.take_along_axis(log_p, b["tags"][..., None], -1)[..., 0] * b["mask"])
    np.testing.assert_array_equal(
        pred[b["mask"]], entities.iob2_ids(labels)[np.argmax(out["emissions"], -1)][b["mask"]])
  np.testing.assert_allclose(sums["loss"], want, rtol=1e-5)
  train_out = jax.eval_shape(functools.partial(model.apply, deterministic=False),
                             variables, *inputs, rngs={"dropout": jax.random.key(0)})
  assert "predicted" not in train_out   # no decoding in the training step


@pytest.mark.parametrize("form, want", [
    ("hos", "lower"), ("København", "initial_cap"), ("NATO", "all_caps"), ("A", "all_caps"),
    ("McDonald", "mixed"), ("iPhone", "mixed"), ("1998", "numeric"), ("3.", "has_digit"),
    ("B52", "has_digit"), (".", "punct"), ("»", "punct"), ("Novo-Nordisk", "mixed"),
    ("tv-kanal", "lower"), ("", "pad")])
def test_casing_classes(form, want):
  assert ner.casing(form) == want


def test_casing_feature_in_the_model():
  """model.casing_embed_size > 0 (the default) embeds each word's casing class, computed in
  the graph from its character ids (also from wordchar.dedup_chars rows, tiers included); 0 is
  the model without it."""
  forms = [["Anne", "bor", "i", "AARHUS", "1998", "."], ["McDonald", "3.", "hos"]]
  chars = Vocab.build(w for s in forms for w in s)
  words = np.array([[2 + i for i in range(6)] + [0, 0], [2, 3, 4] + [0] * 5], np.int32)
  char_ids = np.zeros((2, 8, 8), np.int32)
  for b, sentence in enumerate(forms):
    for t, w in enumerate(sentence):
      char_ids[b, t, :len(w)] = chars.encode(w)
  lengths = np.array([6, 3], np.int32)
  classes = ner.char_classes(chars)
  want = [[ner.CASINGS.index(ner.casing(w)) for w in s] + [0] * (8 - len(s)) for s in forms]
  got = ner.casing_of_classes(jnp.asarray(classes)[char_ids])
  np.testing.assert_array_equal(got, want)

  config = load_config()
  config.model.casing_embed_size = 0
  plain = ner.model_from_config(config.model, 10, len(chars))
  plain_params = jax.eval_shape(plain.init, jax.random.key(0), words, char_ids, None,
                                lengths)["params"]
  assert "casing" not in plain_params
  config.model.casing_embed_size = 4
  with pytest.raises(ValueError, match="casing needs the class of each"):
    ner.model_from_config(config.model, 10, len(chars))
  model = ner.model_from_config(config.model, 10, len(chars), classes)
  variables = jax.jit(model.init)(jax.random.key(0), words, char_ids, None, lengths)
  assert variables["params"]["casing"]["embedding"].shape == (len(ner.CASINGS), 4)
  apply = jax.jit(lambda v, chars, index: model.apply(v, words, chars, index, lengths))
  out = apply(variables, char_ids, None)["emissions"]
  batch = wordchar.dedup_chars({"words": words, "chars": char_ids, "lengths": lengths})
  assert isinstance(batch["chars"], tuple)      # the tiers of 8, 4 and 2 characters
  dedup = apply(variables, batch["chars"], batch["char_index"])["emissions"]
  np.testing.assert_allclose(dedup, out, rtol=1e-5, atol=1e-6)
  # The casing embedding is read: changing the "initial_cap" row changes Anne's scores.
  changed = jax.tree.map(lambda x: x, variables)
  changed["params"]["casing"]["embedding"] = changed["params"]["casing"]["embedding"].at[
      ner.CASINGS.index("initial_cap")].add(1.0)
  moved = apply(changed, char_ids, None)["emissions"]
  assert not np.allclose(moved[0, 0], out[0, 0])


# Config and experiment -----------------------------------------------------------------------

def test_config_args_and_errors(tmp_path):
  assert load_config(None).compare_variants and load_config().task == "ner"
  with pytest.raises(ValueError, match="unknown config arg 'big'"):
    load_config("big")
  for key, value, match in [("model.head", "hmm", r"config\.model\.head='hmm'"),
                            ("model.word_dropout", 1.0, r"config\.model\.word_dropout=1\.0"),
                            ("model.tag_scheme", "bilou",
                             r"config\.model\.tag_scheme='bilou'"),
                            ("data.pad_to", 0, r"config\.data\.pad_to=0")]:
    config = load_config()
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ValueError, match=match):
      ner.Task(config, tmp_path / "run")


def test_variants_and_summary():
  config = load_config()
  variants = ner.Task.variants(config)
  assert list(variants) == ["crf", "softmax", "crf_forward"]
  assert [(v.model.head, v.model.bidirectional, v.compare_variants)
          for v in variants.values()] == [("crf", True, False), ("softmax", True, False),
                                          ("crf", False, False)]
  config.compare_variants = False
  assert list(ner.Task.variants(config)) == [""]

  def fake(f1, invalid):
    return {"test_f1": f1, "dev_f1": f1 + 0.01, "test_f1_strict": f1 - 0.01,
            "dev_f1_strict": f1, "test_precision": f1, "test_recall": f1,
            "test_per_type_f1": {"PER": f1}, "test_invalid_rate": invalid / 565,
            "test_invalid_sequences": invalid, "dev_invalid_rate": 0.0,
            "train_seconds": 1.0, "steps": 10, "num_params": 5}

  summary, verdict = ner.Task.summarize(
      load_config(), {"crf": fake(0.78, 0), "softmax": fake(0.75, 12),
                      "crf_forward": fake(0.60, 0)})
  assert summary["comparison"]["crf_minus_softmax_test_f1"] == pytest.approx(0.03)
  assert summary["comparison"]["bidirectional_minus_forward_test_f1"] == pytest.approx(0.18)
  assert all(summary["targets_met"].values()) and verdict.startswith("All targets met")
  summary, verdict = ner.Task.summarize(
      load_config(), {"crf": fake(0.70, 0), "softmax": fake(0.695, 3),
                      "crf_forward": fake(0.65, 0)})
  assert verdict.startswith("Targets missed: crf_test_f1_at_least_75, crf_beats_softmax_by_1, "
                            "bidirectional_beats_forward_by_10.")


# End to end on a tiny UNER folder -------------------------------------------------------------



def test_iobes_task_trains_on_iobes_and_scores_iob2(tmp_path):
  """model.tag_scheme='iobes': the batches' tags are IOBES ids; the eval metrics map them
  back to IOB2, so a prediction equal to the gold IOB2 ids scores F1 1."""
  config = load_config()
  config.compare_variants = False
  config.model.tag_scheme = "iobes"
  config.data.dir = str(write_uner(tmp_path / "UNER_Tiny"))
  task = ner.Task(config, tmp_path / "run")
  assert task.labels == entities.IOBES_LABELS
  sentence = task.sentences["train"][0]
  assert [entities.IOBES_LABELS[t] for t in task.examples["train"][0].tags] == entities.to_iobes(
      [t for _, t in sentence])
  batch = task.eval_batches("dev")[0]
  gold_iob2 = entities.iob2_ids(entities.IOBES_LABELS)[batch["tags"]]
  sums = jax.jit(task.metric_sums)({"predicted": gold_iob2, "emissions": jnp.zeros(
      batch["tags"].shape + (len(entities.IOBES_LABELS),)), "transitions": jnp.zeros((13, 13)),
      "start": jnp.zeros(13), "end": jnp.zeros(13)}, batch)
  want = sum(len(sequence_labeling.get_entities([t for _, t in s]))
             for s in task.sentences["dev"])
  assert float(sums["entities_gold"]) == float(sums["entities_correct"]) == want
  assert float(sums["accuracy"]) == float(sums["count"])


@pytest.mark.usefixtures("compile_cache")
def test_any_uner_folder_trains_evaluates_and_predicts(tmp_path):
  config = load_config()
  config.compare_variants = False
  config.data.dir = str(write_uner(tmp_path / "UNER_Tiny"))
  config.data.pad_to = 8
  config.data.eval_batch_size = 24
  config.train.num_steps = 3
  config.train.eval_every = config.train.checkpoint_every = 3
  workdir = tmp_path / "run"
  results = train.run_experiment(config, workdir)
  assert results["sentences"] == {"train": 24, "dev": 24, "test": 24}
  assert results["data_sources"]["dev"].endswith("xx_tiny-ud-dev.iob2.xz")
  for key in ("dev_f1", "test_f1", "test_f1_strict", "test_precision", "test_recall"):
    assert 0.0 <= results[key] <= 1.0, key
  assert results["test_per_type_support"] == {"LOC": 16, "ORG": 16, "PER": 8}
  assert results["test_invalid_sequences"] == 0          # constrained Viterbi
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["test_f1"] == results["test_f1"]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"eval_f1", "eval_precision", "eval_recall", "eval_invalid_rate"} <= set(rows[-1])
  # The in-graph dev F1 (gold tags mapped back to IOB2 ids) is seqeval's on the IOB2 labels.
  assert rows[-1]["eval_f1"] == pytest.approx(results["dev_f1"], abs=1e-6)
  out = train.predict(config, workdir, "Anne Hansen bor i Odense.")
  lines = out.splitlines()
  assert lines[0].replace("[", "").replace("]PER", "").replace("]ORG", "").replace(
      "]LOC", "").split() == ["Anne", "Hansen", "bor", "i", "Odense", "."]
  assert all(line.split(":")[0] in ("PER", "ORG", "LOC") for line in lines[1:]) or (
      lines[1:] == ["(no entities found)"])


# Slow: the :smoke config on the bundled corpus -----------------------------------------------

@pytest.mark.slow
def test_smoke_trains_all_variants_and_predicts(tmp_path):
  config = load_config()
  workdir = tmp_path / "ner"
  summary = train.run_experiment(config, workdir)
  assert set(summary) == {"crf", "softmax", "crf_forward", "comparison", "targets_met"}
  for name in ("crf", "softmax", "crf_forward"):
    saved = json.loads((workdir / name / "results.json").read_text())
    for key in ("dev_f1", "test_f1", "test_f1_strict"):
      assert 0.0 <= saved[key] <= 1.0
    assert set(saved["test_per_type_f1"]) == {"PER", "ORG", "LOC"}
    assert saved["sentences"] == {"train": 4383, "dev": 564, "test": 565}
  assert summary["crf"]["test_invalid_sequences"] == 0
  assert summary["crf_forward"]["test_invalid_sequences"] == 0
  assert summary["targets_met"]["constrained_decoding_never_invalid"]
  assert json.loads((workdir / "results.json").read_text())["comparison"] == pytest.approx(
      summary["comparison"])
  out = train.predict(config, workdir, "Mette Frederiksen besøgte Aarhus Universitet.")
  assert out.splitlines()[0].count(" ") >= 4
