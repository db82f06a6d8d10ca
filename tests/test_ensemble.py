"""Seed ensembles (birnn_jax/training/ensemble.py): the members of a run as one model. Their
combination is checked against oracles computed member by member in numpy (the mean of the
softmax probabilities; for the CRF the averaged scores decoded by enumerating every valid
IOB2 sequence), and a trained run's ensemble predicts, evaluates and exports the same way
from Python, its results.json and its exported artifact."""

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import birnn_jax
from birnn_jax import crf
from birnn_jax import errors
from birnn_jax.linen import BiRNN
from birnn_jax.tasks import entities
from birnn_jax.tasks import losses
from birnn_jax.tasks import models
from birnn_jax.tasks import ner
from birnn_jax.training import config_lib
from birnn_jax.training import ensemble
from birnn_jax.training import export
from birnn_jax.training import export_runtime
from birnn_jax.training import members
from birnn_jax.training import train
from helpers import tiny_run, write_greek_treebank, write_uner

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _tagger_and_members(num_members: int):
  model = models.Tagger(vocab_size=11, embed_size=4, num_tags=5,
                        encoder=BiRNN(hidden_size=3, cell="lstm"))
  tokens = jax.random.randint(jax.random.key(0), (2, 6), 1, 11)
  lengths = jnp.array([6, 3])
  params = [model.init(jax.random.key(k), tokens, lengths)["params"]
            for k in range(num_members)]
  return model, params, tokens, lengths


def test_an_ensemble_of_softmax_members_averages_their_probabilities():
  model, params, tokens, lengths = _tagger_and_members(3)
  ens = ensemble.Ensemble(model, lambda outputs, inputs: losses.mean_log_probabilities(outputs))
  got = ens.apply({"params": members.stack(params)}, tokens, lengths)
  per_member = [_softmax(np.asarray(model.apply({"params": p}, tokens, lengths)))
                for p in params]
  np.testing.assert_allclose(np.exp(got), np.mean(per_member, axis=0), rtol=1e-5, atol=1e-7)
  assert not np.allclose(per_member[0], per_member[1])   # the members really differ
  with pytest.raises(ValueError, match="only predicts"):
    ens.apply({"params": members.stack(params)}, tokens, lengths, deterministic=False)


def test_an_ensemble_of_one_model_twice_is_that_model():
  model, params, tokens, lengths = _tagger_and_members(1)
  ens = ensemble.Ensemble(model, lambda outputs, inputs: losses.mean_log_probabilities(outputs))
  got = ens.apply({"params": members.stack(params * 2)}, tokens, lengths)
  want = jax.nn.log_softmax(model.apply({"params": params[0]}, tokens, lengths))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _best_valid_iob2(emissions_TxK, transitions, start, end, labels):
  """The highest-scoring valid IOB2 sequence, by enumerating all of them (the oracle)."""
  best, best_score = None, -np.inf
  for seq in itertools.product(range(len(labels)), repeat=len(emissions_TxK)):
    if not crf.is_valid_bio([labels[t] for t in seq]):
      continue
    score = start[seq[0]] + end[seq[-1]] + sum(emissions_TxK[t, y] for t, y in enumerate(seq))
    score += sum(transitions[a, b] for a, b in zip(seq, seq[1:]))
    if score > best_score:
      best, best_score = seq, score
  return list(best)


@pytest.mark.parametrize("head", ["crf", "softmax"])
def test_ner_ensembles_average_scores_then_decode_valid_iob2(head):
  labels = entities.LABELS
  k, rng = len(labels), np.random.default_rng(0)
  n, b, t = 3, 2, 4
  outputs = {"emissions": rng.normal(size=(n, b, t, k)).astype(np.float32),
             "transitions": rng.normal(size=(n, k, k)).astype(np.float32),
             "start": rng.normal(size=(n, k)).astype(np.float32),
             "end": rng.normal(size=(n, k)).astype(np.float32)}
  lengths = np.array([4, 2], np.int32)
  got = ner.ensemble_outputs({k_: jnp.asarray(v) for k_, v in outputs.items()},
                             jnp.asarray(lengths), labels, head, "iob2")
  mean = {k_: v.mean(0) for k_, v in outputs.items()}
  for row, length in enumerate(lengths):
    if head == "crf":
      want = _best_valid_iob2(mean["emissions"][row, :length], mean["transitions"],
                              mean["start"], mean["end"], labels)
    else:
      probs = np.mean([_softmax(e[row, :length]) for e in outputs["emissions"]], axis=0)
      want = list(np.argmax(probs, -1))
    assert list(np.asarray(got["predicted"][row, :length])) == want
    assert np.all(np.asarray(got["predicted"][row, length:]) == 0)   # padding
  if head == "crf":
    np.testing.assert_allclose(got["transitions"], mean["transitions"], rtol=1e-6)
    np.testing.assert_allclose(got["emissions"], mean["emissions"], rtol=1e-6)


