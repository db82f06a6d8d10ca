"""Language modelling on The Time Machine, right and wrong.

Two variants of one next-token model (`O_t = H_t W_hq + b_q` predicts x_{t+1}):
- 'forward' (right): H_t is a forward RNN's state, a function of x_<=t only.
- 'bidirectional' (wrong): H_t also holds the backward direction, which has read x_{t+1}..,
  so predicting x_{t+1} is copying. Training and teacher-forced held-out perplexity fall to
  ~1, but with the future hidden (position t scored from the prefix x_<=t alone) it
  collapses, and text it generates (which can only ever read the past) is gibberish.

Reported for each (results.json, `summarize`): `train_perplexity` (a fixed subset of training
windows, deterministic mode), `heldout_perplexity` (test split, teacher forcing: the whole
window visible), `future_hidden_perplexity` (test split, each position t scored by running the
model on x_<=t only, lengths = t+1) and a `sample` continuing `config.predict.prefix`.

Generation only ever reads the past (`sample_next`, `generate`, `prefix_logits_fn`).
"""

from typing import Callable, Sequence

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



# ------------------------------------------------------------------------------------------------
# Generation that only ever reads the past.


def sample_next(logits: np.ndarray, temperature: float, rng: np.random.Generator,
                banned_ids: Sequence[int] = ()) -> int:
  """One token from logits <float>[V]: argmax when temperature == 0, else a draw from
  softmax(logits / temperature). `banned_ids` (PAD, UNK, ...) are never chosen."""
  logits = np.asarray(logits, dtype=np.float64).copy()
  logits[list(banned_ids)] = -np.inf
  if temperature == 0:
    return int(np.argmax(logits))
  z = logits / temperature
  p = np.exp(z - z.max())
  return int(rng.choice(len(p), p=p / p.sum()))


def generate(next_logits: Callable[[np.ndarray], np.ndarray], prefix_ids: Sequence[int],
             num_tokens: int, temperature: float, seed: int,
             banned_ids: Sequence[int] = ()) -> np.ndarray:
  """prefix_ids followed by `num_tokens` generated ids, <int32>[len(prefix) + num_tokens].

  `next_logits(ids)` gives the logits of the token after `ids` (the model run on that prefix
  only), so every step reads the past and nothing else. Deterministic for a `seed`.
  """
  if len(prefix_ids) == 0:
    raise ValueError("generation needs a non-empty prefix.")
  rng = np.random.default_rng(seed)
  ids = list(int(i) for i in prefix_ids)
  for _ in range(num_tokens):
    ids.append(sample_next(next_logits(np.asarray(ids, np.int32)), temperature, rng,
                           banned_ids))
  return np.asarray(ids, dtype=np.int32)


def prefix_logits_fn(model, params, max_len: int) -> Callable[[np.ndarray], np.ndarray]:
  """`next_logits` for `generate`: runs `model` on the prefix alone (a [1, max_len] buffer
  whose steps past the prefix are padding, which the recurrence never reads: lengths =
  len(prefix)) and returns the logits <float32>[V] at the prefix's last token. One compile."""

  @jax.jit
  def at_last(params, tokens, length):
    logits = model.apply({"params": params}, tokens, length[None], deterministic=True)
    return logits[0, length - 1]

  def next_logits(ids: np.ndarray) -> np.ndarray:
    if len(ids) > max_len:
      raise ValueError(f"prefix of {len(ids)} tokens exceeds the buffer of {max_len}.")
    buf = np.full((1, max_len), PAD, np.int32)
    buf[0, :len(ids)] = ids
    return np.asarray(at_last(params, buf, jnp.int32(len(ids))))

  return next_logits


def encode_prompt(prompt: str, vocab: Vocab, level: str) -> np.ndarray:
  """A user's prompt, preprocessed the d2l way and encoded; ValueError if it is empty or
  every token is unknown (nothing to condition on)."""
  tokens = text.tokenize(text.preprocess(prompt).strip(), level)
  ids = text.encode(tokens, vocab) if tokens else np.zeros(0, np.int32)
  if not any(i != UNK and t != " " for t, i in zip(tokens, ids)):
    raise errors.InputError(f"no known token in {prompt!r}: give a prefix with words from the "
                     "training text (letters a-z).")
  return ids


# ------------------------------------------------------------------------------------------------
# The LM task.


class LanguageModel(nn.Module):
  """Token ids [B, T] -> next-token logits [B, T, V]: O_t = H_t W_hq + b_q predicts x_{t+1}.

  Right when `encoder` is forward-only (H_t reads x_<=t); the "wrong application" when it is
  bidirectional (H_t has read x_{t+1} itself). Same parameters as `models.Tagger` with V tags.
  """
  vocab_size: int
  embed_size: int
  encoder: nn.Module
  embed_dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens: jax.Array, lengths: jax.Array, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
    x = nn.Dropout(self.embed_dropout)(x, deterministic=deterministic)
    h, _ = self.encoder(x, lengths, deterministic=deterministic)
    return nn.Dense(self.vocab_size, name="head")(h).astype(jnp.float32)


