"""Contextual word vectors from an ELMo-style biLM on The Time Machine (D2L 10.4, polysemy),
or on a UD treebank's own words (`data.corpus='treebank'`, for a tagger's features).

The correct way to pretrain bidirectionally (Peters et al. 2018, "Deep contextualized word
representations"): two language models, never one bidirectional one.

    forward LM:   reads x_1..x_t (a forward-only stack)              -> p(x_{t+1} | x_<=t)
    backward LM:  reads x_t..x_n (the same kind of forward-only stack
                  run on each sequence reversed within its length)    -> p(x_{t-1} | x_>=t)

Both share the token embedding and the softmax layer (one parameter each, tied between the
directions as in ELMo) and are trained jointly on the sum of the two losses. Neither LM ever
sees the token it predicts: a bidirectional encoder under one softmax would (see the LM task's
"wrong application"). The backward direction is the core library's own: `flip_sequences`
reverses every sequence within its length, a forward-only `models.BiRNN` layer runs over it,
and the outputs are flipped back, so there is no second RNN implementation.

Contextual vectors (`Task.embed`): for token t, ELMo's layer mix

    ELMo_t = gamma * sum_{j=0..L} s_j h_{t,j},   s = softmax(w)
    h_{t,0} = [e_t ; e_t]                 the context-free token embedding, duplicated so it
                                          has the [forward ; backward] width (as ELMo does)
    h_{t,j} = [f_{t,j} ; b_{t,j}]         layer j of the forward and of the backward LM

so every vector is 2H wide (`model.embed_size` must equal `model.hidden_size`). `w` and
`gamma` are FIXED, from `config.model.mix_weights` (() = equal weights) and
`config.model.mix_gamma`: in ELMo they are learned by the downstream task, and this
unsupervised demo has none (the probe below fits a linear map on top, which subsumes any
fixed mix). Layers are mixed as they are (no layer norm).

Downstream check (`extra_results`, in results.json): a linear probe (closed-form ridge
regression on one-hot labels, numpy) on frozen features, trained on the train split's tokens
and scored on the held-out valid+test tokens. The label is punctuation restoration: what
followed each word in the ORIGINAL book, 'none' / 'pause' (, ; : or a -- dash) / 'end'
(. ! ?). d2l's preprocessing deletes every punctuation mark, so neither the LMs nor the probe
ever saw these labels; they are recovered from the raw text by aligning its letter runs,
which are exactly the word tokens. Whether a sentence ends after a word depends on the words
around it, not just on the word, so contextual features should beat any context-free one.
86% of words are followed by nothing, so the probe is class-balanced and scored by balanced
accuracy (the mean per-class recall; 1/3 for any constant guess) and macro-F1. It compares
the context-free embedding, the forward-only and backward-only halves of the mix and the full
biLM mix, next to the best a per-word lookup table can do.
"""


import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.tasks import config_keys
from birnn_jax.tasks import losses
from birnn_jax import errors
from birnn_jax.tasks import models
from birnn_jax.data import common as data_common
from birnn_jax.data import conllu_data
from birnn_jax.data import sampling
from birnn_jax.data import text as text_lib
from birnn_jax.data.vocab import PAD, UNK
from birnn_jax.tasks import base
from birnn_jax.tasks import common
from birnn_jax.tasks.bilm import probe as probe_lib
from birnn_jax.tasks.bilm.model import BiLM, mix_weights

VOCAB_FILE = "vocab_words.json"
SENTENCE_SEP = "|"
STREAM_BATCH = 256  # windows per call when reading a whole split for the probe
# data.corpus: the book (split 90/5/5 in stream order), or a UD treebank's train/dev/test
# word forms (data.dir; '' = the bundled English-EWT), for a biLM on a tagger's own text.
CORPORA = ("time_machine", "treebank")
_PUNCTUATION_ONLY = re.compile(r"^[.!?,;:-]+$")

