"""The synthetic tagging task: the generator follows its rule, the left-context ceiling is
what the Bayes-optimal left-to-right tagger really scores, the task's batching and verdict
are right, and (slow) the full experiment shows bidirectional > ceiling >= forward-only."""

import pathlib

import numpy as np
import pytest

from birnn_jax.training import config_lib
from birnn_jax.training import train
from birnn_jax.data.synthetic import SyntheticTagging
from birnn_jax.tasks import synthetic as synthetic_task

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
  return config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", arg)


GEN = SyntheticTagging(vocab_size=24, num_classes=3, num_ambiguous=6, min_length=6,
                       max_length=20)


def expected_tag(words, t, gen=GEN):
  """The documented rule, written out position by position."""
  c = gen.num_classes
  w = words[t]
  if w >= gen.num_ambiguous:
    return w % c
  if t == len(words) - 1:
    return 2 * c
  return c + words[t + 1] % c


def test_tags_follow_the_rule():
  batch = GEN.batch(np.random.default_rng(0), 200)
  seen_end = seen_next = 0
  for b, n in enumerate(batch["lengths"]):
    words = batch["tokens"][b, :n] - 1
    assert np.all((0 <= words) & (words < GEN.vocab_size))
    for t in range(n):
      assert batch["tags"][b, t] == expected_tag(words, t), (b, t, words)
    ambiguous = words < GEN.num_ambiguous
    seen_end += bool(ambiguous[-1])
    seen_next += int(ambiguous[:-1].sum())
  assert seen_end > 0 and seen_next > 0  # both ambiguous cases were exercised


def test_batch_layout():
  batch = GEN.batch(np.random.default_rng(1), 64)
  B, T = 64, GEN.max_length
  assert batch["tokens"].shape == batch["tags"].shape == batch["mask"].shape == (B, T)
  assert batch["tokens"].dtype == batch["tags"].dtype == batch["lengths"].dtype == np.int32
  assert batch["mask"].dtype == bool
  lengths = batch["lengths"]
  assert lengths.min() >= GEN.min_length and lengths.max() <= GEN.max_length
  np.testing.assert_array_equal(batch["mask"], np.arange(T)[None] < lengths[:, None])
  assert np.all(batch["tokens"][~batch["mask"]] == 0)   # 0 = padding id
  assert np.all(batch["tokens"][batch["mask"]] >= 1)
  assert np.all(batch["tags"][~batch["mask"]] == 0)
  assert batch["tags"].max() < GEN.num_tags and GEN.num_ids == GEN.vocab_size + 1
  again = GEN.batch(np.random.default_rng(1), 64)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])


def test_hazard_of_the_uniform_length():
  lengths = np.arange(GEN.min_length, GEN.max_length + 1)
  for t in range(GEN.max_length):
    alive = lengths > t
    want = np.mean(lengths[alive] == t + 1)
    assert GEN.hazard(t) == pytest.approx(want), t


def sample(rng, n, gen=GEN):
  """`gen.batch` vectorised (same distribution, fast enough for 10^5 sentences)."""
  T, c = gen.max_length, gen.num_classes
  lengths = rng.integers(gen.min_length, T + 1, size=n)
  mask = np.arange(T)[None] < lengths[:, None]
  words = rng.integers(0, gen.vocab_size, size=(n, T))
  next_tag = np.concatenate([c + words[:, 1:] % c, np.full((n, 1), 2 * c)], axis=1)
  next_tag[np.arange(T)[None] == lengths[:, None] - 1] = 2 * c
  tags = np.where(words < gen.num_ambiguous, next_tag, words % c)
  return {"tokens": np.where(mask, words + 1, 0), "tags": np.where(mask, tags, 0),
          "lengths": lengths, "mask": mask}


def test_vectorised_sample_follows_the_same_rule():
  batch = sample(np.random.default_rng(5), 300)
  for b, n in enumerate(batch["lengths"]):
    np.testing.assert_array_equal(batch["tags"][b, :n], GEN.tags(batch["tokens"][b, :n] - 1))


def test_left_context_ceiling_matches_the_bayes_optimal_tagger():
  """Monte Carlo: learn the best left-context guess for ambiguous words from one sample
  (the most frequent tag given the position and the word, i.e. the argmax posterior; the
  prefix tells nothing more since words are i.i.d. and independent of the length), score it
  on a fresh sample, and compare with left_context_ceiling on that sample. 2*10^5 test
  sentences make the standard error ~1.4e-4, small enough to see an off-by-one hazard."""
  fit = sample(np.random.default_rng(10), 50_000)
  counts = np.zeros((GEN.max_length, GEN.num_ambiguous, GEN.num_tags))
  words = fit["tokens"] - 1
  amb = fit["mask"] & (words < GEN.num_ambiguous)
  t_idx = np.broadcast_to(np.arange(GEN.max_length), words.shape)
  np.add.at(counts, (t_idx[amb], words[amb], fit["tags"][amb]), 1)
  guess = counts.argmax(-1)  # [T, word] -> tag

  test = sample(np.random.default_rng(11), 200_000)
  words = test["tokens"] - 1
  mask = test["mask"]
  amb = mask & (words < GEN.num_ambiguous)
  t_idx = np.broadcast_to(np.arange(GEN.max_length), words.shape)
  predicted = np.where(amb, guess[t_idx, np.clip(words, 0, GEN.num_ambiguous - 1)],
                       words % GEN.num_classes)
  accuracy = float(np.mean(predicted[mask] == test["tags"][mask]))

  ceiling, stderr = GEN.left_context_ceiling(test)
  assert 0.7 < ceiling < 0.95 and 0 < stderr < 2e-4
  assert abs(accuracy - ceiling) < 4 * stderr, (accuracy, ceiling, stderr)


