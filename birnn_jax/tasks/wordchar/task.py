"""The data side of a word + character tagger, which POS and NER share (`WordCharTask`).

Vocabularies come from train only (words normalised, `data.min_freq`; all characters, as
written) and are saved in the workdir as vocab_words.json / vocab_chars.json
(`common.workdir_vocab`: a saved one is reused, one that the data no longer builds is
refused), so `eval` and `predict` read the ids the checkpoint was trained with. Batches are
length-bucketed and padded (`data.pad_to` words, exactly `data.max_chars` characters) so
jit sees few shapes, and their characters deduplicated (`chars.dedup_chars`).
"""

import abc
import collections
import functools
import unicodedata

from absl import logging
import jax
import numpy as np

from birnn_jax.data import batching
from birnn_jax.data.vocab import Vocab
from birnn_jax.tasks import base
from birnn_jax.tasks import common
from birnn_jax.tasks.wordchar.chars import CharEncoder, dedup_chars, dedup_common
from birnn_jax.tasks.wordchar.word_dropout import drop_words, rare_word_drop_probs

WORD_VOCAB_FILE = "vocab_words.json"
CHAR_VOCAB_FILE = "vocab_chars.json"
# A host batch's arrays with a time axis (axis 1), padded with zeros (PAD, no tag, masked).
_TIME_KEYS = ("words", "tags", "mask", "chars", "bilm")


def _pad_steps(x: np.ndarray, steps: int) -> np.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, steps - x.shape[1])
  return np.pad(x, pad)


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

  def use_model(self, model) -> None:
    """Predict with `model` from now on, in place of this task's own: one with the same
    `apply` contract and outputs (e.g. `training.ensemble.Ensemble` of its members)."""
    self._model, self._prediction_fn = model, None

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

  def train_batch(self, step: int) -> dict:
    return dedup_chars(self.host_batch(step))

  def host_batch(self, step: int) -> dict:
    """Training batch `step` before its characters are deduplicated: `dropped_batch`, plus
    whatever features the task adds (POS: the biLM's)."""
    return self.dropped_batch(step)

  def member_train_batch(self, tasks, step: int) -> dict:
    """Each member's batch `step` padded to the longest of them (padding changes nothing a
    model computes on real tokens), its characters deduplicated in one layout
    (`dedup_common`), stacked [N, ...]."""
    batches = [t.host_batch(step) for t in tasks]
    steps = max(b["words"].shape[1] for b in batches)
    padded = [{k: _pad_steps(v, steps) if k in _TIME_KEYS else v for k, v in b.items()}
              for b in batches]
    return base.stack_batches(dedup_common(padded), f"training batch {step}")

  def dropped_batch(self, step: int) -> dict:
    """Training batch `step` with rare words replaced by UNK (a function of seed and step),
    before any features and the character dedup."""
    batch = self.batcher(step)
    if self.config.data.word_dropout_alpha > 0:
      rng = np.random.default_rng([self.config.seed, 17, step])
      batch["words"] = drop_words(batch["words"], self.word_drop_probs, rng)
    return batch
