"""Named-entity recognition with a BiLSTM-CRF on UNER Danish-DDT (PER, ORG, LOC in IOB2).

Model: the word taggers' encoder (`wordchar.WordCharTagger`): word embedding (lowercased
words, word dropout) + character BiLSTM (case kept) [+ with `model.casing_embed_size` > 0, an embedding
of the word's casing class, `CASINGS`: lower, initial_cap, all_caps, mixed, numeric,
has_digit, punct (Reimers & Gurevych 2017), computed in the graph from its character ids]
-> a stacked BiLSTM over the sentence -> per-token scores O_t = H_t W_hq + b_q, here one per
IOB2 label. Two heads read those scores:
- `model.head='crf'` (Huang et al. 2015; Lample et al. 2016): the scores are a linear-chain
  CRF's emissions, with learned tag-to-tag transition, start and end scores
  (`birnn_jax.crf`). Training minimises the sentence's negative log-likelihood, whose
  partition function is the CRF's forward scan; prediction is Viterbi constrained to valid
  IOB2 (`crf.bio_constraints`: I-X only after B-X or I-X), so it never emits an invalid
  sequence.
- `model.head='softmax'`: each token's label is predicted on its own (cross-entropy per
  token, argmax), which can emit invalid sequences such as `O I-PER`; their rate is reported.
With `model.tag_scheme='iobes'` the model's labels are BIOES (`IOBES_LABELS`: an entity is
S-X alone or B-X I-X* E-X; Lample et al. 2016), Viterbi is constrained to valid BIOES
(`crf.iobes_constraints`), and predictions are mapped back to IOB2 ids (E-X -> I-X, S-X ->
B-X) before anything is scored; the default 'iob2' predicts `LABELS` directly.

`compare_variants=True` (the default) trains three models on the same data: `crf`
(bidirectional + CRF), `softmax` (bidirectional + softmax) and `crf_forward` (forward-only +
CRF, whose label at t can only read words 1..t).

Metrics (`entities`): entity-level micro F1 as seqeval computes it, in its default
(conlleval) and its strict IOB2 mode. During training the evaluation metrics (`f1`, `precision`,
`recall`, `invalid_rate`) are counted inside the jitted eval step (`entity_counts`, tested
equal to seqeval); results.json's `dev_f1`, `test_f1`, `test_f1_strict`,
`test_per_type_f1`, ... come from seqeval itself on the final model (`score`).

Data and batches: `data.dir` is any folder of UNER files (`*-train.iob2`, `*-dev.iob2`, `*-test.iob2`,
plain or .xz, e.g. another UNER language) or a root holding `uner_danish_ddt/`; unset,
$BIRNN_DATA_DIR, then the bundled copy is read (`birnn_jax.data.iob2`). Vocabularies come
from train only and are saved in the workdir (vocab_words.json, vocab_chars.json); batches
as POS makes them (`wordchar.WordCharTask`).

Files and prediction: `--mode=predict --text="..."` tokenises as the POS task does
(`wordchar.tokenize`) and prints the sentence with its entities bracketed, then one
`TYPE: words` line per entity; IOB2 in gives the same file out with the tag column
predicted, plain text in gives one JSON line of entities per sentence (`read_records`,
`predict_records`); `--mode=eval --input` scores any IOB2 file (`evaluate_file`).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from birnn_jax.tasks import config_keys
from birnn_jax import crf as crf_lib
from birnn_jax import errors
from birnn_jax.data import batching
from birnn_jax.data import columns
from birnn_jax.data import iob2
from birnn_jax.data.vocab import PAD_TOKEN, Vocab
from birnn_jax.tasks import base
from birnn_jax.tasks import common
from birnn_jax.tasks import losses
from birnn_jax.tasks import wordchar
from birnn_jax.tasks.entities import (LABELS, SCHEMES, entity_counts, entity_spans,
                                      f1_from_counts, iob2_ids, scheme_labels, score, to_iobes)

HEADS = ("crf", "softmax")
# compare_variants' models; the first one is what --mode=predict uses.
VARIANTS = {"crf": {"head": "crf", "bidirectional": True},
            "softmax": {"head": "softmax", "bidirectional": True},
            "crf_forward": {"head": "crf", "bidirectional": False}}


# Casing feature ---------------------------------------------------------------------------------

# A word's casing class (Reimers & Gurevych 2017), computed in the graph from its characters.
CASINGS = ("pad", "lower", "initial_cap", "all_caps", "mixed", "numeric", "has_digit",
           "punct")
_C = {name: i for i, name in enumerate(CASINGS)}
# Character classes: 0 padding, 1 lowercase letter, 2 uppercase letter, 3 digit, 4 anything
# else (punctuation, symbols, an unknown character).
_PAD_CHAR, _LOWER, _UPPER, _DIGIT, _OTHER = range(5)


def char_class(token: str) -> int:
  """The class of one character-vocabulary token (the reserved tokens: PAD 0, UNK other)."""
  if token == PAD_TOKEN:
    return _PAD_CHAR
  if len(token) != 1:
    return _OTHER
  if token.isdigit():
    return _DIGIT
  if token.isupper():
    return _UPPER
  if token.islower():
    return _LOWER
  return _OTHER


def char_classes(char_vocab: Vocab) -> tuple[int, ...]:
  """The class of each character id (a model attribute, so the casing is computed in jit)."""
  return tuple(char_class(t) for t in char_vocab.tokens)


def casing_of_classes(classes_NxC) -> jax.Array:
  """int [..., C] character classes of words (0-padded) -> int32 [...] casing ids:
  pad (no characters), numeric (all digits), has_digit, punct (no letters), lower (no
  capital), all_caps (no lowercase letter), initial_cap (only the first is a capital),
  mixed (any other mix, e.g. "McDonald")."""
  count = lambda k: jnp.sum(classes_NxC == k, axis=-1)
  n = jnp.sum(classes_NxC != _PAD_CHAR, axis=-1)
  lower, upper, digit = count(_LOWER), count(_UPPER), count(_DIGIT)
  first_upper = classes_NxC[..., 0] == _UPPER
  out = jnp.where(first_upper & (upper == 1), _C["initial_cap"], _C["mixed"])
  out = jnp.where(lower == 0, _C["all_caps"], out)
  out = jnp.where(upper == 0, _C["lower"], out)
  out = jnp.where(lower + upper == 0, _C["punct"], out)
  out = jnp.where(digit > 0, _C["has_digit"], out)
  out = jnp.where(digit == n, _C["numeric"], out)
  return jnp.where(n == 0, _C["pad"], out).astype(jnp.int32)


def casing(form: str) -> str:
  """The casing class of a word form (host-side; what `casing_of_classes` computes)."""
  return CASINGS[int(casing_of_classes(jnp.array([char_class(c) for c in form] or [0])))]


# Model ------------------------------------------------------------------------------------------

class NerTagger(nn.Module):
  """(words [B, T], chars, char_index, lengths [B]) -> a dict of arrays.

  `emissions` float32 [B, T, K] are the encoder's per-token scores of `labels` (those of
  `scheme`); with the CRF head the dict also holds its `transitions` [K, K], `start` [K]
  and `end` [K] (so the loss can be computed from the outputs alone). With
  `deterministic=True` it also holds `predicted` int32 [B, T]: constrained Viterbi (CRF) or
  the per-token argmax (softmax), as `LABELS` (IOB2) ids whatever the scheme, 0 at padding.
  With `casing_embed_size` > 0 each word's casing class (`CASINGS`, from its characters'
  classes `char_classes`) is embedded and appended to the encoder's x_t.
  """
  encoder: nn.Module        # a wordchar.WordCharTagger, num_tags = len(labels)
  labels: tuple[str, ...] = LABELS
  head: str = "crf"
  scheme: str = "iob2"                 # of `labels`: iob2 | iobes (SCHEMES)
  casing_embed_size: int = 0
  char_classes: tuple[int, ...] = ()   # the class of each character id (casing only)

  @nn.compact
  def __call__(self, words, chars, char_index, lengths, deterministic: bool = True):
    extra = None
    if self.casing_embed_size:
      classes = jnp.asarray(self.char_classes, jnp.int32)
      if char_index is None:
        case = casing_of_classes(classes[chars])
      else:                          # deduplicated rows, maybe in tiers (wordchar.dedup_chars)
        case = jnp.take(wordchar.map_char_rows(lambda t: casing_of_classes(classes[t]), chars),
                        char_index, axis=0)
      extra = nn.Embed(len(CASINGS), self.casing_embed_size, name="casing")(case)
    emissions = self.encoder(words, chars, char_index, lengths, deterministic=deterministic,
                             extra=extra)
    out = {"emissions": emissions}
    if self.head == "crf":
      crf = crf_lib.CRF(len(self.labels),
                        **crf_lib.constraint_attributes(self.labels, self.scheme), name="crf")
      out["transitions"], out["start"], out["end"] = crf.scores()
      if deterministic:
        predicted, _ = crf.decode(emissions, lengths)
    elif deterministic:
      predicted = jnp.argmax(emissions, -1)
    if deterministic:
      out["predicted"] = as_iob2(predicted, lengths, self.labels)
    return out


def as_iob2(predicted_BxT, lengths_B, labels: tuple[str, ...]) -> jax.Array:
  """Label ids of `labels` (a scheme's) -> `LABELS` (IOB2) ids int32 [B, T], 0 at padding."""
  real = jnp.arange(predicted_BxT.shape[1])[None, :] < lengths_B[:, None]
  return jnp.where(real, jnp.asarray(iob2_ids(labels))[predicted_BxT], 0).astype(jnp.int32)


def ensemble_outputs(member_outputs: dict, lengths_B, labels: tuple[str, ...], head: str,
                     scheme: str) -> dict:
  """One `NerTagger`'s outputs from N members' (each array with a leading axis [N]): for
  the CRF the mean of the members' emission, transition, start and end scores, decoded by
  constrained Viterbi; for softmax the log of the members' mean probabilities, decoded
  per token (`losses.mean_log_probabilities`)."""
  if head == "crf":
    out = {k: jnp.mean(member_outputs[k], axis=0)
           for k in ("emissions", "transitions", "start", "end")}
    constraints = {k: np.asarray(v, bool)
                   for k, v in crf_lib.constraint_attributes(labels, scheme).items()}
    predicted, _ = crf_lib.viterbi(out["emissions"], lengths_B, out["transitions"],
                                   out["start"], out["end"], **constraints)
  else:
    out = {"emissions": losses.mean_log_probabilities(member_outputs["emissions"])}
    predicted = jnp.argmax(out["emissions"], -1)
  out["predicted"] = as_iob2(predicted, lengths_B, labels)
  return out


def model_from_config(model_config, num_words: int, num_chars: int,
                      classes: tuple[int, ...] = ()) -> NerTagger:
  """`classes`: the class of each character id (`char_classes`), needed for casing."""
  scheme = config_keys.added_key(model_config, "model.tag_scheme")
  labels = scheme_labels(scheme)
  encoder = wordchar.model_from_config(model_config, num_words, num_chars, num_tags=len(labels))
  size = config_keys.added_key(model_config, "model.casing_embed_size")
  if size and len(classes) != num_chars:
    raise ValueError(f"casing needs the class of each of the {num_chars} character ids, "
                     f"got {len(classes)}.")
  return NerTagger(encoder=encoder, labels=labels, head=model_config.head, scheme=scheme,
                   casing_embed_size=size, char_classes=tuple(classes) if size else ())


def loss_sums(outputs: dict, batch: dict, head: str) -> dict[str, jax.Array]:
  """'loss': the summed negative log-likelihood (per sentence for the CRF, per token for
  softmax), and 'count': the real tokens (the loss is normalised per token)."""
  mask = batch["mask"]
  if head == "crf":
    nll = -crf_lib.log_likelihood(outputs["emissions"], batch["tags"], batch["lengths"],
                                  outputs["transitions"], outputs["start"], outputs["end"])
    loss = jnp.sum(nll)
  else:
    nll = optax.softmax_cross_entropy_with_integer_labels(outputs["emissions"], batch["tags"])
    loss = jnp.sum(jnp.where(mask, nll, 0.0))
  return {"loss": loss, "count": jnp.sum(mask.astype(jnp.float32))}


# Task -------------------------------------------------------------------------------------------

class Task(wordchar.WordCharTask):
  """NER on a UNER corpus; dev is evaluated during training, dev and test at the end.

  Files (`--mode=predict --input`): IOB2 / CoNLL columns in (token in column 2, tag in
  column 3), the same file out with the tag column predicted; plain text (one pre-tokenised
  sentence per line) in, one JSON line per sentence out with its entities.
  """

  eval_splits = ("dev", "test")
  label_names = LABELS   # the model's "predicted" output is IOB2 ids, whatever the scheme
  file_formats = {"iob2": (".iob2", ".iob2.xz", ".conll", ".tsv"), "txt": (".txt",)}

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    d, m = config.data, config.model
    wordchar.check_encoder_config(config)
    casing_size = config_keys.added_key(m, "model.casing_embed_size")
    config_keys.check(casing_size >= 0, "model.casing_embed_size", casing_size,
                     ">= 0 (0 disables)")
    config_keys.check(m.head in HEADS, "model.head", m.head, f"one of {HEADS}")
    self.scheme = config_keys.added_key(m, "model.tag_scheme")
    config_keys.check(self.scheme in SCHEMES, "model.tag_scheme", self.scheme,
                     f"one of {SCHEMES}")
    self.labels = scheme_labels(self.scheme)
    self._model = None
    self._prediction_fn = None
    if inference:
      self.load_inputs()
      self.sources = {}
      return
    corpus = iob2.load_uner(d.dir or None, labels=LABELS)
    self.sources = corpus.sources
    self.sentences = {split: getattr(corpus, split) for split in iob2.SPLITS}
    self.sentences["train"] = self.without_long_sentences(self.sentences["train"])
    self.build_inputs()

  def encode(self, sentences, tagged: bool) -> list[batching.Example]:
    """Sentences of (token, IOB2 label) pairs (label ignored unless `tagged`) -> Examples,
    whose tags are ids of the scheme's labels."""
    if tagged and self.scheme == "iobes":
      sentences = [list(zip([w for w, _ in s], to_iobes([t for _, t in s])))
                   for s in sentences]
    tag_ids = {label: i for i, label in enumerate(self.labels)}
    return batching.encode_tagged(sentences, self.word_vocab, tag_ids if tagged else None,
                                  self.char_encoder, lowercase=self.config.data.lowercase)

  def fixed_batches(self, examples, batch_size: int):
    """(example indices, model-ready batch) covering `examples` once, sorted by length."""
    for idx in batching.eval_plan([len(ex.words) for ex in examples], batch_size):
      yield idx, wordchar.dedup_chars(batching.make_batch(examples, idx, batch_size,
                                                     **self.padding))

  # Trainer interface ------------------------------------------------------------------------

  def model(self):
    if self._model is None:
      self._model = model_from_config(self.config.model, len(self.word_vocab),
                                      len(self.char_vocab), char_classes(self.char_vocab))
    return self._model

  def model_inputs(self, batch):
    return batch["words"], batch["chars"], batch["char_index"], batch["lengths"]

  def split_batches(self, split):
    return self.fixed_batches(self.examples[split], self.config.data.eval_batch_size)

  def metric_sums(self, outputs, batch):
    sums = loss_sums(outputs, batch, self.config.model.head)
    if "predicted" in outputs:   # evaluation: decoding is part of the model's eval output
      pred = outputs["predicted"]                                # IOB2 ids
      gold = jnp.asarray(iob2_ids(self.labels))[batch["tags"]]   # scheme ids -> IOB2 ids
      sums["accuracy"] = jnp.sum(jnp.where(batch["mask"], pred == gold, False)
                                 .astype(jnp.float32))
      sums.update(entity_counts(pred, gold, batch["lengths"]))
    return sums

  def derived_metrics(self, means):
    if "entities_gold" not in means:
      return means
    means = dict(means)
    # Means are sums / token count, so ratios of them are ratios of the sums.
    counts = [means.pop(k) for k in ("entities_correct", "entities_predicted",
                                     "entities_gold")]
    invalid, sequences = means.pop("invalid_sequences"), means.pop("sequences")
    means.update(f1_from_counts(*counts))
    means["invalid_rate"] = invalid / sequences if sequences else 0.0
    return means

  # Predictions ------------------------------------------------------------------------------

  def ids_from_outputs(self, outputs):
    return outputs["predicted"]

  def ensemble_outputs(self, member_outputs, inputs):
    return ensemble_outputs(member_outputs, inputs[3], self.labels, self.config.model.head,
                            self.scheme)

  def extra_results(self, params, evaluate):
    """seqeval scores of dev and test (replacing the in-graph dev_f1 / test_f1 with the
    same numbers from seqeval itself), per-type F1, invalid-sequence rates, sizes."""
    results = {}
    for split in ("dev", "test"):
      gold = [[label for _, label in s] for s in self.sentences[split]]
      predicted = [[LABELS[int(t)] for t in ids]
                   for ids in self.split_predictions(params, split, evaluate)]
      scores = score(gold, predicted)
      results.update({f"{split}_{k}": v for k, v in scores.items()})
    results.update({
        "sentences": {split: len(s) for split, s in self.sentences.items()},
        "data_sources": self.sources,
        "word_vocab_size": len(self.word_vocab),
        "char_vocab_size": len(self.char_vocab),
        "num_params": common.num_params(params),
        "train_sentences_over_max_length": self.long_train_sentences,
    })
    return results

  def predict(self, params, text):
    """The sentence with its entities bracketed, then one `TYPE: words` line per entity."""
    tokens = wordchar.tokenize(text, lambda w: self.normalize(w) in self.word_vocab)
    if not tokens:
      raise errors.InputError("--text has no words to tag.")
    labels = self.tag_sentences(params, [tokens], batch_size=1)[0]
    spans = entity_spans(tokens, labels)
    words = list(tokens)
    for span in spans:
      words[span["start"]] = "[" + words[span["start"]]
      words[span["end"] - 1] = words[span["end"] - 1] + "]" + span["type"]
    lines = [" ".join(words)]
    lines += [f"{span['type']}: {span['text']}" for span in spans] or ["(no entities found)"]
    return "\n".join(lines)

  def read_records(self, fmt, file, path):
    if fmt == "iob2":
      return columns.read_blocks(file, path, columns.IOB2)
    return columns.read_lines(file, path)

  def predict_records(self, params, fmt, records):
    """IOB2 blocks with their tag column predicted; plain-text lines as JSON lines
    `{"line", "tokens", "entities": [{"type", "start", "end", "text"}]}` (end exclusive)."""
    sentences = [r.forms if fmt == "iob2" else r.tokens for r in records]
    words = [i for i, s in enumerate(sentences) if s]
    labels = dict(zip(words, self.tag_sentences(params, [sentences[i] for i in words])))
    if fmt == "iob2":
      return [r.with_column(labels.get(i, [])) for i, r in enumerate(records)]
    return [json.dumps({"line": r.number, "tokens": r.tokens,
                        "entities": entity_spans(r.tokens, labels[i])},
                       ensure_ascii=False) + "\n" for i, r in enumerate(records)]

  def evaluate_file(self, params, path):
    """Entity F1 (seqeval, per type) on an IOB2 file, token accuracy and the confusion
    counts of the labels."""
    gold = iob2.read_iob2(path, labels=LABELS)
    predicted = self.tag_sentences(params, [[w for w, _ in s] for s in gold])
    scores, confusion = common.tagging_scores(gold, predicted, LABELS)
    scores.update(score([[t for _, t in s] for s in gold], predicted))
    return scores, confusion

  # Experiment level -------------------------------------------------------------------------

  @classmethod
  def variants(cls, config):
    if not config.compare_variants:
      return {"": config}
    return base.override_variants(config, VARIANTS, switch="compare_variants")

  @classmethod
  def summarize(cls, config, results):
    if list(results) == [""]:
      return results[""], ""
    keys = ("test_f1", "dev_f1", "test_f1_strict", "dev_f1_strict", "test_precision",
            "test_recall", "test_per_type_f1", "test_invalid_rate", "test_invalid_sequences",
            "dev_invalid_rate", "train_seconds", "steps", "num_params")
    summary = {name: {k: r[k] for k in keys} for name, r in results.items()}
    crf, soft, fwd = (summary[n] for n in VARIANTS)
    comparison = {
        "crf_minus_softmax_test_f1": crf["test_f1"] - soft["test_f1"],
        "bidirectional_minus_forward_test_f1": crf["test_f1"] - fwd["test_f1"],
        "crf_minus_softmax_dev_f1": crf["dev_f1"] - soft["dev_f1"],
        "bidirectional_minus_forward_dev_f1": crf["dev_f1"] - fwd["dev_f1"],
        "softmax_test_invalid_rate": soft["test_invalid_rate"],
        "constrained_invalid_sequences": crf["test_invalid_sequences"] +
                                         fwd["test_invalid_sequences"],
    }
    targets = {
        "crf_test_f1_at_least_75": crf["test_f1"] >= 0.75,
        "crf_beats_softmax_by_1": comparison["crf_minus_softmax_test_f1"] >= 0.01,
        "bidirectional_beats_forward_by_10": comparison[
            "bidirectional_minus_forward_test_f1"] >= 0.10,
        "constrained_decoding_never_invalid": comparison["constrained_invalid_sequences"] == 0,
    }
    summary["comparison"] = comparison
    summary["targets_met"] = targets
    missed = [k for k, ok in targets.items() if not ok]
    verdict = (
        f"{'Targets missed: ' + ', '.join(missed) if missed else 'All targets met'}. "
        f"Test entity F1: bidirectional CRF {crf['test_f1']:.1%} (strict "
        f"{crf['test_f1_strict']:.1%}), softmax {soft['test_f1']:.1%} "
        f"({comparison['crf_minus_softmax_test_f1']:+.1%} for the CRF; softmax emits "
        f"invalid IOB2 in {soft['test_invalid_rate']:.1%} of test sentences), forward-only "
        f"CRF {fwd['test_f1']:.1%} ({comparison['bidirectional_minus_forward_test_f1']:+.1%} "
        f"for the backward direction); constrained Viterbi: "
        f"{comparison['constrained_invalid_sequences']} invalid sequences.")
    return summary, verdict