def test_left_context_accuracy_per_token():
  batch = {"tokens": np.array([[1, 7, 1, 0], [7, 1, 0, 0]], np.int32),
           "mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)}
  gen = SyntheticTagging(vocab_size=8, num_classes=2, num_ambiguous=2, min_length=1,
                         max_length=4)
  h = gen.hazard(np.arange(4))  # 1/4, 1/3, 1/2, 1
  p = gen.left_context_accuracy(batch)
  q = 0.5
  np.testing.assert_allclose(
      p, [max(h[0], (1 - h[0]) * q), 1.0, max(h[2], (1 - h[2]) * q),
          1.0, max(h[1], (1 - h[1]) * q)])


# --- the task ------------------------------------------------------------------------------


@pytest.fixture
def task(tmp_path):
  config = load_config("smoke")
  config.data.num_test_sequences = 21  # not a multiple of the batch size (8)
  return synthetic_task.Task(config, tmp_path)


def test_train_batches_are_a_function_of_seed_and_step(task, tmp_path):
  a, b = task.train_batch(3), task.train_batch(3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(task.train_batch(4)["tokens"], a["tokens"])
  config = load_config("smoke")
  config.seed = 1
  other = synthetic_task.Task(config, tmp_path)
  assert not np.array_equal(other.train_batch(3)["tokens"], a["tokens"])
  assert a["tokens"].shape == (task.config.train.batch_size, task.config.data.max_length)


def test_eval_batches_cover_the_test_set_once(task):
  batches = list(task.eval_batches("test"))
  size = task.config.train.batch_size
  assert len(batches) == 3
  assert all(b["tokens"].shape == (size, task.config.data.max_length) for b in batches)
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for k, v in task.test.items():
    np.testing.assert_array_equal(stacked[k][:21], v)
  assert not stacked["mask"][21:].any() and not stacked["lengths"][21:].any()


def test_test_set_is_not_the_training_stream(task):
  train_rows = {tuple(r) for step in range(20) for r in task.train_batch(step)["tokens"]}
  assert not train_rows & {tuple(r) for r in task.test["tokens"]}


def test_variants_differ_only_in_direction():
  config = load_config("smoke")
  variants = synthetic_task.Task.variants(config)
  assert list(variants) == ["bidirectional", "unidirectional"]
  assert variants["bidirectional"].model.bidirectional is True
  assert variants["unidirectional"].model.bidirectional is False
  a, b = variants["bidirectional"].to_dict(), variants["unidirectional"].to_dict()
  a["model"].pop("bidirectional"), b["model"].pop("bidirectional")
  assert a == b
  assert config.model.bidirectional is True  # the input config is untouched


def variant(acc, ceiling=0.84, stderr=0.005):
  return {"test_accuracy": acc, "left_context_ceiling": ceiling,
          "left_context_ceiling_stderr": stderr}


@pytest.mark.parametrize("bi,uni,passes", [
    (1.0, 0.84, True),
    (0.96, 0.85, True),     # uni within 3 stderr of the ceiling
    (1.0, 0.86, False),     # uni above the ceiling: the data or the model leaks the future
    (0.94, 0.80, False),    # bi below 95%
    (0.85, 0.84, False),    # bi not clear of the ceiling
])
def test_verdict(bi, uni, passes):
  summary, verdict = synthetic_task.Task.summarize(
      None, {"bidirectional": variant(bi), "unidirectional": variant(uni)})
  assert summary["verdict_pass"] is passes
  assert verdict.startswith("VERDICT: PASS" if passes else "VERDICT: FAIL")
  assert summary["bidirectional_accuracy"] == bi and summary["unidirectional_accuracy"] == uni
  assert summary["left_context_ceiling"] == 0.84


@pytest.mark.slow
def test_full_experiment_passes(tmp_path, capsys):
  """The README's first command: bidirectional >= 95% > ceiling >= forward-only - 3 stderr."""
  summary = train.run_experiment(load_config(), tmp_path)
  out = capsys.readouterr().out
  assert "VERDICT: PASS" in out, out
  bi, uni = summary["bidirectional_accuracy"], summary["unidirectional_accuracy"]
  ceiling, stderr = summary["left_context_ceiling"], summary["left_context_ceiling_stderr"]
  assert bi >= 0.95 > ceiling, summary
  assert ceiling >= uni - 3 * stderr, summary
  assert summary["verdict_pass"] is True
