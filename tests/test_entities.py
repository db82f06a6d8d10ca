"""Entity labels and their entities (birnn_jax/tasks/entities.py): the in-graph entity
counts equal seqeval's (both modes, hand-made and random sequences), the chunks equal
seqeval's get_entities, the seqeval scorer on hand-made cases, IOBES round trips."""


import jax
import numpy as np
import pytest
from seqeval import metrics as seqeval_metrics
from seqeval import scheme as seqeval_scheme
from seqeval.metrics import sequence_labeling

from birnn_jax import crf as crf_lib
from birnn_jax.tasks import entities

LABELS = entities.LABELS


def seqeval_entities(sequences, strict):
  """The set of (sentence, type, start, end) entities seqeval finds."""
  if strict:
    found = seqeval_scheme.Entities(sequences, seqeval_scheme.IOB2).entities
    return {(e.sent_id, e.tag, e.start, e.end) for sentence in found for e in sentence}
  return {(i, kind, start, end + 1) for i, seq in enumerate(sequences)
          for kind, start, end in sequence_labeling.get_entities(list(seq))}


def counts_in_graph(gold, pred, strict, num_steps=None):
  """entities.entity_counts of label-string sequences, padded into one batch (plus a pad row)."""
  num_steps = num_steps or max(len(s) for s in gold) + 2
  ids = lambda seqs: np.array([[LABELS.index(t) for t in s] + [0] * (num_steps - len(s))
                               for s in seqs + [[]]], np.int32)
  # Padding gets random labels: it must not count.
  rng = np.random.default_rng(0)
  lengths = np.array([len(s) for s in gold] + [0], np.int32)
  pad = np.arange(num_steps)[None, :] >= lengths[:, None]
  g, p = ids(gold), ids(pred)
  g[pad] = rng.integers(0, len(LABELS), pad.sum())
  p[pad] = rng.integers(0, len(LABELS), pad.sum())
  out = jax.jit(entities.entity_counts, static_argnames=("labels", "strict"))(
      p, g, lengths, LABELS, strict)
  return {k: int(v) for k, v in out.items()}


def check_counts(gold, pred):
  for strict in (False, True):
    got = counts_in_graph(gold, pred, strict)
    want_g, want_p = seqeval_entities(gold, strict), seqeval_entities(pred, strict)
    assert got["entities_gold"] == len(want_g), (strict, gold)
    assert got["entities_predicted"] == len(want_p), (strict, pred)
    assert got["entities_correct"] == len(want_g & want_p), (strict, gold, pred)
    assert got["invalid_sequences"] == sum(not crf_lib.is_valid_bio(s) for s in pred)
    assert got["sequences"] == len(gold)


HAND_MADE = [
    # gold, predicted
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),   # all right
    (["B-PER", "I-PER", "O"], ["B-PER", "O", "O"]),                       # span too short
    (["B-PER", "O", "O"], ["B-PER", "I-PER", "O"]),                       # span too long
    (["B-PER", "I-PER"], ["B-ORG", "I-ORG"]),                             # wrong type
    (["O", "I-PER", "I-PER"], ["B-PER", "I-PER", "I-PER"]),   # conlleval: same span, strict: not
    (["B-PER", "I-LOC"], ["B-PER", "B-LOC"]),                 # I after another type
    (["B-LOC", "B-LOC"], ["B-LOC", "I-LOC"]),                 # two entities vs one
    (["I-ORG"], ["I-ORG"]),                                   # an orphan I at the start
    (["O", "O"], ["I-LOC", "O"]),
]


@pytest.mark.parametrize("gold, pred", HAND_MADE)
def test_entity_counts_equal_seqeval_on_hand_made_cases(gold, pred):
  check_counts([gold], [pred])


def test_entity_counts_equal_seqeval_on_random_sequences():
  rng = np.random.default_rng(1)
  # Mostly O with runs, as real taggers emit; a batch of many random rows, twice.
  for _ in range(2):
    lengths = rng.integers(1, 12, size=40)
    probs = np.array([0.5, 0.1, 0.1, 0.05, 0.1, 0.05, 0.1])
    gold = [[LABELS[i] for i in rng.choice(len(LABELS), n, p=probs)] for n in lengths]
    pred = [[LABELS[i] if rng.random() < 0.4 else g for g, i in
             zip(seq, rng.choice(len(LABELS), len(seq), p=probs))] for seq in gold]
    check_counts(gold, pred)


@pytest.mark.parametrize("seed", range(3))
def test_chunks_are_seqevals_entities(seed):
  rng = np.random.default_rng(seed)
  sequences = [[LABELS[i] for i in rng.choice(len(LABELS), n)] for n in rng.integers(0, 15, 300)]
  sequences += [list(gold) + list(pred) for gold, pred in HAND_MADE]
  for labels in sequences:
    assert entities.chunks(labels) == sequence_labeling.get_entities(list(labels)), labels
  gold = sequences[:300]
  pred = [[LABELS[rng.integers(len(LABELS))] if rng.random() < 0.3 else g for g in seq]
          for seq in gold]
  scores = entities.score(gold, pred)
  for name in ("f1", "precision", "recall"):
    assert scores[name] == getattr(seqeval_metrics, f"{name}_score")(gold, pred, zero_division=0)