# Built-in polysemy demo: passages of the book (verbatim, some cut short), each with the
# sense in which it uses the word, always with words on both sides of it (at a sentence's
# last word the backward LM has read nothing but the word itself). d2l's preprocessing drops
# the punctuation, so a passage may run across a full stop, as the training text does.
# `config.predict.text == ''` uses the passages of `config.predict.word`.
DEMO = {
    "well": (
        ("noun (shaft)", "I do not know how long I sat peering down that well. It was not "
                         "for some time that I could succeed in persuading myself."),
        ("noun (shaft)", "I sat upon the edge of the well telling myself that, at any rate, "
                         "there was nothing to fear."),
        ("noun (shaft)", "I was so horribly alone, and even to clamber down into the "
                         "darkness of the well appalled me."),
        ("adverb", "Power, intellectual as well as physical, would be out of place."),
        ("adverb", "The checks they had devised for the increase of population had "
                   "succeeded too well, and their numbers had rather diminished."),
        ("adverb", "The next night I did not sleep well. Probably my health was a little "
                   "disordered."),
    ),
    "light": (
        ("noun", "The only other object on the table was a small shaded lamp, the bright "
                 "light of which fell upon the model."),
        ("noun", "One was so blinded by the light that he came straight for me."),
        ("noun", "Then the light burned my fingers and fell out of my hand."),
        ("verb", "'Certainly,' said the Time Traveller, stooping to light a spill at the "
                 "fire."),
        ("verb", "I hastily took a lump of camphor from my pocket, and prepared to light it "
                 "as soon as the match should wane."),
        ("verb", "The matches were of that abominable kind that light only on the box."),
    ),
}



def raw_time_machine(data_dir: str) -> str:
  """The book's raw text (what `text.read_time_machine` preprocesses), same resolution."""
  text_lib.read_time_machine(data_dir or None)  # resolves, downloads if needed, validates
  path = text_lib.time_machine_path(data_dir or None)
  return text_lib.decode_utf8(data_common.read_bytes(path), path)


def labelled_words(raw: str) -> tuple[list[str], np.ndarray]:
  """`probe.punctuation_labels(raw)`, checked to be d2l's word tokens of `raw`."""
  words, labels = probe_lib.punctuation_labels(raw)
  if words != text_lib.tokenize(text_lib.preprocess(raw), "word"):
    raise RuntimeError("punctuation_labels no longer aligns with d2l's word tokens.")
  return words, labels


def book_token(form: str) -> str:
  """Another corpus's token as the book's preprocessing would read it: its letters,
  lowercased ("Don't" -> "dont", "3.5" -> ''; '' means the book would have no token)."""
  return text_lib.preprocess(form).replace(" ", "")


def treebank_text(sentences: Sequence[conllu_data.Sentence]) -> str:
  """Treebank sentences as raw text that reads like the book's: each form with letters as
  its `book_token` (so this corpus's words are exactly the tokens `FrozenFeatures` gives a
  tagger), each form of punctuation only as it is (what the probe's labels are made of), and
  other forms (numbers, symbols) left out."""
  def as_in_book(form):
    return book_token(form) or (form if _PUNCTUATION_ONLY.match(form) else "")
  return " ".join(filter(None, (as_in_book(form) for s in sentences for form, _ in s)))


def corpus_splits(data, corpus: str) -> tuple[tuple[list[str], list[str], list[str]],
                                               np.ndarray]:
  """((train, valid, test) words, the probe's labels <int32>[all words, in that order]) of
  `config.data` for `corpus` (one of CORPORA)."""
  if corpus == "time_machine":
    words, labels = labelled_words(raw_time_machine(data.dir))
    return text_lib.split_stream(words), labels
  treebank = conllu_data.load_treebank(conllu_data.treebank_folder(data.dir or None))
  parts = [labelled_words(treebank_text(getattr(treebank, split)))
           for split in conllu_data.SPLITS]
  for split, (words, _) in zip(conllu_data.SPLITS, parts):
    if len(words) < data.seq_len:
      raise errors.DataError(
          f"{len(words)} words with letters a-z in its {split} split, fewer than "
          f"data.seq_len={data.seq_len}: the biLM reads words as the book's preprocessing "
          "does (ASCII letters, lowercased), so it needs a treebank in a Latin script.",
          treebank.sources[split])
  return tuple(words for words, _ in parts), np.concatenate([labels for _, labels in parts])


