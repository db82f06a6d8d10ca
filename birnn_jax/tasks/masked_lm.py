"""Masked-token fill-in on The Time Machine ("i am ___ hungry").

Random tokens of each training window are chosen as targets (`config.data.mask_rate`) and
corrupted BERT-style (`config.data.mask_probs`: [MASK] / random token / unchanged, see
`mask_tokens`); an encoder plus a per-token softmax predicts the original token, with the
loss on the targets only. `variants` trains the same model three ways on the same data:
- 'bidirectional': H_t = [H->_t, H<-_t] reads the whole sentence;
- 'forward': a forward-only stack, H_t reads x_<=t (the masked position and its left);
- 'backward': the same forward-only stack run on each sequence reversed within its length and
  the outputs reversed back (`common.Reversed`), so H_t reads x_>=t.

Held-out evaluation (valid during training, test at the end) scores fixed masks: the split is
cut into rows of seq_len, and `config.data.eval_copies` copies of it are masked at rate
`mask_rate` with every target replaced by [MASK] (the fill-in question `predict` asks), from
an rng seeded by (config.seed, split, copy) only, so all three variants see the same blanks.
Metrics: `masked_accuracy` (top-1 on the targets) and `perplexity` (exp of the mean target
cross-entropy). PAD and UNK are never targets (an unknown word has nothing to predict).

Files and prediction: `--mode=predict --text="i am ___ hungry"` prints the top-k fillers of
each blank (`predict`); a plain-text file gives one JSON line per sentence
(`predict_line`).
"""

import functools
from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.tasks import config_keys
from birnn_jax import errors
from birnn_jax.tasks import losses
from birnn_jax.tasks import models
from birnn_jax.data import sampling
from birnn_jax.data import text
from birnn_jax.data.vocab import PAD, UNK, Vocab
from birnn_jax.tasks import base
from birnn_jax.tasks import common

VARIANTS = ("bidirectional", "forward", "backward")
MASK_TOKEN = common.TIME_MACHINE_SPECIALS[0]
# BERT's corruption of the chosen targets: [MASK], a random token, unchanged.
MASK_PROBS = (0.8, 0.1, 0.1)
EVAL_PROBS = (1.0, 0.0, 0.0)   # held-out targets are always [MASK]
BLANK = "___"


class MaskedLM(nn.Module):
  """Token ids [B, T] -> logits [B, M, V] at the M target positions of each row.

  Embedding, encoder (a `BiRNN`, possibly `Reversed`), then the per-token softmax head
  O_t = H_t W_hq + b_q applied only where a prediction is scored: with a word vocabulary the
  head is most of the cost and only ~mask_rate of the positions are targets.
  """
  vocab_size: int
  embed_size: int
  encoder: nn.Module
  embed_dropout: float = 0.0
  output_dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens, lengths, positions, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
    x = nn.Dropout(self.embed_dropout)(x, deterministic=deterministic)
    h, _ = self.encoder(x, lengths, deterministic=deterministic)
    h = jnp.take_along_axis(h, positions[..., None].astype(jnp.int32), axis=1)
    h = nn.Dropout(self.output_dropout)(h, deterministic=deterministic)
    return nn.Dense(self.vocab_size, name="head")(h).astype(jnp.float32)


