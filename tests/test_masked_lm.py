"""Tests for the masked-token fill-in task (birnn_jax/tasks/masked_lm.py) and its config."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import train
from birnn_jax.data import text
from birnn_jax.data.vocab import PAD, UNK, Vocab
from birnn_jax.tasks import common
from birnn_jax.tasks import masked_lm
from experiments import masked_time_machine

pytestmark = pytest.mark.usefixtures("fast_compile")


def smoke_config(**data):
  c = masked_time_machine.get_config("smoke")
  for k, v in data.items():
    c.data[k] = v
  return c


def variant(name, config=None):
  return masked_lm.Task.variants(config or smoke_config())[name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The bidirectional smoke variant trained for 2 steps: (task, params, workdir)."""
  workdir = tmp_path_factory.mktemp("masked") / "bidirectional"
  cfg = variant("bidirectional")
  cfg.train.num_steps = 2
  results = train.train_and_evaluate(cfg, workdir)
  # The accuracy is a count of correct blanks over the test targets: a whole number of them.
  correct = results["test_masked_accuracy"] * results["test_num_targets"]
  assert np.isfinite(results["test_loss"]) and correct == pytest.approx(round(correct), abs=1e-3)
  trainer, params = train.load_trained(cfg, workdir)
  return trainer.task, params, workdir


# ------------------------------------------------------------------------------------------------
# Data.


def test_training_masks_never_touch_padding(tmp_path):
  task = masked_lm.Task(smoke_config(min_length=2), tmp_path)
  for step in range(5):
    batch = task.train_batch(step)
    padding = np.arange(batch["tokens"].shape[1])[None, :] >= batch["lengths"][:, None]
    assert padding.any(), "the smoke config should produce padded rows"
    assert not (batch["mask"] & padding).any()
    assert (batch["tokens"][padding] == PAD).all()
    assert batch["mask"].sum(axis=1).min() >= 1   # every row has a target
    # Targets are never special tokens; corrupted inputs are only at targets.
    assert not np.isin(batch["targets"][batch["mask"]], task.special_ids).any()
    assert (batch["tokens"][~batch["mask"]] == batch["targets"][~batch["mask"]]).all()


def test_train_batches_are_a_function_of_step(tmp_path):
  a = masked_lm.Task(smoke_config(), tmp_path / "a")
  b = masked_lm.Task(smoke_config(), tmp_path / "b")
  for k in ("tokens", "lengths", "targets", "mask"):
    np.testing.assert_array_equal(a.train_batch(3)[k], b.train_batch(3)[k])
  assert not np.array_equal(a.train_batch(3)["mask"], a.train_batch(4)["mask"])


def test_eval_masks_are_fixed_and_shared_by_all_variants(tmp_path):
  tasks = {name: masked_lm.Task(cfg, tmp_path / name)
           for name, cfg in masked_lm.Task.variants(smoke_config(eval_copies=2)).items()}
  assert list(tasks) == ["bidirectional", "forward", "backward"]
  ref = tasks["bidirectional"].heldout
  for task in tasks.values():
    for split in ("valid", "test"):
      for k in ("tokens", "lengths", "targets", "mask"):
        np.testing.assert_array_equal(task.heldout[split][k], ref[split][k])
  test = ref["test"]
  # Every held-out target is a [MASK]; padding is never a target; the copies differ.
  assert (test["tokens"][test["mask"]] == tasks["forward"].mask_id).all()
  padding = np.arange(test["tokens"].shape[1])[None, :] >= test["lengths"][:, None]
  assert not (test["mask"] & padding).any()
  half = len(test["mask"]) // 2
  assert not np.array_equal(test["mask"][:half], test["mask"][half:])
  # The rows cover the whole test split once per copy.
  np.testing.assert_array_equal(test["targets"][:half][~padding[:half]],
                                tasks["forward"].corpus.test)


def test_vocab_is_saved_in_the_workdir(tmp_path):
  cfg = smoke_config()
  task = masked_lm.Task(cfg, tmp_path)
  path = common.time_machine_vocab_path(cfg, tmp_path)
  assert path.exists() and common.saved_vocab(path, len(task.vocab)) == task.vocab
  with pytest.raises(errors.WorkdirMismatchError, match="workdir mixes runs"):
    common.saved_vocab(path, len(task.vocab) + 1)
  # Another level in the same workdir gets its own file and never clobbers this one.
  char_cfg = smoke_config(level="char")
  masked_lm.Task(char_cfg, tmp_path)
  assert common.saved_vocab(path) == task.vocab
  assert common.time_machine_vocab_path(char_cfg, tmp_path) != path


