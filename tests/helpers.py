"""Test helpers shared by several test files (imported as `helpers`: pytest puts this folder
on the path of the tests it collects)."""

import lzma
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

import jax
import numpy as np


def assert_trees_close(actual, expected, **tolerances):
  """Same tree structure, and every leaf close (compared in float32, so bfloat16 leaves
  compare too); `tolerances` are `np.testing.assert_allclose`'s (atol, rtol)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected), (
      jax.tree.structure(actual), jax.tree.structure(expected))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                               **tolerances)


# Tiny corpora, written where a test says --------------------------------------------------

GREEK = [("ο", "DET"), ("άνθρωπος", "NOUN"), ("η", "DET"), ("ΓΥΝΑΙΚΑ", "NOUN"),
         ("τρέχει", "VERB"), ("γράφει", "VERB"), ("γρήγορα", "ADV"), (".", "PUNCT")]


def write_greek_treebank(folder: pathlib.Path, num_train: int = 50) -> pathlib.Path:
  """el_tiny-ud-{train,test}.conllu (test xz-compressed): DET NOUN VERB [ADV] PUNCT."""
  rng = np.random.default_rng(0)
  def sentences(n):
    out = []
    for i in range(n):
      det, noun = [GREEK[j] for j in ((0, 1), (2, 3))[rng.integers(2)]]
      words = [det, noun, GREEK[4 + rng.integers(2)]] + [GREEK[6]] * rng.integers(2)
      words.append(GREEK[7])
      out.append(f"# sent_id = s{i}\n" + "".join(
          f"{k}\t{w}\t_\t{t}\t_\t_\t0\tdep\t_\t_\n" for k, (w, t) in enumerate(words, 1)))
    return "\n".join(out) + "\n"
  folder.mkdir(parents=True)
  (folder / "el_tiny-ud-train.conllu").write_text(sentences(num_train), encoding="utf-8")
  (folder / "el_tiny-ud-test.conllu.xz").write_bytes(
      lzma.compress(sentences(10).encode("utf-8")))
  return folder


SENTENCES = [
    [("Anne", "B-PER"), ("Hansen", "I-PER"), ("bor", "O"), ("i", "O"), ("Odense", "B-LOC")],
    [("Novo", "B-ORG"), ("Nordisk", "I-ORG"), ("har", "O"), ("kontor", "O"), ("i", "O"),
     ("Roskilde", "B-LOC"), (".", "O")],
    [("Hun", "O"), ("arbejder", "O"), ("for", "O"), ("Mærsk", "B-ORG"), (".", "O")],
]


def write_uner(folder, copies=8):
  folder.mkdir(parents=True)
  text = ""
  for n in range(copies):
    for s in SENTENCES:
      text += f"# sent_id = s{n}\n" + "".join(
          f"{i}\t{w}\t{t}\t{t}#O\ts\n" for i, (w, t) in enumerate(s, 1)) + "\n"
  (folder / "xx_tiny-ud-train.iob2").write_text(text, encoding="utf-8")
  (folder / "xx_tiny-ud-dev.iob2.xz").write_bytes(lzma.compress(text.encode()))
  (folder / "xx_tiny-ud-test.iob2").write_text(text, encoding="utf-8")
  return folder


def tiny_run(tmp_path_factory, experiment, data_dir, hide_data=True, **train_keys):
  """(config, workdir) of a trained `experiment`'s :smoke config (one model, not its
  variants) on the corpus in `data_dir`, with `train.<key>` = value for `train_keys`. With
  `hide_data` the corpus folder is renamed afterwards: predicting must never read it."""
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_experiment(ROOT / "experiments" / experiment, "smoke")
  if "compare_variants" in config:
    config.compare_variants = False
  config.data.dir = str(data_dir)
  config.data.pad_to = 8
  config.data.eval_batch_size = 16
  for key, value in train_keys.items():
    config.train[key] = value
  workdir = tmp_path_factory.mktemp("run")
  train.run_experiment(config, workdir)
  if hide_data:
    data_dir.rename(data_dir.with_name(data_dir.name + "_gone"))
  return config, workdir