def sentences_from_text(text: str) -> list[str]:
  """'one | two | ...' -> the non-empty sentences."""
  return [s.strip() for s in text.split(SENTENCE_SEP) if s.strip()]



class Task(base.Task):
  """biLM pretraining on Time Machine words; see the module docstring."""

  eval_splits = ("valid", "test")

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    d, m = config.data, config.model
    config_keys.check(d.level == "word", "data.level", d.level,
                     "'word' (the biLM gives vectors to words)")
    config_keys.check(not m.bidirectional, "model.bidirectional", m.bidirectional,
                     "False. Each LM of a biLM is a forward-only stack (the backward one reads "
                     "reversed text); a bidirectional LM would see the tokens it predicts")
    config_keys.check(m.embed_size == m.hidden_size, "model.embed_size", m.embed_size,
                     f"model.hidden_size={m.hidden_size}, so that h_0 = [e; e] has the "
                     "[forward; backward] width 2H of every layer")
    config_keys.check_at_least(config, {"data.seq_len": 2, "data.train_stride": 1,
                                       "probe.ridge": 0})
    config_keys.check(config.probe.train_tokens >= 0, "probe.train_tokens",
                     config.probe.train_tokens, ">= 0 (0 = the whole train split)")
    mix_weights(tuple(m.mix_weights), m.num_layers)  # validates the length
    corpus = config_keys.added_key(d, "data.corpus")
    config_keys.check(corpus in CORPORA, "data.corpus", corpus, f"one of {CORPORA}")
    (train, valid, test), self.labels = corpus_splits(d, corpus)
    # Built from train only, deterministically from (data, data.min_freq), which a resumed
    # or predicting run checks against config.json; saved for readers outside the library.
    self.vocab = common.workdir_vocab(self.workdir / VOCAB_FILE,
                                      text_lib.build_vocab(train, d.min_freq,
                                                           common.TIME_MACHINE_SPECIALS))
    self.ids = {name: text_lib.encode(part, self.vocab)
                for name, part in zip(text_lib.SPLIT_NAMES, (train, valid, test))}
    self.train_windows = text_lib.windows(self.ids["train"], d.seq_len, d.train_stride)
    self.sampler = sampling.Stream(len(self.train_windows), config.train.batch_size, config.seed)
    self._apply = {}

  # Training ----------------------------------------------------------------------------------

  def model(self) -> BiLM:
    m = self.config.model
    layer = models.birnn_from_config(m, num_layers=1, bidirectional=False, dropout=0.0,
                                     residual=False)
    return BiLM(vocab_size=len(self.vocab), layer=layer, num_layers=m.num_layers,
                dropout=m.dropout, residual=m.residual,
                mix_weights=tuple(float(w) for w in m.mix_weights),
                mix_gamma=float(m.mix_gamma))

  def steps_per_epoch(self):
    return self.sampler.steps_per_epoch

  def train_batch(self, step):
    c = self.config
    tokens = self.train_windows[self.sampler.indices(step)]
    return {"tokens": tokens, "lengths": np.full(len(tokens), c.data.seq_len, np.int32)}

  def eval_batches(self, split):
    seq_len = self.config.data.seq_len
    w = text_lib.windows(self.ids[split], seq_len)
    return common.fixed_batches({"tokens": w, "lengths": np.full(len(w), seq_len, np.int32)},
                                self.config.train.batch_size)

  def metric_sums(self, logits, batch):
    """The joint objective: mean forward NLL + mean backward NLL (each direction predicts
    lengths - 1 tokens per row, so one count normalises both)."""
    tokens, lengths = batch["tokens"], batch["lengths"]
    t = jnp.arange(tokens.shape[1])[None, :]
    real = t < lengths[:, None]
    # forward at t predicts tokens[t + 1]; backward at t predicts tokens[t - 1].
    fwd_mask = (real & (t + 1 < lengths[:, None]))[:, :-1]
    bwd_mask = (real & (t >= 1))[:, 1:]
    out = {}
    for name, lg, targets, mask in (
        ("forward", logits["forward"][:, :-1], tokens[:, 1:], fwd_mask),
        ("backward", logits["backward"][:, 1:], tokens[:, :-1], bwd_mask)):
      sums = losses.token_classification_sums(lg, targets, mask)
      out[f"{name}_loss"], out[f"{name}_accuracy"] = sums["loss"], sums["accuracy"]
      out["count"] = sums["count"]   # the same in both directions
    out["loss"] = out["forward_loss"] + out["backward_loss"]
    return out

  def derived_metrics(self, means):
    means = dict(means)
    for name in ("forward", "backward"):
      if f"{name}_loss" in means:
        means[f"{name}_perplexity"] = common.perplexity(means[f"{name}_loss"])
    return means

  # Vectors -----------------------------------------------------------------------------------

  def _fn(self, method: str):
    if method not in self._apply:
      model = self.model()
      self._apply[method] = jax.jit(
          lambda params, tokens, lengths: model.apply({"params": params}, tokens, lengths,
                                                      method=method))
    return self._apply[method]

  def tokenize(self, sentence: str) -> list[str]:
    return text_lib.tokenize(text_lib.preprocess(sentence), "word")

  def embed(self, params, sentences: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
    """ELMo vectors of user sentences: for each sentence (tokens, <float32>[n, 2H]).

    Sentences are preprocessed and split into words like the book; each is read on its own
    (the LMs start fresh at its first and last word); unknown words read as UNK.
    """
    return self._per_token(params, sentences, "elmo")

  def embed_layers(self, params, sentences: Sequence[str]
                   ) -> list[tuple[list[str], np.ndarray]]:
    """Like `embed` but every representation: (tokens, <float32>[L + 1, n, 2H])."""
    return self._per_token(params, sentences, "layer_states")

  def _per_token(self, params, sentences, method):
    tokenized = [self.tokenize(s) for s in sentences]
    if not tokenized:
      return []
    longest = max(1, max(len(t) for t in tokenized))
    tokens = np.full((len(tokenized), longest), PAD, np.int32)
    for i, toks in enumerate(tokenized):
      tokens[i, :len(toks)] = text_lib.encode(toks, self.vocab)
    lengths = np.asarray([len(t) for t in tokenized], np.int32)
    out = np.asarray(jax.device_get(self._fn(method)(params, tokens, lengths)))
    if method == "layer_states":
      return [(toks, out[:, i, :len(toks)]) for i, toks in enumerate(tokenized)]
    return [(toks, out[i, :len(toks)]) for i, toks in enumerate(tokenized)]

  def stream_layer_states(self, params, ids: np.ndarray) -> np.ndarray:
    """<float32>[L + 1, N, 2H] for a long id stream: windows of `data.seq_len`, each token
    taken from a window where it has at least seq_len // 4 tokens of context on each side
    (except near the stream's ends)."""
    seq_len, n = self.config.data.seq_len, len(ids)
    margin = seq_len // 4
    core = seq_len - 2 * margin
    starts, keeps = [], []  # window start; (first, last) stream positions it provides
    for c0 in range(0, n, core):
      s = max(0, min(c0 - margin, n - seq_len))
      starts.append(s)
      keeps.append((c0, min(c0 + core, n)))
    batch = STREAM_BATCH
    out = None
    for b0 in range(0, len(starts), batch):
      chunk = starts[b0:b0 + batch]
      tokens = np.zeros((batch, seq_len), np.int32)
      lengths = np.zeros(batch, np.int32)
      for i, s in enumerate(chunk):
        piece = ids[s:s + seq_len]
        tokens[i, :len(piece)], lengths[i] = piece, len(piece)
      states = np.asarray(jax.device_get(self._fn("layer_states")(params, tokens, lengths)))
      if out is None:
        out = np.zeros((states.shape[0], n, states.shape[-1]), np.float32)
      for i, s in enumerate(chunk):
        a, b = keeps[b0 + i]
        out[:, a:b] = states[:, i, a - s:b - s]
    return out

  # Results -----------------------------------------------------------------------------------

  def demo_sentences(self) -> tuple[list[str], list[str] | None]:
    """(sentences, senses or None) of the end-of-training polysemy demo."""
    p = self.config.predict
    if p.text:
      return sentences_from_text(p.text), None
    if p.word not in DEMO:
      raise errors.ConfigError(f"config.predict.text is empty and there are no built-in sentences "
                       f"for config.predict.word={p.word!r} (built in: {sorted(DEMO)}); "
                       "give the sentences in config.predict.text.")
    return [s for _, s in DEMO[p.word]], [sense for sense, _ in DEMO[p.word]]

  def word_vectors(self, params, sentences: Sequence[str], word: str
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, contextual <float32>[K, 2H], context-free <float32>[K, H]) for every
    occurrence of `word` in `sentences` (labels 's<i>:<position>')."""
    word = word.lower()
    if self.vocab.token_to_id(word) == UNK:
      raise errors.InputError(f"{word!r} is not in the vocabulary (train-split words seen "
                       f">= {self.config.data.min_freq} times); pick another predict.word.")
    labels, vectors, missing = [], [], []
    for i, (tokens, vecs) in enumerate(self.embed(params, sentences)):
      hits = [t for t, tok in enumerate(tokens) if tok == word]
      if not hits:
        missing.append(i + 1)
      for t in hits:
        labels.append(f"s{i + 1}:{t}")
        vectors.append(vecs[t])
    if missing:
      raise errors.InputError(f"the word {word!r} does not occur in sentence(s) {missing}.")
    embedding = np.asarray(params["embed"]["embedding"])[self.vocab.token_to_id(word)]
    return labels, np.stack(vectors), np.tile(embedding, (len(labels), 1))

  def similarity_report(self, params, sentences, word, senses=None) -> tuple[dict, str]:
    """(results, printable report): cosine similarities of `word`'s ELMo vectors across
    `sentences`, and of its context-free embedding (1.0 everywhere, by construction)."""
    labels, ctx, free = self.word_vectors(params, sentences, word)
    sim, free_sim = probe_lib.cosine_matrix(ctx), probe_lib.cosine_matrix(free)
    lines = [f"Cosine similarity of the biLM (ELMo) vectors of {word!r}:"]
    lines += [f"  s{i + 1}: {s}" + (f"   [{senses[i]}]" if senses else "")
              for i, s in enumerate(sentences)]
    header = ("",) + tuple(labels)
    lines.append(common.table([header] + [
        (labels[i],) + tuple(f"{v:.3f}" for v in row) for i, row in enumerate(sim)]))
    off = ~np.eye(len(labels), dtype=bool)
    result = {"word": word,
              "sentences": {f"s{i + 1}": s for i, s in enumerate(sentences)},
              "cosine": {a: [round(float(v), 4) for v in row] for a, row in zip(labels, sim)},
              "context_free_cosine_min": float(free_sim.min())}
    if len(labels) > 1:
      result["mean_offdiag_cosine"] = float(sim[off].mean())
      lines.append(f"Context-free embedding: cosine {free_sim[off].min():.3f} .. "
                   f"{free_sim[off].max():.3f} between every pair (one vector per word).")
    if senses and len(labels) == len(senses):
      same = np.equal.outer(np.asarray(senses), np.asarray(senses))
      if (same & off).any() and (~same).any():
        result["senses"] = {f"s{i + 1}": x for i, x in enumerate(senses)}
        result["same_sense_mean_cosine"] = float(sim[same & off].mean())
        result["cross_sense_mean_cosine"] = float(sim[~same].mean())
        lines.append(f"Mean cosine: same sense {result['same_sense_mean_cosine']:.3f}, "
                     f"different senses {result['cross_sense_mean_cosine']:.3f} "
                     "(context-free: 1.000 and 1.000).")
        # Each representation alone: h_0 is context-free, the LSTM layers are not.
        per_layer = np.stack([layers[:, tokens.index(word.lower())] for tokens, layers in
                              self.embed_layers(params, sentences)], axis=1)  # [L+1, K, 2H]
        result["by_layer"] = {}
        for j, vecs in enumerate(per_layer):
          sim_j = probe_lib.cosine_matrix(vecs)
          result["by_layer"][f"h{j}"] = {"same_sense_mean_cosine": float(sim_j[same & off].mean()),
                                         "cross_sense_mean_cosine": float(sim_j[~same].mean())}
    return result, "\n".join(lines)

  def probe(self, params) -> dict:
    """The downstream check: punctuation restoration by a linear probe on frozen features
    (see the module docstring)."""
    # The probe fits on the last probe.train_tokens tokens of the train split (0 = all of
    # it) and is scored on valid + test: one contiguous stretch of the book.
    train_size = len(self.ids["train"])
    n_train = min(self.config.probe.train_tokens or train_size, train_size)
    stream = np.concatenate([self.ids[s] for s in text_lib.SPLIT_NAMES])[train_size - n_train:]
    labels = self.labels[train_size - n_train:]
    states = self.stream_layer_states(params, stream)
    h = states.shape[-1] // 2
    s = mix_weights(tuple(self.config.model.mix_weights), self.config.model.num_layers)
    elmo = np.einsum("l,lnd->nd", s, states) * float(self.config.model.mix_gamma)
    features = {"context_free": states[0][:, :h], "forward_only": elmo[:, :h],
                "backward_only": elmo[:, h:], "bilm": elmo}
    y_train, y_test = labels[:n_train], labels[n_train:]
    k = len(probe_lib.PROBE_CLASSES)
    out = {"label": "what followed the word in the original text: " + " / ".join(
               probe_lib.PROBE_CLASSES), "metric": "balanced accuracy (chance = 1/3)",
           "train_tokens": int(n_train), "test_tokens": int(len(y_test)),
           "test_class_fractions": {c: float(np.mean(y_test == i))
                                    for i, c in enumerate(probe_lib.PROBE_CLASSES)}}
    scored = {"constant_class": np.zeros(len(y_test), np.int64),
              "context_free_lookup": probe_lib.lookup_probe(stream[:n_train], y_train,
                                                  stream[n_train:], k)}
    for name, x in features.items():
      scored[name] = probe_lib.ridge_probe(x[:n_train], y_train, x[n_train:], k,
                                 self.config.probe.ridge)
    for name, pred in scored.items():
      out.update({f"{name}_{metric}": v for metric, v in probe_lib.probe_scores(pred, y_test, k).items()})
    return out

  def extra_results(self, params, evaluate):
    sentences, senses = self.demo_sentences()
    demo, report = self.similarity_report(params, sentences, self.config.predict.word, senses)
    probe = self.probe(params)
    return {"polysemy": demo, "polysemy_report": report, "probe": probe,
            "probe_bilm_beats_context_free": bool(
                probe["bilm_balanced_accuracy"] > max(
                    probe["context_free_balanced_accuracy"],
                    probe["context_free_lookup_balanced_accuracy"]))}

  def predict(self, variables, text: str) -> str:
    """`text`: sentences separated by '|' ('' = config.predict.text, then the built-in
    sentences for config.predict.word)."""
    if text.strip():
      sentences, senses = sentences_from_text(text), None
    else:
      sentences, senses = self.demo_sentences()
    return self.similarity_report(variables, sentences, self.config.predict.word, senses)[1]

  @classmethod
  def summarize(cls, config, results):
    """results.json is the run's results without the printable report, which leads the
    verdict instead."""
    r = dict(results[""])
    report = r.pop("polysemy_report")
    probe, demo = r["probe"], r["polysemy"]
    pct = lambda name: (f"{probe[name + '_balanced_accuracy']:.1%} +/- "
                        f"{probe[name + '_balanced_accuracy_stderr']:.1%}")
    verdict = (f"biLM held-out perplexity: forward {r['test_forward_perplexity']:.1f}, "
               f"backward {r['test_backward_perplexity']:.1f} (test). Linear probe, "
               f"punctuation after a word (balanced accuracy, chance 33.3%): biLM "
               f"{pct('bilm')} vs context-free embedding {pct('context_free')} (per-word "
               f"lookup {pct('context_free_lookup')}; forward half {pct('forward_only')}, "
               f"backward half {pct('backward_only')}).")
    if "same_sense_mean_cosine" in demo:
      verdict += (f" {demo['word']!r}: same-sense cosine {demo['same_sense_mean_cosine']:.3f}"
                  f", cross-sense {demo['cross_sense_mean_cosine']:.3f} (context-free 1.0).")
    return r, report + "\n\n" + verdict