def target_positions(target_mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
  """<bool>[B, T] -> (positions <int32>[B, width] of each row's targets in order, padded with
  0, and <bool>[B, width] marking the real ones). ValueError if a row has more than width."""
  most = int(target_mask.sum(axis=1).max(initial=0))
  if most > width:
    raise ValueError(f"a row has {most} targets, more than the {width} slots.")
  order = np.argsort(~target_mask, axis=1, kind="stable")[:, :width]
  valid = np.take_along_axis(target_mask, order, axis=1)
  return np.where(valid, order, 0).astype(np.int32), valid


def max_targets(rate: float, seq_len: int) -> int:
  """The most targets `mask_tokens` picks in a row of seq_len: max(1, round(rate * T))."""
  return max(1, int(np.floor(rate * seq_len + 0.5)))


def encoder_from_config(model_config) -> nn.Module:
  """The BiRNN of `config.model`, wrapped in `Reversed` when `model.reverse` (backward-only)."""
  encoder = models.birnn_from_config(model_config)
  return common.Reversed(encoder) if model_config.reverse else encoder


def sentence_tokens(sentence: str, level: str) -> list[str | None]:
  """The tokens `blank_sentence` reads from `sentence`, None at each blank."""
  pieces = [text.preprocess(p) for p in sentence.split(BLANK)]
  if level == "char":
    pieces[0], pieces[-1] = pieces[0].lstrip(), pieces[-1].rstrip()
  out = []
  for i, piece in enumerate(pieces):
    out.extend([None] if i else [])
    out.extend(text.tokenize(piece, level))
  return out


# Masking -------------------------------------------------------------------------------------

def _valid_mask(ids: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
  """Real-token mask <bool>[B, T] from None (all real), lengths <int>[B] or a mask <bool>[B, T]."""
  if valid is None:
    return np.ones(ids.shape, dtype=bool)
  valid = np.asarray(valid)
  if valid.dtype == bool:
    if valid.shape != ids.shape:
      raise ValueError(f"mask shape {valid.shape} != ids shape {ids.shape}.")
    return valid
  if valid.shape != ids.shape[:1] or not np.issubdtype(valid.dtype, np.integer):
    raise ValueError(f"lengths must be <int>[B={ids.shape[0]}], got {valid.dtype}{valid.shape}.")
  if np.any(valid < 0) or np.any(valid > ids.shape[1]):
    raise ValueError(f"lengths must lie in [0, T={ids.shape[1]}], got {valid}.")
  return np.arange(ids.shape[1])[None, :] < valid[:, None]


def mask_tokens(ids: np.ndarray, valid: np.ndarray | None, rate: float,
                rng: np.random.Generator, mask_id: int, vocab_size: int,
                special_ids: Iterable[int] = (), probs: Sequence[float] = MASK_PROBS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """BERT-style corruption for masked-token fill-in.

  Candidates are the real positions (inside `valid`) whose id is neither in `special_ids` nor
  `mask_id`. In each row with c candidates exactly k = min(c, max(1, floor(rate * c + 0.5)))
  are chosen uniformly at random as targets (k = 0 when rate = 0 or c = 0). The "at least
  one" rule means every non-empty row contributes to the loss; it raises the effective rate
  only on rows shorter than 1 / (2 * rate) candidates. Each target independently becomes
  `mask_id` with probs[0], a random token with probs[1] (uniform over [0, vocab_size) minus
  `special_ids` and `mask_id`; it may equal the original), or stays unchanged with probs[2].
  Padding and special positions are never chosen and never changed.

  Args:
    ids: <int>[B, T] token ids.
    valid: which positions are real: None (all), lengths <int>[B] (t < lengths[b]), or
      <bool>[B, T].
    rate: the fraction of candidates to choose, in [0, 1].
    rng: the numpy Generator; the result is a pure function of its state and the inputs.
    mask_id: the [MASK] id.
    vocab_size: random replacements are drawn from [0, vocab_size).
    special_ids: ids never chosen nor drawn (PAD, and UNK/BOS/... as the task wants).
    probs: (mask, random, keep) probabilities of a target's corruption, summing to 1.

  Returns:
    inputs <int32>[B, T]: the corrupted ids the model reads.
    targets <int32>[B, T]: the original ids (`ids`); only positions in target_mask are scored.
    target_mask <bool>[B, T]: the chosen targets.
  """
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"ids must be <int>[B, T], got {ids.dtype}{ids.shape}.")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must lie in [0, 1], got {rate}.")
  probs = np.asarray(probs, dtype=np.float64)
  if probs.shape != (3,) or np.any(probs < 0) or abs(probs.sum() - 1) > 1e-9:
    raise ValueError(f"probs must be 3 non-negative numbers summing to 1, got {tuple(probs)}.")
  excluded = np.unique(np.asarray(list(special_ids) + [mask_id], dtype=np.int64))
  candidates = _valid_mask(ids, valid) & ~np.isin(ids, excluded)

  # Choose k per row: random scores, non-candidates last, the k lowest ranks win.
  counts = candidates.sum(axis=1)
  k = np.zeros_like(counts) if rate == 0 else np.minimum(
      counts, np.maximum(1, np.floor(rate * counts + 0.5).astype(counts.dtype)))
  scores = np.where(candidates, rng.random(ids.shape), np.inf)
  ranks = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
  target_mask = candidates & (ranks < k[:, None])

  # Corrupt the targets.
  u = rng.random(ids.shape)
  to_mask = target_mask & (u < probs[0])
  to_random = target_mask & (u >= probs[0]) & (u < probs[0] + probs[1])
  inputs = ids.astype(np.int32, copy=True)
  inputs[to_mask] = mask_id
  n_random = int(to_random.sum())
  if n_random:
    pool = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), excluded)
    if pool.size == 0:
      raise ValueError(f"no token to draw: vocab_size {vocab_size} minus specials {excluded}.")
    inputs[to_random] = pool[rng.integers(0, pool.size, size=n_random)]
  return inputs, ids.astype(np.int32, copy=True), target_mask