def test_score_on_hand_made_cases():
  gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "O", "I-LOC"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "O", "I-PER", "I-LOC"]]
  s = entities.score(gold, pred)
  for name in ("f1", "precision", "recall"):   # the report's micro row: seqeval's own scores
    assert s[name] == getattr(seqeval_metrics, f"{name}_score")(gold, pred, zero_division=0)
  # Default mode. Gold: PER(0-1), LOC(3), ORG(0), LOC(3) [the orphan I-LOC]; predicted:
  # PER(0-1), ORG(3), ORG(0), PER(2), LOC(3). Correct: PER, ORG(0), LOC(3) of sentence 2.
  assert s["precision"] == pytest.approx(3 / 5) and s["recall"] == pytest.approx(3 / 4)
  assert s["f1"] == pytest.approx(2 * 3 / (5 + 4))
  # Strict IOB2: orphan I- tags are no entities. Gold: PER, LOC, ORG; predicted: PER, ORG,
  # ORG; correct: PER, ORG of sentence 2.
  assert s["f1_strict"] == pytest.approx(2 * 2 / (3 + 3))
  assert s["per_type_f1"] == pytest.approx({"LOC": 2 * 1 / (1 + 2), "ORG": 2 * 1 / (2 + 1),
                                            "PER": 2 * 1 / (2 + 1)})
  assert s["per_type_support"] == {"LOC": 2, "ORG": 1, "PER": 1}
  assert s["invalid_sequences"] == 1 and s["invalid_rate"] == 0.5
  perfect = entities.score(gold, gold)
  assert perfect["f1"] == 1.0 and perfect["f1_strict"] == 1.0
  assert perfect["invalid_sequences"] == 1           # the gold's own orphan I-LOC
  assert entities.score([["O"]], [["O"]])["f1"] == 0.0    # no entities at all: 0, not an error


def test_f1_from_counts_matches_the_definition():
  assert entities.f1_from_counts(3, 5, 4) == pytest.approx(
      {"precision": 0.6, "recall": 0.75, "f1": 2 * 0.6 * 0.75 / 1.35})
  assert entities.f1_from_counts(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_entities_for_predict():
  tokens = ["Kjeld", "Christensen", "bor", "i", "Århus"]
  assert entities.entities(tokens, ["B-PER", "I-PER", "O", "O", "B-LOC"]) == [
      ("PER", "Kjeld Christensen"), ("LOC", "Århus")]


# Tag schemes ----------------------------------------------------------------------------------

def test_iobes_conversion_round_trips():
  iob2 = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "O", "I-LOC", "I-LOC"]
  iobes = entities.to_iobes(iob2)
  assert iobes == ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "S-LOC", "S-ORG", "O", "B-LOC",
                   "E-LOC"]
  # Back to IOB2: entity for entity what seqeval's default mode saw (I-X that starts an
  # entity becomes B-X).
  back = [entities.to_iob2_label(t) for t in iobes]
  assert back == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "O", "B-LOC",
                  "I-LOC"]
  assert entities.to_iobes([]) == []
  np.testing.assert_array_equal(entities.iob2_ids(LABELS), np.arange(len(LABELS)))
  assert [LABELS[i] for i in entities.iob2_ids(entities.IOBES_LABELS)] == [
      entities.to_iob2_label(t) for t in entities.IOBES_LABELS]
  # Random valid IOB2 sequences: the round trip is exact and Viterbi's IOBES constraints
  # allow every converted sequence.
  allowed, allowed_start, allowed_end = crf_lib.iobes_constraints(entities.IOBES_LABELS)
  ids = {t: i for i, t in enumerate(entities.IOBES_LABELS)}
  rng = np.random.default_rng(4)
  for _ in range(200):
    seq = [LABELS[i] for i in rng.integers(0, len(LABELS), rng.integers(1, 9))]
    valid = [f"B-{t[2:]}" if t.startswith("I-") and not (i and seq[i - 1][2:] == t[2:])
             else t for i, t in enumerate(seq)]
    assert crf_lib.is_valid_bio(valid)
    iobes = [ids[t] for t in entities.to_iobes(valid)]
    assert [entities.to_iob2_label(entities.IOBES_LABELS[t]) for t in iobes] == valid
    assert allowed_start[iobes[0]] and allowed_end[iobes[-1]]
    assert all(allowed[i, j] for i, j in zip(iobes, iobes[1:]))


# The model ------------------------------------------------------------------------------------
