"""Entity labels (IOB2, IOBES) and their entities: chunking, scoring, tag schemes.

What NER's metrics and `--mode=eval` on any IOB2 file use, apart from its model and task:
- `entity_counts`: entity-level counts inside jit (the eval step's), equal to seqeval's;
- `score`: seqeval itself on the host (results.json, `--mode=eval --input`);
- `chunks` / `entity_spans`: the entities of a label sequence, as seqeval's default mode
  reads them (tested equal to its `get_entities`), for predictions and files;
- the tag schemes: IOB2 (`LABELS`) and IOBES (`IOBES_LABELS`), and the mappings between.

Scoring is entity-level micro F1 as seqeval computes it: its default (conlleval) mode, where
an I-X after O or another type starts an entity, and its strict IOB2 mode, where only
B-X I-X... spans are entities.
"""

from collections.abc import Sequence
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax import crf as crf_lib

# The UNER label set; a label's position is its id.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
LABEL_IDS = {label: i for i, label in enumerate(LABELS)}
# `model.tag_scheme`: the labels the model predicts. 'iobes' (BIOES: B-X I-X* E-X or S-X
# alone; Lample et al. 2016) marks where an entity ends, too; its predictions are turned
# back into IOB2 (E-X -> I-X, S-X -> B-X) before anything is scored.
SCHEMES = ("iob2", "iobes")
IOBES_LABELS = ("O",) + tuple(f"{p}-{t}" for t in ("PER", "ORG", "LOC") for p in "BIES")

_OUTSIDE, _BEGIN, _INSIDE = 0, 1, 2


# Entity counting inside jit ---------------------------------------------------------------------

def label_codes(labels) -> tuple[np.ndarray, np.ndarray]:
  """(prefix int32 [K]: 0 = O, 1 = B, 2 = I; entity type id int32 [K], 0 for O)."""
  types = sorted({label[2:] for label in labels if label[:2] in ("B-", "I-")})
  prefix = [_BEGIN if label.startswith("B-") else _INSIDE if label.startswith("I-")
            else _OUTSIDE for label in labels]
  kind = [types.index(label[2:]) + 1 if p != _OUTSIDE else 0
          for label, p in zip(labels, prefix)]
  return np.array(prefix, np.int32), np.array(kind, np.int32)


def _chunks(tags_BxT, real_BxT, prefix_K, kind_K, strict: bool):
  """Per step: (entity starts here, continues the previous step's entity, type, invalid).

  seqeval's chunking: I-X continues an entity only after B-X or I-X. In the default
  (conlleval) mode any other I-X starts a new entity; in strict IOB2 mode only B-X does.
  An I-X that continues nothing is an invalid IOB2 step. Padded steps are O.
  """
  p_BxT = jnp.where(real_BxT, jnp.asarray(prefix_K)[tags_BxT], _OUTSIDE)
  k_BxT = jnp.where(real_BxT, jnp.asarray(kind_K)[tags_BxT], 0)
  prev_p = jnp.pad(p_BxT[:, :-1], ((0, 0), (1, 0)))      # O before the first step
  prev_k = jnp.pad(k_BxT[:, :-1], ((0, 0), (1, 0)))
  inside = p_BxT == _INSIDE
  cont = inside & (prev_p != _OUTSIDE) & (prev_k == k_BxT)
  start = (p_BxT == _BEGIN) if strict else (p_BxT == _BEGIN) | (inside & ~cont)
  return start, cont, k_BxT, inside & ~cont


def entity_counts(pred_BxT, gold_BxT, lengths_B, labels=LABELS, strict: bool = False
                  ) -> dict[str, jax.Array]:
  """Entity-level counts of a batch, equal to seqeval's (a pure, jittable function).

  Args:
    pred_BxT: int [B, T] predicted label ids.
    gold_BxT: int [B, T] gold label ids.
    lengths_B: int [B] real steps per row (0 for padding rows).
    labels: the label of each id (IOB2).
    strict: seqeval's strict IOB2 mode instead of its default.

  Returns:
    float32 sums: `entities_correct` (same type and span in both), `entities_predicted`,
    `entities_gold`, `invalid_sequences` (predicted rows with an invalid I- step) and
    `sequences` (rows with length > 0).
  """
  prefix_K, kind_K = label_codes(labels)
  real_BxT = jnp.arange(pred_BxT.shape[1])[None, :] < lengths_B[:, None]
  p_start, p_cont, p_kind, p_invalid = _chunks(pred_BxT, real_BxT, prefix_K, kind_K, strict)
  g_start, g_cont, g_kind, _ = _chunks(gold_BxT, real_BxT, prefix_K, kind_K, strict)

  # same_end[t]: the entities open before step t (one in each sequence) end at the same
  # step: scanning right to left, the first step where not both continue must be one where
  # neither does.
  def step(same_after_B, inputs):
    pc_B, gc_B = inputs
    same_B = jnp.where(pc_B != gc_B, False, jnp.where(pc_B, same_after_B, True))
    return same_B, same_B

  batch = pred_BxT.shape[0]
  _, same_TxB = jax.lax.scan(step, jnp.ones(batch, bool), (p_cont.T, g_cont.T), reverse=True)
  same_end_BxT = jnp.concatenate([same_TxB.T[:, 1:], jnp.ones((batch, 1), bool)], axis=1)
  correct = p_start & g_start & (p_kind == g_kind) & same_end_BxT
  f32 = lambda x: jnp.sum(x.astype(jnp.float32))
  return {"entities_correct": f32(correct), "entities_predicted": f32(p_start),
          "entities_gold": f32(g_start), "invalid_sequences": f32(jnp.any(p_invalid, axis=1)),
          "sequences": f32(lengths_B > 0)}


