"""Tests for the language-modelling task (birnn_jax/tasks/lm.py) and its config: the forward
LM never reads the future, the bidirectional one does (the bug it demonstrates), and
generation only ever reads the past."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax.training import train
from birnn_jax.tasks import lm
from experiments import lm_time_machine

pytestmark = pytest.mark.usefixtures("fast_compile")


def smoke_config():
  c = lm_time_machine.get_config("smoke")
  return c


def variant(name):
  return lm.Task.variants(smoke_config())[name]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (task, randomly initialised params) for both variants."""
  out = {}
  for name in ("forward", "bidirectional"):
    task = lm.Task(variant(name), tmp_path_factory.mktemp(name))
    batch = task.train_batch(0)
    params = task.model().init(jax.random.key(0), batch["tokens"], batch["lengths"])["params"]
    out[name] = (task, params)
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The forward smoke variant trained for 2 steps: (task, params)."""
  workdir = tmp_path_factory.mktemp("lm") / "forward"
  cfg = variant("forward")
  cfg.train.num_steps = 2
  results = train.train_and_evaluate(cfg, workdir)
  assert np.isfinite(results["test_loss"])
  assert {"train_perplexity", "future_hidden_perplexity", "sample"} <= set(results)
  trainer, params = train.load_trained(cfg, workdir)
  return trainer.task, params


def _logits(models, name, tokens, lengths=None):
  task, params = models[name]
  tokens = jnp.asarray(tokens, jnp.int32)
  lengths = jnp.full(tokens.shape[:1], tokens.shape[1], jnp.int32) if lengths is None else lengths
  return np.asarray(task.model().apply({"params": params}, tokens, lengths))


# ------------------------------------------------------------------------------------------------
# Data.


def test_heldout_targets_are_the_next_tokens(models):
  task, _ = models["forward"]
  h = task.heldout["test"]
  stream = task.corpus.test
  np.testing.assert_array_equal(h["tokens"][h["mask"]], stream[:-1])
  np.testing.assert_array_equal(h["targets"][h["mask"]], stream[1:])
  b = task.train_batch(0)
  np.testing.assert_array_equal(b["tokens"][:, 1:], b["targets"][:, :-1])


def test_future_hidden_rows_see_only_the_prefix():
  tokens = np.array([[5, 6, 7], [8, 9, 0]], np.int32)
  targets = np.array([[6, 7, 4], [9, 3, 0]], np.int32)
  rows = lm.future_hidden_rows(tokens, targets, np.array([3, 2]))
  assert rows["lengths"].tolist() == [1, 2, 3, 1, 2]
  scored = np.argwhere(rows["mask"])
  assert scored[:, 1].tolist() == (rows["lengths"] - 1).tolist()
  assert rows["targets"][rows["mask"]].tolist() == [6, 7, 4, 9, 3]


# ------------------------------------------------------------------------------------------------
# Who reads the future.


def test_forward_lm_never_reads_the_future(models):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 20, (2, 8))
  base = _logits(models, "forward", tokens)
  for t in range(7):
    changed = tokens.copy()
    changed[:, t + 1:] = rng.integers(3, 20, (2, 7 - t))
    # The distribution for x_{t+1} (output at t) does not move.
    np.testing.assert_allclose(_logits(models, "forward", changed)[:, :t + 1],
                               base[:, :t + 1], atol=1e-6)


def test_forward_lm_gradient_is_causal(models):
  task, params = models["forward"]
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, 20, (1, 8)), jnp.int32)
  embed = params["embed"]["embedding"][tokens]                  # [1, T, E]
  encoder = task.model().encoder

  def out_at(e, t):
    h, _ = encoder.apply({"params": params["encoder"]}, e, jnp.asarray([8]))
    return h[0, t].sum()

  for t in (0, 3, 6):
    g = np.asarray(jax.grad(out_at)(embed, t))[0]              # [T, E]
    assert np.abs(g[t + 1:]).max() == 0.0
    assert np.abs(g[:t + 1]).max() > 0.0


def test_bidirectional_lm_reads_the_next_token(models):
  """The bug the 'bidirectional' variant demonstrates: its output at t moves with x_{t+1}."""
  tokens = np.random.default_rng(2).integers(3, 20, (2, 8))
  base = _logits(models, "bidirectional", tokens)
  changed = tokens.copy()
  changed[:, 4] = np.where(changed[:, 4] == 3, 4, 3)
  assert not np.allclose(_logits(models, "bidirectional", changed)[:, 3], base[:, 3],
                         atol=1e-6)


@pytest.mark.parametrize("name", ["forward", "bidirectional"])
def test_generation_step_reads_only_the_prefix(models, name):
  task, params = models[name]
  next_logits = lm.prefix_logits_fn(task.model(), params, max_len=12)
  ids = np.asarray([5, 9, 4, 7, 3], np.int32)
  # The same as running the model on exactly the prefix (no padding buffer at all).
  direct = _logits(models, name, ids[None])[0, -1]
  np.testing.assert_allclose(next_logits(ids), direct, atol=1e-5)
  # And for the bidirectional model the prefix's last output is not the full window's.
  longer = np.concatenate([ids, [8, 8, 8]])
  full = _logits(models, name, longer[None])[0, len(ids) - 1]
  assert np.allclose(full, direct, atol=1e-6) == (name == "forward")


def test_future_hidden_equals_teacher_forcing_for_the_forward_lm(models):
  """With lengths = t + 1 a causal model scores x_{t+1} exactly as with the whole window."""
  task, params = models["forward"]
  h = task.heldout["test"]
  rows = lm.future_hidden_rows(h["tokens"][:3], h["targets"][:3], h["lengths"][:3])
  model = task.model()
  full = model.apply({"params": params}, h["tokens"][:3], h["lengths"][:3])
  per_prefix = model.apply({"params": params}, rows["tokens"], rows["lengths"])
  np.testing.assert_allclose(per_prefix[rows["mask"]], full[h["mask"][:3]], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Generation and training.


def test_generate_is_deterministic_and_reads_the_growing_prefix():
  seen = []

  def next_logits(ids):
    seen.append(ids.copy())
    return np.log(np.full(6, 1 / 6)) + 0.1 * len(ids)

  out = lm.generate(next_logits, [3, 4], num_tokens=5, temperature=1.0, seed=7,
                    banned_ids=(0, 1, 2))
  assert len(out) == 7 and out[:2].tolist() == [3, 4]
  assert [len(s) for s in seen] == [2, 3, 4, 5, 6]
  assert all(np.array_equal(s, out[:len(s)]) for s in seen)
  assert not set(out[2:].tolist()) & {0, 1, 2}
  again = lm.generate(next_logits, [3, 4], 5, 1.0, 7, (0, 1, 2))
  np.testing.assert_array_equal(out, again)


def test_word_rate_counts_book_words_after_the_prefix():
  known = {"time", "traveller", "the", "machine"}
  assert lm.word_rate("time traveller the machine zzq the mach", "time traveller",
                      known) == pytest.approx(3 / 4)   # the machine zzq the (mach cut)
  # A continuation of the prefix's last word belongs to the prefix; nothing added -> 0.
  assert lm.word_rate("time travellers the xx", "time traveller", known) == 1.0
  assert lm.word_rate("time traveller", "time traveller", known) == 0.0


def test_predict_generates_prefix_plus_num_tokens(trained):
  task, params = trained
  n = task.config.predict.num_tokens
  out = task.predict(params, "Time Traveller")
  assert out.startswith("time traveller") and len(out) == len("time traveller") + n
  assert out == task.predict(params, "time traveller")
  a = task.generate(params, "the", num_tokens=20, temperature=1.0, seed=3)
  assert a == task.generate(params, "the", num_tokens=20, temperature=1.0, seed=3)
  assert len(a) == 23 and set(a) <= set("abcdefghijklmnopqrstuvwxyz ")


def test_predict_rejects_a_prefix_with_nothing_known(trained):
  task, params = trained
  with pytest.raises(ValueError, match="no known token"):
    task.predict(params, "123 !!")


def test_train_predict_uses_the_forward_model(trained, tmp_path):
  task, _ = trained
  out = train.predict(smoke_config(), task.workdir.parent, "time")
  assert out.startswith("time") and len(out) == 4 + task.config.predict.num_tokens


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path):
  summary = train.run_experiment(smoke_config(), tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert set(saved) >= {"forward", "bidirectional", "verdict_pass"}
  for name in ("forward", "bidirectional"):
    assert set(saved[name]) >= {"train_perplexity", "heldout_perplexity",
                                "future_hidden_perplexity", "sample"}
    assert saved[name]["sample"].startswith("time traveller")
  assert saved == json.loads(json.dumps(summary))


def test_a_file_of_prefixes_gives_one_json_line_each(trained, tmp_path):
  import birnn_jax  # pylint: disable=g-import-not-at-top
  from birnn_jax import errors  # pylint: disable=g-import-not-at-top
  task, params = trained
  model = birnn_jax.load(task.workdir)          # the vocabulary from the workdir alone
  assert model.task.inference
  (tmp_path / "prefixes.txt").write_text("time traveller\n\nthe\n", encoding="utf-8")
  summary = model.predict_file(tmp_path / "prefixes.txt", tmp_path / "out.jsonl")
  rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert summary["sentences"] == 2 and [r["line"] for r in rows] == [1, 3]
  assert [r["text"] for r in rows] == [task.predict(params, "time traveller"),
                                       task.predict(params, "the")]
  (tmp_path / "bad.txt").write_text("time\n123 !!\n", encoding="utf-8")
  with pytest.raises(errors.DataError, match=r"bad.txt:2: .*no known token"):
    model.predict_file(tmp_path / "bad.txt", tmp_path / "bad.jsonl")
  assert not (tmp_path / "bad.jsonl").exists()
