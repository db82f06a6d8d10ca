"""What several tasks share: fixed-shape eval batches, workdir vocabularies (one policy), the
Time Machine corpus with its saved vocabulary, and a forward encoder run backwards.

Shape names: B batch, T time, N rows.
"""

import math
import pathlib
from typing import Iterable

import flax.linen as nn
import jax
import numpy as np

from birnn_jax import errors
from birnn_jax.data import text
from birnn_jax.core.recurrence import flip_within_lengths
from birnn_jax.data.vocab import PAD, Vocab

Arrays = dict[str, np.ndarray]


# Fixed-shape batches ---------------------------------------------------------------------------

def pad_rows(batch: Arrays, size: int) -> Arrays:
  """Pads every array's leading axis to `size` with zeros: zero-length rows keep a batch's
  shape fixed (one compile) and weigh nothing in the metric sums."""
  pad = size - len(next(iter(batch.values())))
  if pad <= 0:
    return batch
  return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def fixed_batches(arrays: Arrays, size: int) -> Iterable[Arrays]:
  """Consecutive batches of `size` rows covering `arrays` once (the last one padded)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, size):
    yield pad_rows({k: v[start:start + size] for k, v in arrays.items()}, size)


def chunk_stream(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """A stream cut into consecutive rows: (tokens int32 [N, seq_len], lengths int32 [N]).

  Every token lands in exactly one row; the last row may be shorter (padded with PAD).
  """
  ids = np.asarray(ids, dtype=np.int32)
  n = -(-len(ids) // seq_len)
  tokens = np.full((n, seq_len), PAD, dtype=np.int32)
  tokens.reshape(-1)[:len(ids)] = ids
  lengths = np.full(n, seq_len, dtype=np.int32)
  if n:
    lengths[-1] = len(ids) - (n - 1) * seq_len
  return tokens, lengths


def table(rows: list[tuple[str, ...]]) -> str:
  """A plain text table; the first row is the header."""
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
  return "\n".join([line(rows[0]), line(["-" * w for w in widths])] +
                   [line(r) for r in rows[1:]])


def tagging_scores(gold, predicted, labels) -> tuple[dict, tuple]:
  """Token-level scores of predicted tags against gold ones.

  Args:
    gold: sentences of (form, gold tag) pairs.
    predicted: each sentence's predicted tags, one per form.
    labels: every tag, in the order of the confusion matrix.

  Returns:
    (scores, (labels, counts)): scores has 'accuracy', 'tokens', 'sentences', and per gold
    tag 'per_tag_accuracy' and 'per_tag_count'; counts is int64 [K, K], row the gold tag,
    column the predicted one.
  """
  index = {label: i for i, label in enumerate(labels)}
  counts = np.zeros((len(labels), len(labels)), np.int64)
  for sentence, tags in zip(gold, predicted, strict=True):
    for (_, g), p in zip(sentence, tags, strict=True):
      counts[index[g], index[p]] += 1
  per_gold = counts.sum(axis=1)
  total = int(per_gold.sum())
  scores = {
      "accuracy": float(np.trace(counts) / max(total, 1)),
      "tokens": total,
      "sentences": len(gold),
      "per_tag_accuracy": {l: float(counts[i, i] / per_gold[i])
                           for i, l in enumerate(labels) if per_gold[i]},
      "per_tag_count": {l: int(per_gold[i]) for i, l in enumerate(labels) if per_gold[i]},
  }
  return scores, (tuple(labels), counts)


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def perplexity(mean_loss: float) -> float:
  """exp(mean cross-entropy), capped at exp(50) so a diverged run logs a number, not inf."""
  return math.exp(min(mean_loss, 50.0))


# Vocabularies in the workdir ------------------------------------------------------------------

def workdir_vocab(path: str | pathlib.Path, built: Vocab) -> Vocab:
  """The one policy for a vocabulary saved in a workdir.

  The first run saves `built` at `path` (process 0 only), so eval and predict read the ids
  the checkpoint was trained with. Later runs reuse it when it equals what the data and
  config build now, and refuse otherwise: a checkpoint read with other ids would be wrong.

  Raises:
    errors.WorkdirMismatchError: naming the file, when the saved vocabulary differs.
  """
  path = pathlib.Path(path)
  if path.exists():
    if Vocab.load(path) != built:
      raise errors.WorkdirMismatchError(
          f"{path} differs from the vocabulary that the data and config build now (did the "
          "data or a data.* key change since this run began?); the checkpoint's ids would "
          "be wrong. Use another --workdir, or delete the file together with the run.")
  elif jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    built.save(path)
  return built


def saved_vocab(path: str | pathlib.Path, expected_size: int | None = None) -> Vocab:
  """The vocabulary a training run saved at `path`, for predict; an error if it is missing
  or its size is not what the checkpoint's embedding expects."""
  path = pathlib.Path(path)
  if not path.exists():
    raise errors.NoCheckpointError(f"no {path}: train first (--mode=train) with the same "
                                   "--workdir.")
  vocab = Vocab.load(path)
  if expected_size is not None and len(vocab) != expected_size:
    raise errors.WorkdirMismatchError(
        f"{path} has {len(vocab)} tokens but the checkpoint's embedding has "
        f"{expected_size}; the workdir mixes runs.")
  return vocab


# The Time Machine with its saved vocabulary ---------------------------------------------------

def time_machine_vocab_path(config, workdir: str | pathlib.Path) -> pathlib.Path:
  """workdir/vocab_<level>_minfreq<k>.json: named by what builds it, so a run of another
  level or min_freq in the same workdir (--force_fresh) never reads or clobbers this one."""
  d = config.data
  return pathlib.Path(workdir) / f"vocab_{d.level}_minfreq{d.min_freq}.json"


# The Time Machine tasks share one id layout, PAD=0, UNK=1, <mask>=2, then the words, so a
# vocabulary (and an embedding trained on it) means the same in all three; only the fill-in
# task ever uses <mask>.
TIME_MACHINE_SPECIALS = ("<mask>",)


def time_machine_corpus(config, workdir: str | pathlib.Path) -> text.TextCorpus:
  """The Time Machine at `config.data.level` (vocabulary from train, `data.min_freq`, in the
  shared id layout), its vocabulary kept in the workdir by `workdir_vocab`."""
  corpus = text.load_time_machine(config.data.dir or None, config.data.level,
                                  config.data.min_freq, specials=TIME_MACHINE_SPECIALS)
  workdir_vocab(time_machine_vocab_path(config, workdir), corpus.vocab)
  return corpus


# A forward encoder read backwards ----------------------------------------------------------------

class Reversed(nn.Module):
  """Runs `encoder` on each sequence reversed within its length and reverses its outputs
  back, so a forward-only encoder reads x_>=t at step t (padding stays padding).

  `encoder(x [B, T, D], lengths [B], deterministic=...) -> (y [B, T, F], final)`.
  """
  encoder: nn.Module

  def __call__(self, x, lengths, deterministic: bool = True):
    y, final = self.encoder(flip_within_lengths(x, lengths), lengths,
                            deterministic=deterministic)
    return flip_within_lengths(y, lengths), final