def word_rate(sample: str, prefix: str, known_words: set[str]) -> float:
  """The fraction of the words a sample added after `prefix` (its preprocessed text) that
  occur in `known_words`; the last word is left out (it may be cut off), and a word that
  continues the prefix's last one belongs to the prefix. 0 when it added no word. A gibberish
  detector for character-level samples."""
  words = sample.split()[len(prefix.split()):-1]
  return float(np.mean([w in known_words for w in words])) if words else 0.0


def future_hidden_rows(tokens: np.ndarray, targets: np.ndarray, lengths: np.ndarray
                       ) -> dict[str, np.ndarray]:
  """One row per real position t of each input row, with lengths = t + 1 and only t scored:
  the model sees x_<=t and nothing after, whatever its directions."""
  rows = [(r, t) for r in range(len(lengths)) for t in range(int(lengths[r]))]
  r, t = (np.asarray(a, dtype=np.int64) for a in zip(*rows)) if rows else (
      np.zeros(0, np.int64),) * 2
  mask = np.zeros((len(r), tokens.shape[1]), dtype=bool)
  mask[np.arange(len(r)), t] = True
  return {"tokens": tokens[r], "targets": targets[r], "lengths": (t + 1).astype(np.int32),
          "mask": mask}


class Task(base.Task):
  """Next-token prediction with a (possibly, wrongly, bidirectional) BiRNN."""

  eval_splits = ("valid", "test")

  file_formats = {"txt": (".txt",)}

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    d, p = config.data, config.predict
    config_keys.check(d.level in text.LEVELS, "data.level", d.level, f"one of {text.LEVELS}")
    config_keys.check_at_least(config, {
        "data.seq_len": 2, "data.stride": 1, "data.min_freq": 1, "data.train_eval_windows": 1,
        "predict.num_tokens": 1, "predict.word_rate_tokens": 1})
    config_keys.check(d.future_hidden_rows >= 0, "data.future_hidden_rows",
                     d.future_hidden_rows, ">= 0 (0 = all of the test split)")
    config_keys.check(p.temperature >= 0, "predict.temperature", p.temperature,
                     ">= 0 (0 = greedy)")
    self._model = None
    if inference:   # the saved vocabulary; one placeholder window gives the input shapes
      self.vocab = common.saved_vocab(common.time_machine_vocab_path(config, workdir))
      self.train_windows = np.full((1, d.seq_len + 1), UNK, np.int32)
      self.sampler = sampling.Stream(1, config.train.batch_size, config.seed)
      return
    self.corpus = common.time_machine_corpus(config, workdir)
    self.vocab = self.corpus.vocab
    # Training windows of seq_len + 1: inputs w[:, :-1], targets w[:, 1:].
    self.train_windows = text.windows(self.corpus.train, d.seq_len + 1, d.stride)
    self.sampler = sampling.Stream(len(self.train_windows), config.train.batch_size, config.seed)
    self.heldout = {split: self._teacher_forced(self.corpus.split(split))
                    for split in self.eval_splits}
    # A fixed, evenly spaced subset of training windows for an honest train perplexity.
    n = len(self.train_windows)
    pick = np.linspace(0, n - 1, min(n, d.train_eval_windows)).astype(np.int64)
    self.train_subset = self._from_windows(self.train_windows[pick])
    self.future_hidden = self._future_hidden(self.heldout["test"], d.future_hidden_rows)

  def _from_windows(self, w: np.ndarray) -> dict[str, np.ndarray]:
    t = w.shape[1] - 1
    return {"tokens": w[:, :-1], "targets": w[:, 1:],
            "lengths": np.full(len(w), t, np.int32), "mask": np.ones((len(w), t), bool)}

  def _teacher_forced(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every next-token prediction of a held-out stream once: x_i predicts x_{i+1}."""
    tokens, lengths = common.chunk_stream(ids[:-1], self.config.data.seq_len)
    targets, _ = common.chunk_stream(ids[1:], self.config.data.seq_len)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return {"tokens": tokens, "targets": targets, "lengths": lengths, "mask": mask}

  @staticmethod
  def _future_hidden(heldout: dict[str, np.ndarray], limit: int) -> dict[str, np.ndarray]:
    """The first `limit` positions of the test stream (0 = all), each its own prefix row."""
    rows = future_hidden_rows(heldout["tokens"], heldout["targets"], heldout["lengths"])
    return rows if limit == 0 else {k: v[:limit] for k, v in rows.items()}

  def model(self):
    if self._model is None:
      m = self.config.model
      self._model = LanguageModel(vocab_size=len(self.vocab), embed_size=m.embed_size,
                                  encoder=models.birnn_from_config(m),
                                  embed_dropout=m.embed_dropout)
    return self._model

  def steps_per_epoch(self):
    return self.sampler.steps_per_epoch

  def train_batch(self, step):
    w = self.train_windows[self.sampler.indices(step)]
    return self._from_windows(w)

  def eval_batches(self, split):
    if split in self.heldout:
      arrays = self.heldout[split]
    elif split == "train_subset":
      arrays = self.train_subset
    elif split == "test_future_hidden":
      arrays = self.future_hidden
    else:
      raise ValueError(f"unknown split {split!r}.")
    return common.fixed_batches(arrays, self.config.train.batch_size)

  def metric_sums(self, logits, batch):
    return losses.token_classification_sums(logits, batch["targets"], batch["mask"])

  def derived_metrics(self, means):
    return {**means, "perplexity": common.perplexity(means["loss"])}

  def extra_results(self, params, evaluate):
    p = self.config.predict
    out = {"train_perplexity": evaluate(params, "train_subset")["perplexity"],
           "future_hidden_perplexity": evaluate(params, "test_future_hidden")["perplexity"],
           "future_hidden_positions": int(len(self.future_hidden["lengths"])),
           "sample": self.generate(params, p.prefix),
           "num_params": common.num_params(params)}
    # How much of a longer sample (same prefix and seed) is made of words of the book.
    long = self.generate(params, p.prefix, num_tokens=p.word_rate_tokens)
    known = set(text.decode(self.corpus.train, self.vocab, self.config.data.level).split())
    out["sample_word_rate"] = word_rate(long, text.preprocess(p.prefix), known)
    return out

  def generate(self, params, prefix: str, num_tokens: int | None = None,
               temperature: float | None = None, seed: int | None = None) -> str:
    """`prefix` and its continuation (config.predict.* unless given), as text."""
    p = self.config.predict
    num_tokens = p.num_tokens if num_tokens is None else num_tokens
    temperature = p.temperature if temperature is None else temperature
    seed = p.seed if seed is None else seed
    vocab = common.saved_vocab(common.time_machine_vocab_path(self.config, self.workdir),
                               params["embed"]["embedding"].shape[0])
    prompt = encode_prompt(prefix, vocab, self.config.data.level)
    next_logits = prefix_logits_fn(self.model(), params, len(prompt) + num_tokens)
    ids = generate(next_logits, prompt, num_tokens, temperature, seed,
                   banned_ids=range(vocab.num_reserved))
    return text.decode(ids, vocab, self.config.data.level)

  def predict(self, params, prefix):
    return self.generate(params, prefix)

  def predict_line(self, params, text):
    """`{"prefix", "text"}`: the prefix and its continuation (config.predict.*)."""
    return {"prefix": text, "text": self.generate(params, text)}

  # Experiment level -----------------------------------------------------------------------

  @classmethod
  def variants(cls, config):
    return base.override_variants(config, {"forward": {"bidirectional": False},
                                           "bidirectional": {"bidirectional": True}})

  @classmethod
  def summarize(cls, config, results):
    keys = ("train_perplexity", "heldout_perplexity", "future_hidden_perplexity", "sample")
    summary = {}
    for name, r in results.items():
      r = {**r, "heldout_perplexity": r["test_perplexity"]}
      summary[name] = {**{k: r[k] for k in keys},
                       "valid_perplexity": r["valid_perplexity"],
                       "heldout_accuracy": r["test_accuracy"],
                       "future_hidden_positions": r["future_hidden_positions"],
                       "sample_word_rate": r["sample_word_rate"],
                       "num_params": r["num_params"], "train_seconds": r["train_seconds"]}
    fw, bi = summary["forward"], summary["bidirectional"]
    # The demonstration holds when the BiRNN looks better than the forward LM with the
    # future visible and worse than it once the future is hidden.
    cheats = bi["train_perplexity"] < fw["train_perplexity"]
    collapses = bi["future_hidden_perplexity"] > fw["future_hidden_perplexity"]
    summary["verdict_pass"] = bool(cheats and collapses)
    verdict = (
        f"VERDICT: {'PASS' if summary['verdict_pass'] else 'FAIL'} - the bidirectional LM's "
        f"training perplexity {bi['train_perplexity']:.2f} (held-out, future visible: "
        f"{bi['heldout_perplexity']:.2f}) looks better than the forward LM's "
        f"{fw['train_perplexity']:.2f} ({fw['heldout_perplexity']:.2f}), but with the future "
        f"hidden it is {bi['future_hidden_perplexity']:.2f} vs the forward LM's "
        f"{fw['future_hidden_perplexity']:.2f}; words of the book in its generated text: "
        f"{bi['sample_word_rate']:.0%} vs {fw['sample_word_rate']:.0%}."
        f"\n  forward sample:       {fw['sample']!r}"
        f"\n  bidirectional sample: {bi['sample']!r}")
    return summary, verdict
