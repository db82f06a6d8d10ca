"""Part-of-speech tagging (UPOS) on any UD treebank (UD English-EWT by default) with a word +
character BiLSTM tagger.

Data: `data.dir` is a UD treebank folder (`*-ud-{train,dev,test}.conllu`, plain or .xz, any
language prefix) or a root holding `ud_english_ewt/`; or `data.train_file`, `dev_file`,
`test_file` name the files. With no dev file a seeded `data.dev_fraction` of train is held out
(logged, and recorded in results.json `data_sources`). Unset, the bundled EWT is read.

The model (Plank et al. 2016 style), for the words of a sentence x_1..x_T:
- each word's characters (case kept) go through a one-layer character BiLSTM
  (`models.CharBiRNNEmbedder`); its two final states are the word's character vector;
- the word itself (lowercased by default) is looked up in a word embedding. During training
  word ids are replaced by UNK ("word dropout"), so the UNK embedding is trained and the
  tagger learns to read unknown words from their characters: a word seen c times in train
  is dropped with probability alpha / (alpha + c) (`data.word_dropout_alpha`; Kiperwasser &
  Goldberg 2016), so rare words, which are like the unseen words of test, are dropped most;
  this is done when the training batch is made, from (seed, step). On top of it
  `model.word_dropout` drops any word with one probability inside the model;
- [word embedding; character vector] (dropout `model.embed_dropout`) feeds a stacked BiLSTM
  over the sentence (`models.BiRNN`, `config.model` keys; `model.bidirectional=False` gives
  the forward-only baseline, whose tag at t can only use x_1..x_t);
- per token O_t = H_t W_hq + b_q (dropout `model.output_dropout` on H_t), softmax
  cross-entropy on the real tokens only.

Data: vocabularies come from train only (words with `data.min_freq`, all characters) and are
saved in the workdir as vocab_words.json / vocab_chars.json (`common.workdir_vocab`: a saved
one is reused, one that the data no longer builds is refused), so `eval` and `predict` read
the ids the checkpoint was trained with.
Words longer than `data.max_chars` characters keep their first and last `max_chars // 2`
characters (prefix and suffix carry the morphology). Batches are length-bucketed and padded
(`data.pad_to` words, exactly `data.max_chars` characters) so jit sees few shapes. The
character BiLSTM runs once per distinct word form of a batch, not once per position
(`dedup_chars`: about 0.4 distinct forms per padded position), which halves its cost, and
over as many characters as a form needs, near enough: the distinct forms, longest first, go
into tiers of 16, 8 and 4 characters (`CHAR_TIERS`), which halves it again.

Pretrained contextual features (ELMo's use of a biLM, Peters et al. 2018): with
`model.bilm_workdir` set to a trained `experiments/bilm_time_machine.py` run, each token also
gets the frozen biLM's layer states h_0..h_L (`bilm.FrozenFeatures`), mixed by learned
softmax weights and a learned scale as ELMo does, and concatenated to [word; chars].
`model.bilm_layers='context_free'` gives only h_0 (the biLM's context-free embedding: the
control for "is it the context that helps?"). `compare_bilm=True` trains the three variants
no_bilm / context_free / elmo; `data.train_sentences` keeps only the first N training
sentences (a low-resource setting, where pretraining matters most).

Results (results.json): `dev_accuracy`, `test_accuracy` (fractions of tokens), and from
`extra_results` the test accuracy per gold tag and on words unseen in training (a test word
whose form, lowercased when `data.lowercase`, never occurs in the training file).

Predict: `--mode=predict --text="..."` tokenises on whitespace, then splits off punctuation
at a word's edges and English clitics (n't, 's, 're, 've, 'll, 'm, 'd), roughly as EWT is
tokenised, and prints `word/TAG` pairs.
"""

import abc
import collections
import functools
import re
import unicodedata

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.tasks import config_keys
from birnn_jax import errors
from birnn_jax.tasks import losses
from birnn_jax.tasks import models
from birnn_jax.data import batching
from birnn_jax.data import columns
from birnn_jax.data import conllu_data
from birnn_jax.data.vocab import PAD, UNK, Vocab
from birnn_jax.tasks import base
from birnn_jax.tasks import bilm as bilm_lib
from birnn_jax.tasks import common

WORD_VOCAB_FILE = "vocab_words.json"
CHAR_VOCAB_FILE = "vocab_chars.json"
TAGS = conllu_data.UPOS
BILM_LAYERS = ("all", "context_free")
# compare_bilm's variants; the first one is what --mode=predict uses.
BILM_VARIANTS = {"elmo": {"bilm_layers": "all"}, "context_free": {"bilm_layers": "context_free"},
                 "no_bilm": {"bilm_workdir": ""}}