def f1_from_counts(correct: float, predicted: float, gold: float) -> dict[str, float]:
  """Micro precision, recall and F1 (0 where undefined, as seqeval's zero_division=0)."""
  precision = correct / predicted if predicted else 0.0
  recall = correct / gold if gold else 0.0
  f1 = 2 * correct / (predicted + gold) if predicted + gold else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


# Host-side scoring with seqeval -------------------------------------------------------------------

def score(gold: list[list[str]], predicted: list[list[str]]) -> dict:
  """Entity-level scores of predicted label sequences by seqeval.

  Returns:
    `f1`, `precision`, `recall` (default conlleval mode, micro over entities), `f1_strict`
    (strict IOB2 mode), `per_type_f1` and `per_type_support` (default mode, per entity
    type), `invalid_rate` (the fraction of predicted sequences that are not valid IOB2) and
    `invalid_sequences` (their count).
  """
  # Here, not at the top: seqeval.metrics imports scikit-learn, 1.2 s that predicting and the
  # library's users do not need.
  from seqeval import metrics as seqeval_metrics  # pylint: disable=g-import-not-at-top
  from seqeval import scheme as seqeval_scheme  # pylint: disable=g-import-not-at-top
  kw = dict(zero_division=0)
  with warnings.catch_warnings():
    # With no entities at all seqeval averages empty arrays (numpy warns; the result is 0).
    warnings.simplefilter("ignore", RuntimeWarning)
    report = seqeval_metrics.classification_report(gold, predicted, output_dict=True, **kw)
  types = sorted(k for k in report if not k.endswith(" avg"))
  invalid = sum(not crf_lib.is_valid_bio(p) for p in predicted)
  micro = report["micro avg"]   # = f1_score() etc., without reading the entities 3 more times
  return {
      "f1": float(micro["f1-score"]),
      "precision": float(micro["precision"]),
      "recall": float(micro["recall"]),
      "f1_strict": float(seqeval_metrics.f1_score(gold, predicted, mode="strict",
                                                  scheme=seqeval_scheme.IOB2, **kw)),
      "per_type_f1": {t: float(report[t]["f1-score"]) for t in types},
      "per_type_support": {t: int(report[t]["support"]) for t in types},
      "invalid_rate": invalid / max(len(predicted), 1),
      "invalid_sequences": invalid,
  }


def entities(tokens: list[str], labels: list[str]) -> list[tuple[str, str]]:
  """(type, the entity's tokens joined by spaces) for each entity, seqeval's default mode."""
  return [(span["type"], span["text"]) for span in entity_spans(tokens, labels)]


# Tag schemes -----------------------------------------------------------------------------------

def chunks(labels: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) of each entity in IOB2 `labels`, as seqeval's default mode reads them
  (`get_entities`; equal on every IOB2 sequence, tested): an entity starts at B-X, or at an
  I-X that does not continue an X, and runs over the I-X after it. Not seqeval's own: its
  module imports scikit-learn, 1.2 s of every `--mode=predict`."""
  found, kind, first = [], None, 0
  for i, label in enumerate(labels):
    tag, new_kind = label[:1], label[2:]
    if kind is not None and (tag != "I" or new_kind != kind):
      found.append((kind, first, i - 1))
      kind = None
    if tag in ("B", "I") and kind is None:
      kind, first = new_kind, i
  if kind is not None:
    found.append((kind, first, len(labels) - 1))
  return found


def entity_spans(tokens: list[str], labels: list[str]) -> list[dict]:
  """Each entity as `{"type", "start", "end", "text"}`, `end` exclusive (seqeval's default
  mode reads the labels)."""
  return [{"type": kind, "start": start, "end": end + 1,
           "text": " ".join(tokens[start:end + 1])}
          for kind, start, end in chunks(labels)]


def scheme_labels(scheme: str) -> tuple[str, ...]:
  """The labels (in id order) a model of this tag scheme predicts."""
  return {"iob2": LABELS, "iobes": IOBES_LABELS}[scheme]


def to_iobes(labels: list[str]) -> list[str]:
  """IOB2 labels -> IOBES, entity by entity as seqeval's default mode chunks them (so an
  I-X that continues nothing starts an entity, as it is scored)."""
  out = ["O"] * len(labels)
  for kind, start, end in chunks(labels):
    if start == end:
      out[start] = f"S-{kind}"
      continue
    out[start], out[end] = f"B-{kind}", f"E-{kind}"
    out[start + 1:end] = [f"I-{kind}"] * (end - start - 1)
  return out


def to_iob2_label(label: str) -> str:
  """One IOBES (or IOB2) label as IOB2: E-X -> I-X, S-X -> B-X."""
  return {"E": "I-", "S": "B-"}.get(label[:1], label[:2]) + label[2:] if label != "O" else "O"


def iob2_ids(labels: tuple[str, ...]) -> np.ndarray:
  """int32 [K]: the `LABELS` id of each of `labels` as IOB2 (a lookup table for jit)."""
  return np.array([LABEL_IDS[to_iob2_label(label)] for label in labels], np.int32)