def test_a_changed_saved_vocab_is_refused(tmp_path):
  cfg = smoke_config()
  task = masked_lm.Task(cfg, tmp_path)
  tokens = list(task.vocab.tokens)
  tokens[3], tokens[4] = tokens[4], tokens[3]
  Vocab(tokens, task.vocab.num_reserved).save(common.time_machine_vocab_path(cfg, tmp_path))
  with pytest.raises(errors.WorkdirMismatchError, match="differs from the vocabulary that"):
    masked_lm.Task(cfg, tmp_path)


@pytest.mark.parametrize("key,value", [("mask_rate", 0.0), ("min_length", 99),
                                       ("level", "byte"), ("eval_copies", 0)])
def test_invalid_config_names_the_key(tmp_path, key, value):
  with pytest.raises(ValueError, match=f"config.data.{key}="):
    masked_lm.Task(smoke_config(**{key: value}), tmp_path)


def test_reverse_needs_a_unidirectional_encoder(tmp_path):
  cfg = smoke_config()
  cfg.model.reverse = True
  with pytest.raises(ValueError, match="config.model.reverse="):
    masked_lm.Task(cfg, tmp_path)


# ------------------------------------------------------------------------------------------------
# Which context each variant reads.


@pytest.mark.parametrize("name,left,right", [("bidirectional", True, True),
                                             ("forward", True, False),
                                             ("backward", False, True)])
def test_each_variant_reads_its_side(tmp_path, name, left, right):
  task = masked_lm.Task(variant(name), tmp_path)
  model = task.model()
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, len(task.vocab), (2, 8)), jnp.int32)
  lengths = jnp.asarray([8, 6], jnp.int32)
  everywhere = jnp.tile(jnp.arange(8, dtype=jnp.int32), (2, 1))
  params = jax.jit(model.init)(jax.random.key(0), tokens, lengths, everywhere)["params"]
  apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens, lengths, everywhere))
  t = 3
  base = apply(tokens)[:, t]
  changed_left = not np.allclose(apply(tokens.at[:, t - 1].set(3))[:, t], base, atol=1e-6)
  changed_right = not np.allclose(apply(tokens.at[:, t + 1].set(3))[:, t], base, atol=1e-6)
  assert (changed_left, changed_right) == (left, right)
  # Padding never leaks in: changing row 1's padded tail changes nothing.
  np.testing.assert_allclose(apply(tokens.at[1, 6:].set(4)), apply(tokens), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Training and predict.


def test_fill_blanks_gives_top_k_per_blank(trained):
  task, params, _ = trained
  fillers = task.fill_blanks(params, "the time ___ was ___ to us")
  assert len(fillers) == 2
  for options in fillers:
    assert len(options) == task.config.predict.top_k
    probs = [p for _, p in options]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert all(tok not in ("<pad>", "<unk>", "<mask>") for tok, _ in options)
  out = task.predict(params, "the time ___ was ___ to us")
  assert "blank 1:" in out and "blank 2:" in out and "best: the time [" in out


def test_predict_reports_unknown_words(trained):
  task, params, _ = trained
  assert "unknown to the vocabulary" in task.predict(params, "the zzzq ___ time")


@pytest.mark.parametrize("sentence,message", [("the time traveller", "no blank"),
                                              ("zzzq ___ qqqz", "no known context")])
def test_predict_rejects_bad_sentences(trained, sentence, message):
  task, params, _ = trained
  with pytest.raises(ValueError, match=message):
    task.predict(params, sentence)


def test_predict_uses_the_saved_vocab(trained, tmp_path):
  _, params, workdir = trained
  assert common.time_machine_vocab_path(smoke_config(), workdir).exists()
  # Through train.predict (the first variant, bidirectional) from the experiment's workdir.
  out = train.predict(smoke_config(), workdir.parent, "the ___ machine")
  assert out.startswith("the ___ machine\n  best: the [")


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path):
  summary = train.run_experiment(smoke_config(), tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  for name in ("bidirectional", "forward", "backward"):
    assert set(saved[name]) >= {"masked_accuracy", "perplexity"}
    correct = saved[name]["masked_accuracy"] * saved[name]["num_targets"]
    assert correct == pytest.approx(round(correct), abs=1e-3) and saved[name]["perplexity"] > 1
    assert common.time_machine_vocab_path(smoke_config(), tmp_path / name).exists()
  assert saved["verdict_pass"] == summary["verdict_pass"]


# ------------------------------------------------------------------------------------------------
# Masking.

V, MASK = 50, 2
SPECIALS = (PAD, UNK, MASK)


def _random_batch(seed=0, b=512, t=128):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, V, size=(b, t))
  ids[rng.random((b, t)) < 0.05] = UNK  # sprinkled specials are never targets
  lengths = rng.integers(0, t + 1, size=b)
  lengths[:3] = [0, 1, t]
  ids[np.arange(t)[None, :] >= lengths[:, None]] = PAD
  return ids, lengths


