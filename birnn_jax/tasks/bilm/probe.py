"""The biLM's downstream check: punctuation labels recovered from the raw book, and a linear
(ridge) probe and a per-word lookup table scored by balanced accuracy. Pure numpy.

d2l's preprocessing keeps exactly the runs of letters of the book, so they are the word tokens
and the text between two runs is the punctuation that neither the LMs nor the probe ever see.
"""

import re

import numpy as np

PROBE_CLASSES = ("none", "pause", "end")


def punctuation_labels(raw: str) -> tuple[list[str], np.ndarray]:
  """(words, labels <int32>[N]): the d2l word tokens of `raw` and what followed each in the
  original: 0 'none', 1 'pause' (, ; : or --), 2 'end' (. ! ?). The last word gets 'end'.

  d2l's preprocessing keeps exactly the runs of letters, so they are the word tokens and the
  text between two runs is the punctuation the model never sees.
  """
  spans = [(m.start(), m.end()) for m in re.finditer("[A-Za-z]+", raw)]
  words = [raw[a:b].lower() for a, b in spans]
  labels = np.zeros(len(spans), np.int32)
  for i, ((_, end), (start, _)) in enumerate(zip(spans, spans[1:])):
    gap = raw[end:start]
    if any(c in gap for c in ".!?"):
      labels[i] = 2
    elif any(c in gap for c in ",;:") or "--" in gap:
      labels[i] = 1
  if len(labels):
    labels[-1] = 2
  return words, labels


def probe_scores(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> dict[str, float]:
  """Balanced accuracy (the mean of per-class recalls: 1 / num_classes for any constant
  prediction), its standard error, and macro-averaged F1."""
  recalls, variances, f1s = [], [], []
  for c in range(num_classes):
    gold_c, pred_c = gold == c, pred == c
    r = float(np.mean(pred_c[gold_c])) if gold_c.any() else 0.0
    recalls.append(r)
    variances.append(r * (1 - r) / max(int(gold_c.sum()), 1))
    denom = pred_c.sum() + gold_c.sum()
    f1s.append(float(2 * np.sum(pred_c & gold_c) / denom) if denom else 0.0)
  return {"balanced_accuracy": float(np.mean(recalls)),
          "balanced_accuracy_stderr": float(np.sqrt(np.sum(variances)) / num_classes),
          "macro_f1": float(np.mean(f1s))}


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Per-class weights that make every class weigh the same in total (mean weight 1)."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                num_classes: int, ridge: float) -> np.ndarray:
  """A linear probe: closed-form, class-balanced ridge regression on one-hot labels
  (standardised features plus an unpenalised bias); returns the argmax class of each test
  row. Balancing (each class weighs the same) keeps the probe from just predicting the
  majority class of an imbalanced label."""
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  prep = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], 1).astype(
      np.float64)
  a, b = prep(x_train), prep(x_test)
  weights = class_weights(y_train, num_classes)[y_train][:, None]
  targets = np.eye(num_classes)[y_train]
  reg = ridge * np.eye(a.shape[1])
  reg[-1, -1] = 0.0
  w = np.linalg.solve(a.T @ (weights * a) + reg, a.T @ (weights * targets))
  return np.argmax(b @ w, axis=1)


def lookup_probe(ids_train: np.ndarray, y_train: np.ndarray, ids_test: np.ndarray,
                 num_classes: int) -> np.ndarray:
  """The best context-free classifier: a table from word type to the class that is most
  frequent for it after the same class balancing as the probe (class 0 for types unseen in
  train). No feature of the word alone can do better on the training tokens."""
  counts = np.zeros((int(max(ids_train.max(), ids_test.max())) + 1, num_classes))
  np.add.at(counts, (ids_train, y_train), 1)
  table = np.argmax(counts * class_weights(y_train, num_classes), axis=1)
  return table[ids_test]


def cosine_matrix(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return np.clip(unit @ unit.T, -1.0, 1.0)