def blank_sentence(sentence: str, vocab: Vocab, blank: str = BLANK, *, level: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """A user's sentence with blanks, as ids for `predict`: "I am ___ hungry" -> [i, am, MASK,
  hungry] and the blank positions [2].

  The text between blanks is preprocessed the d2l way (lower case, non-letters to spaces) and
  tokenised at `level`; each `blank` becomes one MASK token (at char level one character:
  spaces around it are kept, so "the ___ime" asks for one letter). Leading/trailing spaces of
  the whole sentence are dropped.

  `level` is required (keyword) and must be the vocab's level: a char vocab read at word level
  knows no word, which is reported as "no known context".

  Returns:
    ids <int32>[L]: MASK at each blank, UNK for unknown tokens.
    positions <int64>[K]: the index of each blank in ids, in order (K >= 1).

  Raises:
    InputError: no blank in `sentence`, or no known context: every non-blank token (not
      counting spaces) is unknown to `vocab`, or there is none.
  """
  text.check_level(level)
  if not blank or blank not in sentence:
    raise errors.InputError(f"no blank {blank!r} in {sentence!r}: mark each word to fill in "
                            f"with {blank!r}.")
  pieces = [text.preprocess(p) for p in sentence.split(blank)]
  if level == "char":
    pieces[0], pieces[-1] = pieces[0].lstrip(), pieces[-1].rstrip()
  mask = mask_id(vocab)
  ids, positions = [], []
  known = 0
  for i, piece in enumerate(pieces):
    if i:
      positions.append(len(ids))
      ids.append(mask)
    tokens = text.tokenize(piece, level)
    piece_ids = text.encode(tokens, vocab).tolist() if tokens else []
    known += sum(1 for t, j in zip(tokens, piece_ids) if j != UNK and t != " ")
    ids.extend(piece_ids)
  if not known:
    raise errors.InputError(f"no known context in {sentence!r}: every token besides the blanks is unknown "
                     f"to the vocabulary (or there is none), so the blanks cannot be filled.")
  return np.asarray(ids, dtype=np.int32), np.asarray(positions, dtype=np.int64)


def mask_id(vocab: Vocab) -> int:
  """The id of `MASK_TOKEN` in `vocab`; ValueError if the vocab has none (the Time Machine
  vocabularies of `common.time_machine_corpus` reserve it)."""
  if MASK_TOKEN not in vocab:
    raise ValueError(f"the vocabulary has no {MASK_TOKEN!r} token; build it with "
                     f"text.build_vocab(..., specials=({MASK_TOKEN!r},)).")
  return vocab.token_to_id(MASK_TOKEN)


# The task ------------------------------------------------------------------------------------

class Task(base.Task):
  """Masked-token prediction with a bidirectional, forward-only or backward-only encoder."""

  eval_splits = ("valid", "test")

  file_formats = {"txt": (".txt",)}

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    d, m = config.data, config.model
    config_keys.check(d.level in text.LEVELS, "data.level", d.level, f"one of {text.LEVELS}")
    config_keys.check_at_least(config, {"data.seq_len": 2, "data.stride": 1, "data.min_freq": 1,
                                       "data.eval_copies": 1, "predict.top_k": 1})
    config_keys.check(1 <= d.min_length <= d.seq_len, "data.min_length", d.min_length,
                     f"in [1, data.seq_len={d.seq_len}]")
    config_keys.check(0.0 < d.mask_rate <= 1.0, "data.mask_rate", d.mask_rate, "a rate in (0, 1]")
    probs = tuple(float(p) for p in d.mask_probs)
    config_keys.check(len(probs) == 3 and min(probs) >= 0 and abs(sum(probs) - 1) < 1e-6,
                     "data.mask_probs", d.mask_probs,
                     "(mask, random, keep) probabilities summing to 1")
    for key in ("embed_dropout", "output_dropout"):
      config_keys.check(0.0 <= m[key] < 1.0, f"model.{key}", m[key], "a rate in [0, 1)")
    config_keys.check(not (m.reverse and m.bidirectional), "model.reverse", m.reverse,
                     "False when model.bidirectional (reverse makes a backward-only encoder)")
    self._model = None
    if inference:   # the saved vocabulary; one placeholder window gives the input shapes
      self.vocab = common.saved_vocab(common.time_machine_vocab_path(config, workdir))
      self.train_windows = np.full((1, d.seq_len), UNK, np.int32)
    else:
      self.corpus = common.time_machine_corpus(config, workdir)
      self.vocab = self.corpus.vocab
      self.train_windows = text.windows(self.corpus.train, d.seq_len, d.stride)
    self.mask_id = mask_id(self.vocab)
    self.special_ids = tuple(range(self.vocab.num_reserved))   # PAD, UNK, <mask>
    self.sampler = sampling.Stream(len(self.train_windows), config.train.batch_size, config.seed)
    self.num_slots = max_targets(d.mask_rate, d.seq_len)
    if not inference:
      self.heldout = {split: self._fixed_masks(split) for split in self.eval_splits}

  def _fixed_masks(self, split: str) -> dict[str, np.ndarray]:
    """`eval_copies` maskings of the split's rows, every target a [MASK]; the masks depend
    on (config.seed, split, copy) only, never on the model."""
    d = self.config.data
    tokens, lengths = common.chunk_stream(self.corpus.split(split), d.seq_len)
    parts = []
    for copy in range(d.eval_copies):
      rng = np.random.default_rng([self.config.seed, 7, text.SPLIT_NAMES.index(split), copy])
      parts.append(self._mask(tokens, lengths, rng, EVAL_PROBS))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def _mask(self, tokens, lengths, rng, probs) -> dict[str, np.ndarray]:
    inputs, targets, target_mask = mask_tokens(
        tokens, lengths, self.config.data.mask_rate, rng, self.mask_id, len(self.vocab),
        special_ids=self.special_ids, probs=probs)
    positions, valid = target_positions(target_mask, self.num_slots)
    return {"tokens": inputs, "lengths": lengths.astype(np.int32), "targets": targets,
            "mask": target_mask, "positions": positions,
            "position_targets": np.take_along_axis(targets, positions, axis=1),
            "position_mask": valid}

  def model(self):
    if self._model is None:
      m = self.config.model
      self._model = MaskedLM(vocab_size=len(self.vocab), embed_size=m.embed_size,
                             encoder=encoder_from_config(m), embed_dropout=m.embed_dropout,
                             output_dropout=m.output_dropout)
    return self._model

  def model_inputs(self, batch):
    return batch["tokens"], batch["lengths"], batch["positions"]

  def steps_per_epoch(self):
    return self.sampler.steps_per_epoch

  def train_batch(self, step):
    d, seed = self.config.data, self.config.seed
    w = self.train_windows[self.sampler.indices(step)]
    rng = np.random.default_rng([seed, 5, step])
    lengths = rng.integers(d.min_length, d.seq_len + 1, size=len(w)).astype(np.int32)
    w = np.where(np.arange(d.seq_len)[None, :] < lengths[:, None], w, PAD).astype(np.int32)
    return self._mask(w, lengths, rng, tuple(d.mask_probs))

  def eval_batches(self, split):
    return common.fixed_batches(self.heldout[split], self.config.train.batch_size)

  def metric_sums(self, logits, batch):
    sums = losses.token_classification_sums(logits, batch["position_targets"],
                                            batch["position_mask"])
    return {"loss": sums["loss"], "masked_accuracy": sums["accuracy"], "count": sums["count"]}

  def derived_metrics(self, means):
    return {**means, "perplexity": common.perplexity(means["loss"])}

  def extra_results(self, params, evaluate):
    mask = self.heldout["test"]["mask"]
    per_copy = mask.reshape(self.config.data.eval_copies, -1, mask.shape[1])
    return {"num_params": common.num_params(params), "test_num_targets": int(mask.sum()),
            "test_distinct_targets": int(per_copy.any(axis=0).sum())}

  @functools.cached_property
  def _blank_log_probs(self):
    """Jitted `(params, ids [1, T], lengths [1], positions [1, K]) -> log p [1, K, V]`: one
    program per sentence length (run op by op, it was 38 small ones)."""
    model = self.model()
    return jax.jit(lambda params, ids, lengths, positions: jax.nn.log_softmax(model.apply(
        {"params": params}, ids, lengths, positions, deterministic=True), axis=-1))

  def fill_blanks(self, params, sentence: str) -> list[list[tuple[str, float]]]:
    """For each `___` in `sentence`, the top-k (token, probability) fillers, all blanks
    masked at once. Uses the vocabulary saved in the workdir. ValueError (from
    `blank_sentence`) for a sentence with no blank or no known word."""
    vocab = common.saved_vocab(common.time_machine_vocab_path(self.config, self.workdir),
                               params["embed"]["embedding"].shape[0])
    ids, positions = blank_sentence(sentence, vocab, level=self.config.data.level)
    logp = np.asarray(self._blank_log_probs(params, ids[None, :],
                                            np.asarray([len(ids)], np.int32),
                                            positions[None, :])[0], np.float64)
    logp[:, list(self.special_ids)] = -np.inf   # never offer PAD, UNK or <mask> as a word
    top = np.argsort(-logp, axis=-1, kind="stable")[:, :self.config.predict.top_k]
    return [[(vocab.tokens[i], float(np.exp(row[i]))) for i in order]
            for row, order in zip(logp, top)]

  def predict(self, params, sentence):
    fillers = self.fill_blanks(params, sentence)
    level = self.config.data.level
    tokens = sentence_tokens(sentence, level)
    vocab = common.saved_vocab(common.time_machine_vocab_path(self.config, self.workdir))
    unknown = [t for t in dict.fromkeys(tokens)
               if t not in (None, " ") and vocab.token_to_id(t) == UNK]
    best = iter(options[0][0] for options in fillers)
    filled = text.detokenize([f"[{next(best)}]" if t is None else t for t in tokens], level)
    lines = [sentence, f"  best: {filled}"]
    if unknown:
      lines.append(f"  unknown to the vocabulary (read as <unk>): {', '.join(unknown)}")
    for k, options in enumerate(fillers, 1):
      lines.append(f"  blank {k}: " + "  ".join(f"{tok} {p:.1%}" for tok, p in options))
    return "\n".join(lines)

  def predict_line(self, params, sentence):
    """`{"text", "best", "fillers"}`: the sentence, it with each blank's best filler, and
    each blank's fillers as [token, probability] pairs, best first."""
    fillers = self.fill_blanks(params, sentence)
    best = iter(options[0][0] for options in fillers)
    tokens = sentence_tokens(sentence, self.config.data.level)
    filled = text.detokenize([next(best) if t is None else t for t in tokens],
                             self.config.data.level)
    return {"text": sentence, "best": filled,
            "fillers": [[[t, round(p, 6)] for t, p in options] for options in fillers]}

  # Experiment level -----------------------------------------------------------------------

  @classmethod
  def variants(cls, config):
    return base.override_variants(config, {
        name: {"bidirectional": name == "bidirectional", "reverse": name == "backward"}
        for name in VARIANTS})

  @classmethod
  def summarize(cls, config, results):
    summary = {}
    for name, r in results.items():
      summary[name] = {"masked_accuracy": r["test_masked_accuracy"],
                       "perplexity": r["test_perplexity"],
                       "valid_masked_accuracy": r["valid_masked_accuracy"],
                       "valid_perplexity": r["valid_perplexity"],
                       "num_targets": r["test_num_targets"],
                       "distinct_targets": r["test_distinct_targets"],
                       "num_params": r["num_params"], "train_seconds": r["train_seconds"]}
    bi = summary["bidirectional"]
    best_uni_name = max(("forward", "backward"), key=lambda n: summary[n]["masked_accuracy"])
    uni = summary[best_uni_name]
    n = bi["distinct_targets"]
    # A conservative standard error of the difference: the unpaired one, counting only the
    # distinct blanked positions (the copies re-mask some of the same words).
    stderr = float(np.sqrt((bi["masked_accuracy"] * (1 - bi["masked_accuracy"]) +
                            uni["masked_accuracy"] * (1 - uni["masked_accuracy"])) / max(n, 1)))
    margin = bi["masked_accuracy"] - uni["masked_accuracy"]
    wins = margin > 3 * stderr and bi["perplexity"] < uni["perplexity"]
    summary["verdict_pass"] = bool(wins)
    summary["bidirectional_margin"] = margin
    verdict = (
        f"VERDICT: {'PASS' if wins else 'FAIL'} - bidirectional fills "
        f"{bi['masked_accuracy']:.2%} of {bi['num_targets']} held-out blanks (perplexity "
        f"{bi['perplexity']:.1f}) vs forward-only {summary['forward']['masked_accuracy']:.2%} "
        f"({summary['forward']['perplexity']:.1f}) and backward-only "
        f"{summary['backward']['masked_accuracy']:.2%} "
        f"({summary['backward']['perplexity']:.1f}): "
        f"{'+' if margin >= 0 else ''}{margin:.2%} over the best one-directional model "
        f"({best_uni_name}; 3 standard errors = {3 * stderr:.2%}).")
    return summary, verdict

  @classmethod
  def judge_over_seeds(cls, summary, verdict):
    """Over seeds the verdict is the paired difference, member k against member k: PASS
    when the bidirectional model's masked accuracy beats the better one-directional
    model's with a 95% interval above 0 and its perplexity is lower with one below 0. (The
    one-seed test above, 3 unpaired standard errors of one set of blanks, is kept after
    it, on the mean figures.)"""
    uni = max(("forward", "backward"), key=lambda n: summary[n]["masked_accuracy"])
    paired = summary["paired_differences"][f"bidirectional_minus_{uni}"]
    acc, ppl = paired["test_masked_accuracy"], paired["test_perplexity"]
    if acc["ci95"] is None or ppl["ci95"] is None:   # fewer than two seeds' differences
      return summary, verdict
    wins = acc["ci95"][0] > 0 and ppl["ci95"][1] < 0
    summary = {**summary, "verdict_pass": bool(wins), "verdict_over_seeds": True}
    judged = (
        f"VERDICT: {'PASS' if wins else 'FAIL'} over {len(summary['seeds'])} seeds - "
        f"bidirectional minus {uni}-only (paired): masked accuracy {acc['mean']:+.2%} "
        f"[95% CI {acc['ci95'][0]:+.2%}, {acc['ci95'][1]:+.2%}], perplexity "
        f"{ppl['mean']:+.1f} [{ppl['ci95'][0]:+.1f}, {ppl['ci95'][1]:+.1f}]. One-seed test on "
        f"the means: {verdict.removeprefix('VERDICT: ')}")
    return summary, judged