# A trained run of several members ----------------------------------------------------------------

NUM_MEMBERS = 2


def _members_run(tmp_path_factory, experiment, folder, **keys):
  return tiny_run(tmp_path_factory, experiment, folder, hide_data=False,
                  num_seeds=NUM_MEMBERS, **keys)


@pytest.fixture(scope="module")
def pos_members(tmp_path_factory):
  folder = write_greek_treebank(tmp_path_factory.mktemp("data") / "UD_Greek")
  (folder / "el_tiny-ud-dev.conllu.xz").write_bytes(
      (folder / "el_tiny-ud-test.conllu.xz").read_bytes())
  return _members_run(tmp_path_factory, "pos_ewt.py", folder, num_steps=4) + (folder,)


@pytest.fixture(scope="module")
def ner_members(tmp_path_factory):
  folder = write_uner(tmp_path_factory.mktemp("data") / "UNER_Tiny")
  return _members_run(tmp_path_factory, "ner_uner.py", folder, num_steps=6) + (folder,)


def _member_outputs(workdir, sentences):
  """Each member's raw outputs on one batch of `sentences`, and the batch's lengths."""
  outs = []
  for k in range(NUM_MEMBERS):
    member = birnn_jax.load(workdir, member=k)
    (idx, batch), = member.task.prediction_batches(sentences, len(sentences))
    outs.append(jax.device_get(member.task.model().apply(
        {"params": member.params}, *member.task.model_inputs(batch), deterministic=True)))
  return idx, outs


SENTENCES = [["Ο", "άνθρωπος", "γράφει", "."], ["Η", "ΓΥΝΑΙΚΑ", "τρέχει", "γρήγορα", "."],
             ["γράφει"]]


def test_a_pos_run_predicts_as_its_ensemble_by_default(pos_members, tmp_path):
  config, workdir, folder = pos_members
  model = birnn_jax.load(workdir)
  assert model.member == "ensemble"
  assert jax.tree.leaves(model.params)[0].shape[0] == NUM_MEMBERS
  idx, outs = _member_outputs(workdir, SENTENCES)
  probs = np.mean([_softmax(o) for o in outs], axis=0)
  want = [None] * len(SENTENCES)
  for row, i in enumerate(idx):
    want[i] = [model.task.label_names[t] for t in np.argmax(probs[row], -1)[:len(SENTENCES[i])]]
  assert model.tag(SENTENCES) == want
  assert birnn_jax.load(workdir, member="ensemble").tag(SENTENCES) == want

  # results.json: the ensemble's figures beside the members', from the eval step; the same
  # accuracy as tagging the test file with the ensemble.
  results = json.loads((workdir / "results.json").read_text())
  assert results["ensemble"]["seeds"] == results["seeds"] == [config.seed, config.seed + 1]
  scored = model.evaluate_file(folder / "el_tiny-ud-test.conllu.xz")
  assert results["ensemble"]["test_accuracy"] == pytest.approx(scored["accuracy"])
  assert "test_per_tag_accuracy" in results["ensemble"]