# Tokenising user text -------------------------------------------------------------------------

_CLITIC = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'m|'d)$")
_EDGE_PUNCT = "\"'`()[]{}<>,;:!?.\u201c\u201d\u2018\u2019\u2026"


def tokenize(text: str, is_word=lambda token: False) -> list[str]:
  """Whitespace tokens with edge punctuation and English clitics split off, EWT-style:
  "Don't stop, (please)!" -> Do n't stop , ( please ) !. A run of '.', '!' or '?' is one
  token ("..."). A final '.' stays on a token that
  `is_word` knows with it ("Mr.", "Inc.") or that has another '.' inside ("U.S.", "e.g.")."""
  out = []
  for chunk in text.split():
    if len(set(chunk)) == 1 and chunk[0] in _EDGE_PUNCT:   # "...", "!!", "--"
      out.append(chunk)
      continue
    lead, tail = [], []
    while len(chunk) > 1 and chunk[0] in _EDGE_PUNCT:
      lead.append(chunk[0])
      chunk = chunk[1:]
    while len(chunk) > 1 and chunk[-1] in _EDGE_PUNCT:
      if chunk[-1] == "." and chunk[-2] not in _EDGE_PUNCT and (
          is_word(chunk) or "." in chunk[:-1]):
        break
      run = len(chunk) - len(chunk.rstrip(chunk[-1])) if chunk[-1] in ".!?" else 1
      run = min(run, len(chunk) - 1)   # "..." stays one token, as in EWT
      tail.insert(0, chunk[-run:])
      chunk = chunk[:-run]
    match = _CLITIC.match(chunk)
    middle = [match[1], match[2]] if match and match[1].isalpha() else [chunk]
    out.extend(lead + middle + tail)
  return out


# Encoding -------------------------------------------------------------------------------------

class CharEncoder:
  """A word -> its character ids; words longer than `max_chars` keep their first and last
  `max_chars // 2` characters (so no real character is cut off by the batcher)."""

  # Words whose ids are kept (a corpus repeats its words: EWT's 254,818 tokens are 23,042
  # forms); past this many the memo starts again, so streaming a huge file stays bounded.
  MEMO_SIZE = 1 << 17

  def __init__(self, vocab: Vocab, max_chars: int):
    self.vocab, self.max_chars = vocab, max_chars
    self._memo: dict[str, np.ndarray] = {}

  def clip(self, word: str) -> str:
    if len(word) <= self.max_chars:
      return word
    head = self.max_chars // 2
    return word[:head] + word[len(word) - (self.max_chars - head):]

  def encode(self, word: str) -> np.ndarray:
    """int32 [len(clip(word))], read-only (one array per distinct word)."""
    ids = self._memo.get(word)
    if ids is None:
      if len(self._memo) >= self.MEMO_SIZE:
        self._memo.clear()
      ids = self._memo[word] = self.vocab.encode(self.clip(word))
      ids.flags.writeable = False
    return ids


