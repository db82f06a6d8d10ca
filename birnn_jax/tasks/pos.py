"""Part-of-speech tagging (UPOS) on any UD treebank (UD English-EWT by default) with a word +
character BiLSTM tagger.

Data: `data.dir` is a UD treebank folder (`*-ud-{train,dev,test}.conllu`, plain or .xz, any
language prefix) or a root holding `ud_english_ewt/`; or `data.train_file`, `dev_file`,
`test_file` name the files. With no dev file a seeded `data.dev_fraction` of train is held out
(logged, and recorded in results.json `data_sources`). Unset, the bundled EWT is read.

Model: the word + character tagger (`wordchar.WordCharTagger`, Plank et al. 2016 style):
each word's characters (case kept) through a character BiLSTM, the word (lowercased by
default) through a word embedding with word dropout (`wordchar.word_dropout`: rare words
dropped to UNK in the batches from (seed, step), `model.word_dropout` in the model), then a
stacked BiLSTM over the sentence (`config.model` keys; `model.bidirectional=False` gives the
forward-only baseline, whose tag at t can only use x_1..x_t) and per token
O_t = H_t W_hq + b_q, softmax cross-entropy on the real tokens only (`losses`).

Batches (`wordchar.WordCharTask`): vocabularies from train only, saved in the workdir
(vocab_words.json / vocab_chars.json), so `eval` and `predict` read the ids the checkpoint
was trained with; length-bucketed, padded batches whose characters are deduplicated into
tiers (`wordchar.chars.dedup_chars`).

Pretrained contextual features (ELMo's use of a biLM, Peters et al. 2018): with
`model.bilm_workdir` set to a trained `experiments/bilm_time_machine.py` run, each token also
gets the frozen biLM's layer states h_0..h_L (`bilm.FrozenFeatures`), mixed by learned
softmax weights and a learned scale as ELMo does, and concatenated to [word; chars].
`model.bilm_layers='context_free'` gives only h_0 (the biLM's context-free embedding: the
control for "is it the context that helps?"). `compare_bilm=True` trains the three variants
no_bilm / context_free / elmo; `data.train_sentences` keeps only the first N training
sentences (a low-resource setting, where pretraining matters most). `compare_directions=True`
trains the bidirectional tagger and its forward-only baseline (`DIRECTION_VARIANTS`), which
with `train.num_seeds` > 1 are compared over seeds, member by member.

Metrics (results.json): `dev_accuracy`, `test_accuracy` (fractions of tokens), and from
`extra_results` the test accuracy per gold tag and on words unseen in training (a test word
whose form, lowercased when `data.lowercase`, never occurs in the training file).

Files and prediction: `--mode=predict --text="..."` tokenises as EWT is tokenised
(`wordchar.tokenize`) and prints `word/TAG` pairs; CoNLL-U in gives the same CoNLL-U out
with only the UPOS column predicted, plain text in gives CoNLL-U (`read_records`,
`predict_records`); `--mode=eval --input` scores any CoNLL-U file (`evaluate_file`).
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax import errors
from birnn_jax.data import batching
from birnn_jax.data import columns
from birnn_jax.data import conllu_data
from birnn_jax.tasks import base
from birnn_jax.tasks import bilm as bilm_lib
from birnn_jax.tasks import common
from birnn_jax.tasks import config_keys
from birnn_jax.tasks import losses
from birnn_jax.tasks import wordchar
from birnn_jax.tasks.wordchar import dedup_chars, tokenize

TAGS = conllu_data.UPOS
BILM_LAYERS = ("all", "context_free")
# compare_bilm's variants; the first one is what --mode=predict uses.
BILM_VARIANTS = {"elmo": {"bilm_layers": "all"}, "context_free": {"bilm_layers": "context_free"},
                 "no_bilm": {"bilm_workdir": ""}}
# compare_directions' variants: the backward chain's worth.
DIRECTION_VARIANTS = {"bidirectional": {"bidirectional": True},
                      "forward": {"bidirectional": False}}


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


class Task(wordchar.WordCharTask):
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
    wordchar.check_encoder_config(config)
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
      self._model = wordchar.model_from_config(self.config.model, len(self.word_vocab),
                                               len(self.char_vocab), len(TAGS))
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

  def host_batch(self, step):
    return self.with_bilm(self.dropped_batch(step), self._bilm_inputs["train"],
                          self.batcher.indices(step))

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
    directions = config_keys.added_key(config, "compare_directions")
    if directions and config.compare_bilm:
      raise errors.ConfigError("config.compare_directions=True and config.compare_bilm=True: "
                               "choose one comparison per experiment.")
    if directions:
      return base.override_variants(config, DIRECTION_VARIANTS, switch="compare_directions")
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
    if "forward" in summary:   # compare_directions
      bi, fwd = summary["bidirectional"], summary["forward"]
      summary["bidirectional_minus_forward_test_accuracy"] = (
          bi["test_accuracy"] - fwd["test_accuracy"])
      summary["bidirectional_minus_forward_dev_accuracy"] = (
          bi["dev_accuracy"] - fwd["dev_accuracy"])
      sconj = {n: results[n]["test_per_tag_accuracy"].get("SCONJ") for n in summary
               if n in DIRECTION_VARIANTS}
      verdict = (
          f"Test UPOS: bidirectional {bi['test_accuracy']:.2%} vs forward-only "
          f"{fwd['test_accuracy']:.2%} "
          f"({summary['bidirectional_minus_forward_test_accuracy']:+.2%} for the backward "
          f"chain; dev {summary['bidirectional_minus_forward_dev_accuracy']:+.2%}); unseen "
          f"words {bi['test_unseen_accuracy']:.1%} vs {fwd['test_unseen_accuracy']:.1%}; "
          f"SCONJ {sconj['bidirectional']:.1%} vs {sconj['forward']:.1%}.")
      return summary, verdict
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

  @classmethod
  def judge_over_seeds(cls, summary, verdict):
    """`compare_bilm` over seeds: ELMo's features help when the paired difference of test
    accuracy, elmo minus no_bilm member by member, has a 95% interval above 0 (the one-seed
    test, 2 unpaired standard errors, is kept after it, on the means)."""
    d = summary.get("paired_differences", {}).get("elmo_minus_no_bilm", {}).get(
        "test_accuracy")
    if d is None or d["ci95"] is None:
      return summary, verdict
    helps = d["ci95"][0] > 0
    summary = {**summary, "elmo_helps": bool(helps), "verdict_over_seeds": True}
    return summary, (
        f"{'ELMo features help' if helps else 'No clear gain from ELMo features'} over "
        f"{len(summary['seeds'])} seeds: test UPOS elmo minus no_bilm {d['mean']:+.2%} "
        f"[95% CI {d['ci95'][0]:+.2%}, {d['ci95'][1]:+.2%}] (paired). One-seed test on the "
        f"means: {verdict}")

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