def test_mask_tokens_statistics():
  ids, lengths = _random_batch()
  rate = 0.15
  inputs, targets, tmask = masked_lm.mask_tokens(ids, lengths, rate, np.random.default_rng(1),
                                            MASK, V, special_ids=(PAD, UNK))
  real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
  candidates = real & (ids != UNK)
  assert np.array_equal(targets, ids) and inputs.dtype == np.int32
  assert not np.any(tmask & ~candidates)  # never padding, never a special
  assert np.array_equal(inputs[~tmask], ids[~tmask])  # only targets change
  assert abs(tmask.sum() / candidates.sum() - rate) < 0.005
  per_row = tmask.sum(1)
  assert np.all((per_row >= 1) == (candidates.sum(1) >= 1))  # >= 1 target per non-empty row
  assert per_row[0] == 0
  n = tmask.sum()
  masked = (inputs == MASK) & tmask
  changed = (inputs != ids) & ~masked & tmask
  pool = V - len(SPECIALS)
  assert abs(masked.sum() / n - 0.8) < 0.02
  assert abs(changed.sum() / n - 0.1 * (1 - 1 / pool)) < 0.015
  assert abs((tmask & (inputs == ids)).sum() / n - (0.1 + 0.1 / pool)) < 0.015
  assert not np.isin(inputs[changed], SPECIALS).any()  # random tokens are never specials


def test_mask_tokens_deterministic_and_mask_forms_agree():
  ids, lengths = _random_batch(seed=5, b=64, t=40)
  real = np.arange(40)[None, :] < lengths[:, None]
  a = masked_lm.mask_tokens(ids, lengths, 0.2, np.random.default_rng(9), MASK, V, (PAD, UNK))
  b = masked_lm.mask_tokens(ids, real, 0.2, np.random.default_rng(9), MASK, V, (PAD, UNK))
  c = masked_lm.mask_tokens(ids, lengths, 0.2, np.random.default_rng(10), MASK, V, (PAD, UNK))
  for x, y in zip(a, b):
    assert np.array_equal(x, y)
  assert not np.array_equal(a[2], c[2])