# The deduplicated character table's tiers, longest forms first: (share of the table's rows,
# share of max_chars). A training batch's distinct EWT forms are 5.2 characters long on
# average; 11% of them (at most 16% in a batch) are longer than 8 and 53% longer than 4. So
# rows of 16, 8 and 4 characters run the character BiRNN over 8.5 steps a row instead of 16;
# a batch whose forms do not fit the tiers keeps one table of max_chars (a second shape).
CHAR_TIERS = ((0.25, 1.0), (0.375, 0.5), (0.375, 0.25))


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`np.unique(rows, axis=0, return_inverse=True)` for an integer [N, C] array: the distinct
  rows in lexicographic order and each row's place among them [N]. A lexsort over the
  columns: np.unique sorts the rows as structured records, ~60x slower (4 s of a POS
  `:smoke` run's batches)."""
  order = np.lexsort(rows.T[::-1])
  ordered = rows[order]
  first = np.ones(len(rows), bool)
  first[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
  index = np.empty(len(rows), np.intp)
  index[order] = np.cumsum(first) - 1
  return ordered[first], index


def dedup_chars(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Replaces `chars` [B, T, C] by the batch's distinct character rows and an index.

  The distinct rows, longest first (the all-PAD row among the last), fill a table of
  B * K rows, K = ceil(T / 2), or T when a batch has more than B * ceil(T / 2) distinct rows
  (then a second shape); unused rows are PAD. With C >= 8 the table is cut into the
  `CHAR_TIERS`, so `chars` is a tuple (int32 [B, K_0, C], [B, K_1, C // 2],
  [B, K_2, C // 4]) whose rows, in that order, are the table's; otherwise (or when the
  forms do not fit) it is the int32 [B, K, C] table. `char_index` int32 [B, T] is the row
  of the table (tiers concatenated, each flattened) holding position (b, t)'s characters.
  """
  chars = batch["chars"]
  size, steps, width = chars.shape
  rows, index = unique_rows(chars.reshape(-1, width))
  lengths = np.sum(rows != PAD, axis=1)
  order = np.argsort(-lengths, kind="stable")
  rows, lengths = rows[order], lengths[order]
  index = np.argsort(order)[index.reshape(-1)]     # old row -> its place in sorted order
  per_row = -(-steps // 2)
  if len(rows) > size * per_row:
    per_row = steps
  table = np.zeros((size * per_row, width), np.int32)
  table[:len(rows)] = rows
  tiers = _tier_table(table, np.pad(lengths, (0, len(table) - len(rows))), size, per_row)
  return {**batch, "chars": tiers if tiers is not None else table.reshape(size, per_row, width),
          "char_index": index.reshape(size, steps).astype(np.int32)}


def _tier_table(table, lengths, size, per_row):
  """`table` [B * K, C] (rows sorted longest first, `lengths` theirs) cut into `CHAR_TIERS`:
  a tuple of [B, K_i, C_i], or None when C < 8 or a row is longer than its tier."""
  width = table.shape[1]
  if width < 8:
    return None
  counts = [int(np.ceil(share * per_row)) for share, _ in CHAR_TIERS[:-1]]
  counts.append(per_row - sum(counts))
  if counts[-1] < 1:          # a short sentence's small table: not worth cutting
    return None
  tiers, first = [], 0
  for (_, share), count in zip(CHAR_TIERS, counts):
    tier_width, last = int(width * share), first + size * count
    if lengths[first] > tier_width:
      return None
    tiers.append(table[first:last, :tier_width].reshape(size, count, tier_width))
    first = last
  return tuple(tiers)


def char_table(chars) -> np.ndarray:
  """`dedup_chars`'s `chars` (a table or its tiers) -> the table [R, C] that `char_index`
  indexes, shorter tiers padded back to C."""
  tiers = chars if isinstance(chars, tuple) else (chars,)
  width = tiers[0].shape[-1]
  return np.concatenate([np.pad(np.asarray(t).reshape(-1, t.shape[-1]),
                                ((0, 0), (0, width - t.shape[-1]))) for t in tiers])


def map_char_rows(fn, chars) -> jax.Array:
  """`fn` (character ids [N, C_i] -> [N, ...], e.g. the character BiRNN) applied to each tier
  of `dedup_chars`'s `chars`: [R, ...], row r what `fn` gives `char_table(chars)[r]`."""
  tiers = chars if isinstance(chars, tuple) else (chars,)
  return jnp.concatenate([fn(t.reshape(-1, t.shape[-1])) for t in tiers])


def rare_word_drop_probs(vocab: Vocab, counts: collections.Counter,
                         alpha: float) -> np.ndarray:
  """float [len(vocab)]: alpha / (alpha + count) for each word id; 0 for PAD and UNK."""
  probs = np.array([alpha / (alpha + counts[t]) if counts[t] else 0.0 for t in vocab.tokens])
  probs[:vocab.num_reserved] = 0.0
  return probs


def drop_words(words: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Word ids with each replaced by UNK with probability probs[id] (PAD keeps p = 0)."""
  drop = rng.random(words.shape) < probs[words]
  return np.where(drop, UNK, words).astype(words.dtype)


def load_bilm(workdir: str, restore_run) -> bilm_lib.FrozenFeatures:
  """The frozen biLM of a trained bilm_time_machine run, or a ConfigError naming the key.
  `restore_run` reads it (the task's, from the runner)."""
  if restore_run is None:
    raise errors.ConfigError(f"config.model.bilm_workdir={workdir!r} needs a trained run "
                             "reader: build the task with restore_run= (the runner does).")
  try:
    return bilm_lib.FrozenFeatures.from_workdir(workdir, restore_run)
  except errors.BirnnError as e:
    raise errors.ConfigError(f"config.model.bilm_workdir={workdir!r} is invalid: {e}") from e


# Model ----------------------------------------------------------------------------------------

class WordDropout(nn.Module):
  """Replaces each real word id by UNK with probability `rate` (training only); PAD stays."""
  rate: float

  @nn.compact
  def __call__(self, words: jax.Array, deterministic: bool = True) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return words
    drop = jax.random.bernoulli(self.make_rng("dropout"), self.rate, words.shape)
    return jnp.where(drop & (words != PAD), UNK, words)


class PosTagger(nn.Module):
  """(words [B, T], chars, char_index, lengths [B], bilm) -> logits [B, T, num_tags].

  x_t = [E w_t ; char_embedder(chars_t)], H = encoder(x, lengths), O_t = H_t W_hq + b_q.
  `chars` is [B, T, C] with `char_index` None, or the deduplicated table (or its tiers) with
  `char_index` [B, T] (see `dedup_chars`); both give the same logits.
  `bilm` is None or frozen biLM layer states [B, T, K, F]; then x_t also holds ELMo's
  gamma * sum_k softmax(w)_k bilm_{t,k} with w and gamma learned here.
  `extra` is None or other per-token features [B, T, F] appended to x_t last (e.g. the NER
  task's casing embedding); None leaves the model exactly as without it.
  """
  num_words: int
  word_embed_size: int
  char_embedder: nn.Module
  encoder: nn.Module
  num_tags: int
  word_dropout: float = 0.0
  embed_dropout: float = 0.0
  output_dropout: float = 0.0

  @nn.compact
  def __call__(self, words, chars, char_index, lengths, bilm=None,
               deterministic: bool = True, extra=None):
    words = WordDropout(self.word_dropout, name="word_dropout")(words, deterministic)
    w = nn.Embed(self.num_words, self.word_embed_size, name="embed")(words)
    if char_index is None:
      c = self.char_embedder(chars)
    else:
      c = jnp.take(map_char_rows(self.char_embedder, chars), char_index, axis=0)
    features = [w, c.astype(w.dtype)]
    if bilm is not None:
      mix = self.param("bilm_mix", nn.initializers.zeros, (bilm.shape[2],))
      gamma = self.param("bilm_gamma", nn.initializers.ones, ())
      elmo = gamma * jnp.einsum("k,btkf->btf", jax.nn.softmax(mix), bilm)
      features.append(elmo.astype(w.dtype))
    if extra is not None:
      features.append(extra.astype(w.dtype))
    x = jnp.concatenate(features, axis=-1)
    x = nn.Dropout(self.embed_dropout)(x, deterministic=deterministic)
    h, _ = self.encoder(x, lengths, deterministic=deterministic)
    h = nn.Dropout(self.output_dropout)(h, deterministic=deterministic)
    return nn.Dense(self.num_tags, name="head")(h).astype(jnp.float32)


def model_from_config(model_config, num_words: int, num_chars: int,
                      num_tags: int = len(TAGS)) -> PosTagger:
  """The tagger `config.model` describes; `num_tags` outputs per token (other tag sets,
  e.g. the NER task's, reuse the same encoder)."""
  m = model_config
  dtype = jnp.dtype(m.dtype)
  char_embedder = models.CharBiRNNEmbedder(
      num_chars=num_chars, embed_size=m.char_embed_size, hidden_size=m.char_hidden_size,
      cell=m.cell, impl=m.impl, dtype=dtype)
  return PosTagger(num_words=num_words, word_embed_size=m.embed_size,
                   char_embedder=char_embedder, encoder=models.birnn_from_config(m),
                   num_tags=num_tags, word_dropout=m.word_dropout,
                   embed_dropout=m.embed_dropout, output_dropout=m.output_dropout)


def check_encoder_config(config) -> None:
  """Checks the keys of the word + character encoder and its batches, which the tagging
  tasks share (POS, NER): a ConfigError naming the first impossible one."""
  d, m = config.data, config.model
  config_keys.check_at_least(config, {"data.max_length": 1, "data.min_freq": 1,
                                     "data.max_chars": 2, "data.pad_to": 1,
                                     "data.eval_batch_size": 1, "model.char_embed_size": 1,
                                     "model.char_hidden_size": 1})
  config_keys.check(d.word_dropout_alpha >= 0, "data.word_dropout_alpha",
                   d.word_dropout_alpha, ">= 0 (0 disables)")
  for key in ("word_dropout", "embed_dropout", "output_dropout"):
    config_keys.check(0.0 <= m[key] < 1.0, f"model.{key}", m[key], "a rate in [0, 1)")


# Task -----------------------------------------------------------------------------------------

class WordCharTask(base.Task):
  """The data side of a word + character tagger, which POS and NER share: vocabularies built
  from the training sentences (words normalised, characters as written) and kept in the
  workdir, every split's examples, rare-word dropout and the step-indexed batcher. A
  subclass sets `self.sentences` ({split: [[(form, tag), ...]]}), defines `encode`, then
  calls `build_inputs()` (training) or `load_inputs()` (inference: the workdir alone).

  Predicting (`predict_ids`, `tag_sentences`) batches sentences by length into batches
  padded to a power of two (`batching.bucket_length`), so a file of any lengths compiles a
  few shapes; `prediction_fn` (the subclass's) maps a batch's model inputs to label ids
  [B, T] naming `label_names`.
  """

  label_names: tuple[str, ...] = ()

  @abc.abstractmethod
  def encode(self, sentences, tagged: bool) -> list[batching.Example]:
    """Sentences of (form, tag) pairs (tag ignored unless `tagged`) -> Examples."""

  def normalize(self, form: str) -> str:
    """The key a word form is looked up by in the word vocabulary."""
    return form.lower() if self._lowercase else form

  @functools.cached_property
  def _lowercase(self) -> bool:
    # Read once: `normalize` runs for every token of a corpus, and a ConfigDict lookup
    # costs about as much as the lowercasing itself.
    return self.config.data.lowercase

  def without_long_sentences(self, train: list) -> list:
    """The training sentences of at most `data.max_length` words. Longer ones (real
    treebanks have a few) are left out of training, counted in `long_train_sentences`
    (logged, and in results.json); evaluation and prediction tag them in full."""
    limit = self.config.data.max_length
    kept = [s for s in train if len(s) <= limit]
    self.long_train_sentences = len(train) - len(kept)
    if self.long_train_sentences:
      logging.warning("Training on %d of %d sentences: %d are longer than data.max_length=%d "
                      "words (the longest has %d); evaluation and prediction tag them in full.",
                      len(kept), len(train), self.long_train_sentences, limit,
                      max(len(s) for s in train))
    return kept

  def build_inputs(self) -> None:
    """Vocabularies (a saved one is reused, a different one refused: `common.workdir_vocab`),
    examples of every split, word-dropout probabilities and the training batcher."""
    d, train = self.config.data, self.sentences["train"]
    normalized = [[self.normalize(w) for w, _ in s] for s in train]
    counts = collections.Counter(w for s in normalized for w in s)
    built_words = Vocab.build(normalized, min_freq=d.min_freq)
    built_chars = Vocab.build(w for s in train for w, _ in s)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.word_vocab = common.workdir_vocab(self.workdir / WORD_VOCAB_FILE, built_words)
    self.char_vocab = common.workdir_vocab(self.workdir / CHAR_VOCAB_FILE, built_chars)
    self.char_encoder = CharEncoder(self.char_vocab, d.max_chars)
    self.examples = {split: self.encode(sentences, tagged=True)
                     for split, sentences in self.sentences.items()}
    self.train_forms = frozenset(counts)
    self.word_drop_probs = rare_word_drop_probs(self.word_vocab, counts, d.word_dropout_alpha)
    self.padding = dict(pad_to=d.pad_to, max_chars=d.max_chars, char_pad_to=d.max_chars)
    self.batcher = batching.StepBatcher(self.examples["train"], self.config.train.batch_size,
                                        self.config.seed, **self.padding)
    self._eval_cache: dict[str, list] = {}

  def load_inputs(self) -> None:
    """What predicting needs, from the workdir alone: the saved vocabularies (no corpus)."""
    d = self.config.data
    self.word_vocab = common.saved_vocab(self.workdir / WORD_VOCAB_FILE)
    self.char_vocab = common.saved_vocab(self.workdir / CHAR_VOCAB_FILE)
    self.char_encoder = CharEncoder(self.char_vocab, d.max_chars)
    self.sentences, self.examples, self.train_forms = {}, {}, frozenset()
    self.padding = dict(pad_to=d.pad_to, max_chars=d.max_chars, char_pad_to=d.max_chars)
    self._eval_cache = {}

  def steps_per_epoch(self):
    return self.batcher.steps_per_epoch

  # Predictions ------------------------------------------------------------------------------

  def ids_from_outputs(self, outputs) -> jax.Array:
    """The model's outputs -> predicted label ids int [B, T] (of `label_names`)."""
    raise NotImplementedError

  def eval_ids(self, outputs) -> jax.Array:
    return self.ids_from_outputs(outputs)

  def split_batches(self, split: str):
    """(example indices, model-ready batch) covering the split once (`fixed_batches`)."""
    raise NotImplementedError

  def indexed_eval_batches(self, split: str) -> list[tuple[np.ndarray, dict]]:
    """`split_batches(split)`, made once: what `eval_batches` and `split_predictions` read."""
    if split not in self._eval_cache:
      self._eval_cache[split] = list(self.split_batches(split))
    return self._eval_cache[split]

  def eval_batches(self, split):
    return [batch for _, batch in self.indexed_eval_batches(split)]

  def split_predictions(self, params, split: str, evaluate) -> list[np.ndarray]:
    """Each example's predicted label ids [len(words)], in the split's order: the eval
    step's own (`extra_results`' `evaluate`), so no second program and no second pass."""
    _, ids = evaluate(params, split, predictions=True)
    examples = self.examples[split]
    out: list[np.ndarray | None] = [None] * len(examples)
    for (idx, _), batch_ids in zip(self.indexed_eval_batches(split), ids):
      for row, i in enumerate(idx):
        out[i] = batch_ids[row, :len(examples[i].words)]
    return out

  def prediction_fn(self):
    """A jitted `(params, *model_inputs) -> label ids [B, T]`, made once."""
    if self._prediction_fn is None:
      model = self.model()
      self._prediction_fn = jax.jit(lambda p, *inputs: self.ids_from_outputs(
          model.apply({"params": p}, *inputs, deterministic=True)))
    return self._prediction_fn

  def add_prediction_features(self, batch, sentences, rows) -> dict:
    """The batch plus features the model needs beyond words and characters (POS: biLM)."""
    del sentences, rows
    return batch

  def prediction_batches(self, sentences, batch_size: int):
    """(sentence indices, model-ready batch) covering `sentences` (lists of forms) once,
    sorted by length, each batch padded to `batching.bucket_length` of its longest."""
    examples = self.encode([[(unicodedata.normalize("NFC", w), self.label_names[0])
                             for w in s] for s in sentences], tagged=False)
    for idx in batching.eval_plan([len(ex.words) for ex in examples], batch_size):
      longest = max(len(examples[i].words) for i in idx)
      padding = dict(self.padding, pad_to=batching.bucket_length(longest,
                                                                 self.config.data.pad_to))
      batch = self.add_prediction_features(
          batching.make_batch(examples, idx, batch_size, **padding), sentences, idx)
      # One sentence at a time (--text): the dense [1, T, C] characters compile in about
      # half the time of the deduplicated tiers, which save nothing there (same logits).
      yield idx, dedup_chars(batch) if batch_size > 1 else {**batch, "char_index": None}

  def example_batch(self):
    if not self.inference:
      return self.train_batch(0)
    return next(iter(self.prediction_batches([["x"]], 1)))[1]

  def predict_ids(self, params, sentences, batch_size: int | None = None
                  ) -> list[np.ndarray]:
    """The predicted label ids (int [n_i]) of each sentence (a list of forms), in order."""
    fn = self.prediction_fn()
    out: list[np.ndarray | None] = [None] * len(sentences)
    for idx, batch in self.prediction_batches(
        sentences, batch_size or self.config.data.eval_batch_size):
      inputs = self.model_inputs(batch)
      self.compiled_shapes.add(str(jax.tree.map(np.shape, inputs)))
      ids = np.asarray(fn(params, *inputs))
      for row, i in enumerate(idx):
        out[i] = ids[row, :len(sentences[i])]
    return out

  def tag_sentences(self, params, sentences, batch_size: int | None = None
                    ) -> list[list[str]]:
    """Each sentence's predicted labels (`label_names`), one per form."""
    return [[self.label_names[int(t)] for t in ids]
            for ids in self.predict_ids(params, sentences, batch_size)]

  def dropped_batch(self, step: int) -> dict:
    """Training batch `step` with rare words replaced by UNK (a function of seed and step),
    before any features and the character dedup."""
    batch = self.batcher(step)
    if self.config.data.word_dropout_alpha > 0:
      rng = np.random.default_rng([self.config.seed, 17, step])
      batch["words"] = drop_words(batch["words"], self.word_drop_probs, rng)
    return batch


class Task(WordCharTask):
  """UPOS tagging on UD English-EWT; dev is evaluated during training, dev and test at the end.

  Files (`--mode=predict --input`): CoNLL-U in, the same CoNLL-U out with only the UPOS
  column replaced; plain text (one pre-tokenised sentence per line) in, CoNLL-U out.
  """

  eval_splits = ("dev", "test")
  label_names = TAGS
  file_formats = {"conllu": (".conllu", ".conllu.xz"), "txt": (".txt",)}

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    d, m = config.data, config.model
    check_encoder_config(config)
    config_keys.check(d.train_sentences >= 0, "data.train_sentences", d.train_sentences,
                     ">= 0 (0 = all of train)")
    config_keys.check(m.bilm_layers in BILM_LAYERS, "model.bilm_layers", m.bilm_layers,
                     f"one of {BILM_LAYERS}")

    config_keys.check(0.0 < d.dev_fraction < 1.0, "data.dev_fraction", d.dev_fraction,
                     "a fraction in (0, 1)")
    files = {"train": d.train_file, "dev": d.dev_file, "test": d.test_file}
    config_keys.check(d.train_file or not (d.dev_file or d.test_file), "data.train_file",
                     d.train_file, "a path when data.dev_file or data.test_file is set")
    # A wrong biLM workdir is refused before the treebank is read.
    self.bilm = load_bilm(m.bilm_workdir, restore_run) if m.bilm_workdir else None
    self._model = None
    self._prediction_fn = None
    if inference:
      self.load_inputs()
      self.sources, self._bilm_inputs = {}, {}
      return
    splits = conllu_data.load_treebank(
        None if d.train_file else conllu_data.treebank_folder(d.dir or None), files=files,
        dev_fraction=d.dev_fraction, seed=config.seed)
    splits = splits._replace(train=self.without_long_sentences(splits.train))
    self.sources = splits.sources
    if d.train_sentences:
      splits = splits._replace(train=splits.train[:d.train_sentences])
    self.sentences = {split: getattr(splits, split) for split in conllu_data.SPLITS}
    self.build_inputs()
    self._bilm_inputs = {name: self.encode_bilm(sentences)
                         for name, sentences in self.sentences.items()}

  def encode(self, sentences, tagged: bool) -> list[batching.Example]:
    """Sentences of (form, UPOS tag) pairs (tag ignored unless `tagged`) -> Examples."""
    return batching.encode_tagged(sentences, self.word_vocab,
                                  conllu_data.UPOS_IDS if tagged else None,
                                  self.char_encoder, lowercase=self.config.data.lowercase)

  # Trainer interface ------------------------------------------------------------------------

  def model(self):
    if self._model is None:
      self._model = model_from_config(self.config.model, len(self.word_vocab),
                                      len(self.char_vocab))
    return self._model

  def model_inputs(self, batch):
    return (batch["words"], batch["chars"], batch["char_index"], batch["lengths"],
            batch.get("bilm"))

  def encode_bilm(self, sentences) -> list | None:
    """Each sentence's biLM input (`FrozenFeatures.encode`), or None without a biLM."""
    if self.bilm is None:
      return None
    return [self.bilm.encode([form for form, _ in s]) for s in sentences]

  def with_bilm(self, batch, bilm_inputs, rows) -> dict:
    """The batch plus its rows' frozen biLM features "bilm" [B, T, K, 2H] (K = L + 1, or 1
    for 'context_free'); unchanged when `bilm_inputs` (every example's `encode_bilm`
    output) is None. `rows`: the example index of each real row."""
    if bilm_inputs is None:
      return batch
    features = self.bilm([bilm_inputs[i] for i in rows], *batch["words"].shape)
    if self.config.model.bilm_layers == "context_free":
      features = features[:, :, :1]
    return {**batch, "bilm": features}

  def fixed_batches(self, examples, bilm_inputs, batch_size: int):
    """(example indices, model-ready batch) covering `examples` once, sorted by length."""
    for idx in batching.eval_plan([len(ex.words) for ex in examples], batch_size):
      batch = batching.make_batch(examples, idx, batch_size, **self.padding)
      yield idx, dedup_chars(self.with_bilm(batch, bilm_inputs, idx))

  def train_batch(self, step):
    batch = self.with_bilm(self.dropped_batch(step), self._bilm_inputs["train"],
                           self.batcher.indices(step))
    return dedup_chars(batch)

  def split_batches(self, split):
    return self.fixed_batches(self.examples[split], self._bilm_inputs[split],
                              self.config.data.eval_batch_size)

  def metric_sums(self, logits, batch):
    return losses.token_classification_sums(logits, batch["tags"], batch["mask"])

  # Predictions ------------------------------------------------------------------------------

  def ids_from_outputs(self, outputs):
    return jnp.argmax(outputs, axis=-1)

  def add_prediction_features(self, batch, sentences, rows):
    bilm_inputs = self.encode_bilm([[(w, None) for w in sentences[i]] for i in rows])
    return self.with_bilm(batch, bilm_inputs, range(len(rows)))

  def extra_results(self, params, evaluate):
    """Test accuracy per gold tag and on words unseen in training; vocabulary sizes."""
    sentences = self.sentences["test"]
    predicted = self.split_predictions(params, "test", evaluate)
    correct, count = collections.Counter(), collections.Counter()
    unseen_correct = unseen_count = 0
    for sentence, tags in zip(sentences, predicted):
      for (form, gold), tag_id in zip(sentence, tags):
        ok = TAGS[int(tag_id)] == gold
        correct[gold] += ok
        count[gold] += 1
        if self.normalize(form) not in self.train_forms:
          unseen_correct += ok
          unseen_count += 1
    return {
        "test_per_tag_accuracy": {t: correct[t] / count[t] for t in TAGS if count[t]},
        "test_per_tag_count": {t: count[t] for t in TAGS if count[t]},
        "test_unseen_accuracy": unseen_correct / max(unseen_count, 1),
        "test_unseen_count": unseen_count,
        "word_vocab_size": len(self.word_vocab),
        "data_sources": self.sources,
        "sentences": {split: len(self.sentences[split]) for split in conllu_data.SPLITS},
        "char_vocab_size": len(self.char_vocab),
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "train_sentences_over_max_length": self.long_train_sentences,
    }

  # Experiment level -------------------------------------------------------------------------

  @classmethod
  def variants(cls, config):
    if not config.compare_bilm:
      return {"": config}
    config_keys.check(bool(config.model.bilm_workdir), "model.bilm_workdir",
                     config.model.bilm_workdir, "a trained biLM's workdir when compare_bilm")
    return base.override_variants(config, BILM_VARIANTS, switch="compare_bilm")

  @classmethod
  def summarize(cls, config, results):
    if list(results) == [""]:
      return results[""], ""
    keys = ("test_accuracy", "dev_accuracy", "test_unseen_accuracy", "test_unseen_count",
            "train_seconds", "num_params")
    summary = {name: {k: r[k] for k in keys} for name, r in results.items()}
    base_acc = summary["no_bilm"]["test_accuracy"]
    n = sum(results["no_bilm"]["test_per_tag_count"].values())
    # Unpaired (conservative) standard error of a difference of two test accuracies.
    stderr = float(np.sqrt(2 * base_acc * (1 - base_acc) / n))
    for name in ("context_free", "elmo"):
      summary[f"{name}_gain"] = summary[name]["test_accuracy"] - base_acc
    summary["gain_stderr"] = stderr
    summary["train_sentences"] = config.data.train_sentences or "all"
    helps = summary["elmo_gain"] > 2 * stderr
    summary["elmo_helps"] = bool(helps)
    verdict = (
        f"{'ELMo features help' if helps else 'No clear gain from ELMo features'}: test UPOS "
        f"{summary['elmo']['test_accuracy']:.2%} with the biLM's contextual vectors vs "
        f"{base_acc:.2%} without ({summary['elmo_gain']:+.2%}, stderr {stderr:.2%}) and "
        f"{summary['context_free']['test_accuracy']:.2%} with its context-free embedding "
        f"only ({summary['context_free_gain']:+.2%}); unseen words "
        f"{summary['elmo']['test_unseen_accuracy']:.1%} vs "
        f"{summary['no_bilm']['test_unseen_accuracy']:.1%}.")
    return summary, verdict

  def predict(self, params, text):
    """`word/TAG` for each token of `text` (see `tokenize`), one line."""
    words = tokenize(text, lambda w: self.normalize(w) in self.word_vocab)
    if not words:
      raise errors.InputError("--text has no words to tag.")
    tags = self.tag_sentences(params, [words], batch_size=1)[0]
    return " ".join(f"{w}/{t}" for w, t in zip(words, tags))

  def read_records(self, fmt, file, path):
    if fmt == "conllu":
      return columns.read_blocks(file, path, columns.CONLLU)
    return columns.read_lines(file, path)

  def predict_records(self, params, fmt, records):
    """CoNLL-U blocks with their UPOS column predicted (a block without words, e.g. a file's
    closing comments, is kept as it is); plain-text lines as CoNLL-U sentences."""
    sentences = [r.forms if fmt == "conllu" else r.tokens for r in records]
    words = [i for i, s in enumerate(sentences) if s]
    tags = dict(zip(words, self.tag_sentences(params, [sentences[i] for i in words])))
    if fmt == "conllu":
      return [r.with_column(tags.get(i, [])) for i, r in enumerate(records)]
    return [columns.conllu_sentence(r.number, r.text, r.tokens, tags[i])
            for i, r in enumerate(records)]

  def evaluate_file(self, params, path):
    """UPOS accuracy on a CoNLL-U file, per gold tag, and the confusion counts."""
    gold = conllu_data.read_conllu(path)
    predicted = self.tag_sentences(params, [[w for w, _ in s] for s in gold])
    return common.tagging_scores(gold, predicted, TAGS)
