"""Runs a tagger exported by `launch.py --mode=export` with jax, numpy and flatbuffers only
(`REQUIRES`; no flax, no birnn_jax): `pip install jax numpy flatbuffers` is the whole
install. jax reads the serialised model with the `flatbuffers` package, which
`pip install jax` does not bring; without one of `REQUIRES` this file stops with one line
naming what to install (`ImportError` when imported, exit status 1 when run).

`--mode=export --output=DIR` copies this file to DIR/predict.py beside the serialised model
(`model.jax`, StableHLO from `jax.export`, lowered for cpu, cuda and tpu, with symbolic batch
and length) and `meta.json` (vocabularies, labels, how words are looked up):

    import sys; sys.path.insert(0, "DIR")      # or copy predict.py anywhere
    from predict import ExportedTagger
    tagger = ExportedTagger("DIR")
    tagger.tag([["I", "saw", "her", "duck"]])  # [["PRON", "VERB", "PRON", "NOUN"]]

or from a shell: `python DIR/predict.py < sentences.txt` (one pre-tokenised sentence a line,
`token/TAG` pairs out). Words are looked up as the training run did: NFC-normalised,
lowercased when the run lowercased, unknown words and characters as UNK; a word's characters
are clipped to its first and last `max_chars / 2`.
"""

import importlib.util
import json
import pathlib
import sys
import unicodedata

# The distributions (pip names) this file runs with: birnn_jax's export.RUNTIME_REQUIRES
# (this file imports nothing of birnn_jax), also listed in meta.json's "requires".
REQUIRES = ("jax", "numpy", "flatbuffers")
_MISSING = [name for name in REQUIRES if importlib.util.find_spec(name) is None]
if _MISSING:
  _MESSAGE = (f"{pathlib.Path(__file__).name}: this exported tagger needs "
              f"{', '.join(REQUIRES)}; not installed here: {', '.join(_MISSING)} "
              f"(pip install {' '.join(_MISSING)})")
  if __name__ == "__main__":
    sys.exit(_MESSAGE)           # one line on stderr, exit status 1
  raise ImportError(_MESSAGE)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

PAD, UNK = 0, 1


class ExportedTagger:
  """An exported POS or NER tagger: `tag(sentences)` -> one label per token."""

  def __init__(self, folder):
    folder = pathlib.Path(folder)
    self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    self.labels = self.meta["labels"]
    self.words = {t: i for i, t in enumerate(self.meta["word_vocab"])}
    self.chars = {t: i for i, t in enumerate(self.meta["char_vocab"])}
    self.max_chars = int(self.meta["max_chars"])
    self.exported = jax.export.deserialize(bytearray((folder / "model.jax").read_bytes()))

  def _clip(self, word: str) -> str:
    if len(word) <= self.max_chars:
      return word
    head = self.max_chars // 2
    return word[:head] + word[len(word) - (self.max_chars - head):]

  def encode(self, sentences):
    """(words int32 [B, T], chars int32 [B, T, C], lengths int32 [B]), T a power of two."""
    longest = max([len(s) for s in sentences] + [1])
    steps = max(int(self.meta["min_length"]), 1)
    while steps < longest:
      steps *= 2
    words = np.zeros((len(sentences), steps), np.int32)
    chars = np.zeros((len(sentences), steps, self.max_chars), np.int32)
    lengths = np.array([len(s) for s in sentences], np.int32)
    for b, sentence in enumerate(sentences):
      for t, form in enumerate(sentence):
        form = unicodedata.normalize("NFC", form)
        key = form.lower() if self.meta["lowercase"] else form
        words[b, t] = self.words.get(key, UNK)
        ids = [self.chars.get(c, UNK) for c in self._clip(form)]
        chars[b, t, :len(ids)] = ids
    return words, chars, lengths

  def tag(self, sentences, batch_size: int = 64):
    """Each sentence's labels; sentences are token lists, sorted by length into batches."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = [None] * len(sentences)
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      ids = np.asarray(self.exported.call(*self.encode([sentences[i] for i in rows])))
      for row, i in enumerate(rows):
        out[i] = [self.labels[int(k)] for k in ids[row, :len(sentences[i])]]
    return out


def main() -> None:
  tagger = ExportedTagger(pathlib.Path(__file__).resolve().parent)
  sentences = [line.split() for line in sys.stdin if line.strip()]
  for sentence, tags in zip(sentences, tagger.tag(sentences)):
    print(" ".join(f"{w}/{t}" for w, t in zip(sentence, tags)))


if __name__ == "__main__":
  main()
