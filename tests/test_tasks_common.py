"""birnn_jax/tasks/common.py: what tasks share (fixed-shape batches, workdir vocabularies,
the Time Machine id layout, a forward encoder read backwards)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax import linen
from birnn_jax.data.vocab import PAD, Vocab
from birnn_jax.tasks import common

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_chunk_stream_covers_every_token_once():
  ids = np.arange(3, 26, dtype=np.int32)
  tokens, lengths = common.chunk_stream(ids, 7)
  assert tokens.shape == (4, 7) and lengths.tolist() == [7, 7, 7, 2]
  real = np.arange(7)[None, :] < lengths[:, None]
  np.testing.assert_array_equal(tokens[real], ids)
  assert (tokens[~real] == PAD).all()


def test_fixed_batches_cover_every_row_once_with_zero_padding():
  arrays = {"tokens": np.arange(1, 23, dtype=np.int32).reshape(11, 2),
            "lengths": np.full(11, 2, np.int32)}
  batches = list(common.fixed_batches(arrays, 4))
  assert [b["tokens"].shape for b in batches] == [(4, 2)] * 3
  stacked = np.concatenate([b["tokens"] for b in batches])
  np.testing.assert_array_equal(stacked[:11], arrays["tokens"])
  assert (stacked[11:] == 0).all() and (batches[-1]["lengths"][3:] == 0).all()
  assert common.pad_rows(arrays, 5) is arrays        # already big enough: unchanged


def test_workdir_vocab_saves_once_reuses_and_refuses_a_changed_one(tmp_path):
  path = tmp_path / "vocab.json"
  built = Vocab.build([["a", "b", "a"]])
  assert common.workdir_vocab(path, built) == built and Vocab.load(path) == built
  before = path.stat().st_mtime_ns
  assert common.workdir_vocab(path, Vocab.build([["a", "b", "a"]])) == built
  assert path.stat().st_mtime_ns == before           # reused, not rewritten
  with pytest.raises(errors.WorkdirMismatchError, match=r"vocab.json differs"):
    common.workdir_vocab(path, Vocab.build([["a", "c"]]))
  assert Vocab.load(path) == built                   # and left as it was


def test_saved_vocab_errors(tmp_path):
  with pytest.raises(errors.NoCheckpointError, match="train first"):
    common.saved_vocab(tmp_path / "missing.json")
  Vocab.build([["a"]]).save(tmp_path / "v.json")
  with pytest.raises(errors.WorkdirMismatchError, match="has 3 tokens but .* 7"):
    common.saved_vocab(tmp_path / "v.json", expected_size=7)


def test_perplexity_is_capped():
  assert common.perplexity(np.log(5.0)) == pytest.approx(5.0)
  assert common.perplexity(1e6) == pytest.approx(np.exp(50.0))


def test_reversed_encoder_reads_the_future_only(random_variables):
  """Reversed(forward stack) at step t depends on x_t..x_{L-1} and never on padding."""
  encoder = common.Reversed(linen.BiRNN(cell="gru", hidden_size=3, bidirectional=False))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 2)), jnp.float32)
  lengths = jnp.array([5, 3])
  variables = random_variables(encoder, x, lengths)
  y, _ = encoder.apply(variables, x, lengths)
  assert (np.asarray(y[1, 3:]) == 0).all()
  jac = jax.jacobian(lambda x: encoder.apply(variables, x, lengths)[0][0, 2].sum())(x)
  assert np.abs(np.asarray(jac[0, :2])).max() == 0 and np.abs(np.asarray(jac[0, 2:])).max() > 0
  np.testing.assert_array_equal(common.flip_within_lengths(common.flip_within_lengths(
      x, lengths), lengths), x)