def test_a_ner_run_decodes_the_ensemble_s_averaged_crf_scores(ner_members, tmp_path):
  config, workdir, folder = ner_members
  sentences = [[w for w, _ in s] for s in
               [[("Anne", 0), ("Hansen", 0), ("bor", 0)], [("Mærsk", 0), (".", 0)]]]
  model = birnn_jax.load(workdir, member="ensemble")
  idx, outs = _member_outputs(workdir, sentences)
  mean = {k: np.mean([o[k] for o in outs], axis=0)
          for k in ("emissions", "transitions", "start", "end")}
  labels = model.task.labels
  want = [None] * len(sentences)
  for row, i in enumerate(idx):
    want[i] = [labels[t] for t in _best_valid_iob2(
        mean["emissions"][row, :len(sentences[i])], mean["transitions"], mean["start"],
        mean["end"], labels)]
  assert model.tag(sentences) == want
  # The scores it decoded: the members' mean (and the members differ).
  (_, batch), = model.task.prediction_batches(sentences, len(sentences))
  got = model.task.model().apply({"params": model.params}, *model.task.model_inputs(batch))
  for key, value in mean.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  assert not np.allclose(outs[0]["emissions"], outs[1]["emissions"])

  results = json.loads((workdir / "results.json").read_text())
  scored = model.evaluate_file(folder / "xx_tiny-ud-test.iob2")
  assert results["ensemble"]["test_f1"] == pytest.approx(scored["f1"])
  assert results["ensemble"]["test_invalid_sequences"] == 0
  # The run's table: the ensemble's column beside the members' statistics.
  assert "| ensemble |" in members.statistics_table(results).splitlines()[0] + " |"

  # The export holds the ensemble: the artifact tags as the ensemble does.
  meta = export.export_tagger(model, tmp_path / "exported")
  assert meta["member"] == "ensemble" and meta["seeds"] == results["seeds"]
  assert export_runtime.ExportedTagger(tmp_path / "exported").tag(sentences) == want
  one = export.export_tagger(birnn_jax.load(workdir, member=1), tmp_path / "one")
  assert one["member"] == 1 and one["seeds"] == [config.seed + 1]


def test_members_are_named_or_refused_clearly(ner_members):
  _, workdir, _ = ner_members
  with pytest.raises(errors.InputError, match=r"member=7.*0\.\.1.*'best' or 'ensemble'"):
    birnn_jax.load(workdir, member=7)
  assert birnn_jax.load(workdir, member=0).member == 0


def test_eval_of_a_run_of_members_scores_their_ensemble_too(ner_members):
  _, workdir, _ = ner_members
  scores = train.evaluate_experiment(None, workdir)
  results = json.loads((workdir / "results.json").read_text())
  assert scores["ensemble"]["test_f1"] == pytest.approx(results["ensemble"]["test_f1"])
  assert len(scores["members"]) == NUM_MEMBERS


def test_a_language_model_s_members_are_named_one_by_one(tmp_path_factory):
  """A run of the LM task has no ensemble (its members generate text): loading it needs a
  member, and one member predicts as the one-seed run does."""
  config = config_lib.load_experiment(ROOT / "experiments" / "lm_time_machine.py", "smoke")
  variants = train.variant_dirs(config, "x")
  config = next(iter(variants.values()))[0]   # one model: the first variant
  config.train.num_seeds = NUM_MEMBERS
  workdir = tmp_path_factory.mktemp("lm_members")
  train.run_experiment(config, workdir)
  assert "ensemble" not in json.loads((workdir / "results.json").read_text())
  with pytest.raises(errors.InputError, match=r"do not predict as an ensemble.*--member= 0\.\.1"):
    birnn_jax.load(workdir)
  assert birnn_jax.load(workdir, member=1).member == 1


def test_the_command_line_predicts_with_the_member_it_is_told(ner_members, subprocess_env):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  _, workdir, _ = ner_members
  text = "Anne Hansen bor i Odense ."
  for member in ("ensemble", "1"):
    proc = subprocess.run([sys.executable, "launch.py", f"--workdir={workdir}",
                           "--mode=predict", f"--member={member}", f"--text={text}"],
                          cwd=ROOT, env=subprocess_env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = birnn_jax.load(workdir, member=member).predict(text)
    assert proc.stdout.strip() == want.strip()
    assert ("predicting with the ensemble of its 2 members" if member == "ensemble" else
            "predicting with member 1 (seed 1) of 2") in proc.stderr