def test_mask_tokens_edge_cases():
  ids = np.array([[5, 6, 7, 8, 9, 0, 0], [4, 0, 0, 0, 0, 0, 0], [0] * 7])
  lengths = np.array([5, 1, 0])
  rng = np.random.default_rng(0)
  _, _, none = masked_lm.mask_tokens(ids, lengths, 0.0, rng, MASK, V, (PAD,))
  assert not none.any()
  _, _, one = masked_lm.mask_tokens(ids, lengths, 0.01, rng, MASK, V, (PAD,))
  assert one.sum(1).tolist() == [1, 1, 0]
  inputs, _, every = masked_lm.mask_tokens(ids, lengths, 1.0, rng, MASK, V, (PAD,),
                                      probs=(1.0, 0.0, 0.0))
  assert np.array_equal(every, ids != 0) and np.all(inputs[every] == MASK)
  inputs, _, kept = masked_lm.mask_tokens(ids, lengths, 1.0, rng, MASK, V, (PAD,), probs=(0, 0, 1))
  assert kept.any() and np.array_equal(inputs, ids)
  _, _, all_real = masked_lm.mask_tokens(ids, None, 1.0, rng, MASK, V, ())
  assert all_real.all()  # valid=None: every position is real (PAD only excluded via specials)
  with pytest.raises(ValueError, match="rate"):
    masked_lm.mask_tokens(ids, lengths, 1.5, rng, MASK, V)
  with pytest.raises(ValueError, match="probs"):
    masked_lm.mask_tokens(ids, lengths, 0.5, rng, MASK, V, probs=(0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="lengths"):
    masked_lm.mask_tokens(ids, np.array([8, 1, 0]), 0.5, rng, MASK, V)


# ------------------------------------------------------------------------------------------------
# Blanks for `predict`.


@pytest.fixture(scope="module")
def small_vocabs():
  sample = "i am not hungry and the time traveller was very hungry indeed"
  return {level: text.build_vocab(text.tokenize(sample, level), specials=("<mask>",))
          for level in text.LEVELS}


def test_blank_sentence_word(small_vocabs):
  vocab = small_vocabs["word"]
  ids, positions = masked_lm.blank_sentence("I am ___ hungry!", vocab, level="word")
  assert positions.tolist() == [2]
  expected = [vocab.token_to_id("i"), vocab.token_to_id("am"), masked_lm.mask_id(vocab),
              vocab.token_to_id("hungry")]
  assert ids.tolist() == expected and UNK not in expected
  ids, positions = masked_lm.blank_sentence("___ time ___, Zork ___", vocab, level="word")
  assert positions.tolist() == [0, 2, 4] and ids[3] == UNK and np.all(ids[positions] == MASK)


def test_blank_sentence_char(small_vocabs):
  vocab = small_vocabs["char"]
  ids, positions = masked_lm.blank_sentence("  The ___ime!", vocab, level="char")
  assert text.decode(ids, vocab, "char") == "the <mask>ime" and positions.tolist() == [4]
  ids, positions = masked_lm.blank_sentence("h___ngr___", vocab, level="char")
  assert positions.tolist() == [1, 5]


def test_blank_sentence_errors(small_vocabs):
  vocab = small_vocabs["word"]
  with pytest.raises(ValueError, match="no blank"):
    masked_lm.blank_sentence("I am hungry", vocab, level="word")
  with pytest.raises(ValueError, match="no known context"):
    masked_lm.blank_sentence("Xyzzy ___ plugh", vocab, level="word")
  with pytest.raises(ValueError, match="no known context"):
    masked_lm.blank_sentence(" ___ ", vocab, level="word")
  with pytest.raises(ValueError, match="no known context"):  # a char vocab read as words
    masked_lm.blank_sentence("am ___ hungry", small_vocabs["char"], level="word")
  with pytest.raises(ValueError, match="<mask>"):
    masked_lm.blank_sentence("I am ___", text.build_vocab(["i", "am"], specials=()), level="word")


def test_a_file_of_blanked_sentences_gives_the_fillers_as_json_lines(trained, tmp_path):
  import birnn_jax  # pylint: disable=g-import-not-at-top
  task, params, workdir = trained
  model = birnn_jax.load(workdir)
  assert model.task.inference
  (tmp_path / "in.txt").write_text("the ___ machine\ni am ___ hungry\n", encoding="utf-8")
  model.predict_file(tmp_path / "in.txt", tmp_path / "out.jsonl")
  rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["line"] for r in rows] == [1, 2]
  for row, sentence in zip(rows, ("the ___ machine", "i am ___ hungry")):
    want = task.fill_blanks(params, sentence)
    assert [[t for t, _ in blank] for blank in row["fillers"]] == [
        [t for t, _ in blank] for blank in want]
    assert row["best"].split()[0] == sentence.split()[0]
  (tmp_path / "bad.txt").write_text("no blank here\n", encoding="utf-8")
  with pytest.raises(errors.DataError, match=r"bad.txt:1: "):
    model.predict_file(tmp_path / "bad.txt", tmp_path / "bad.jsonl")


@pytest.mark.parametrize("low,passes", [(0.01, True), (-0.01, False)])
def test_over_seeds_the_verdict_is_the_paired_difference(low, passes):
  """With several seeds, PASS needs the paired interval of bidirectional minus the better
  one-directional model above 0 (and perplexity's below 0), whatever the one-seed test said
  of the means; the one-seed sentence is kept after it."""
  stats = lambda mean, lo, hi: {"mean": mean, "sd": 0.01, "ci95": [lo, hi]}
  summary = {"bidirectional": {"masked_accuracy": 0.20}, "forward": {"masked_accuracy": 0.13},
             "backward": {"masked_accuracy": 0.16}, "seeds": [0, 1, 2],
             "paired_differences": {
                 "bidirectional_minus_backward": {
                     "test_masked_accuracy": stats(0.04, low, 0.07),
                     "test_perplexity": stats(-90.0, -100.0, -80.0)},
                 "bidirectional_minus_forward": {
                     "test_masked_accuracy": stats(0.07, 0.06, 0.08),
                     "test_perplexity": stats(-90.0, -100.0, -80.0)}}}
  judged, verdict = masked_lm.Task.judge_over_seeds(summary, "VERDICT: FAIL - one seed")
  assert judged["verdict_pass"] is passes
  assert verdict.startswith(f"VERDICT: {'PASS' if passes else 'FAIL'} over 3 seeds - "
                            "bidirectional minus backward-only")
  assert verdict.endswith("One-seed test on the means: FAIL - one seed")
