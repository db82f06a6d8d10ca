"""A linear-chain conditional random field: the BiRNN's two-chain dynamic programme again.

(One module of a little over 500 lines, on purpose: the scores, the forward and backward
recursions, the marginals, Viterbi and the Linen `CRF` share one masking of padded steps
and one set of carries; apart, each would import the others' private helpers.)

For emission scores `emissions: [B, T, K]` (e.g. a BiLSTM's per-token outputs), transition
scores `transitions: [K, K]` (`[i, j]` scores tag i followed by tag j), and start/end scores
`start, end: [K]`, a tag sequence y of sequence b (length L = lengths[b]) scores::

    s(y) = start[y_0] + sum_{t<L} emissions[b, t, y_t] + sum_{t<L-1} transitions[y_t, y_{t+1}]
           + end[y_{L-1}],

and p(y | x) = exp(s(y)) / Z with Z = sum over all K^L sequences. Only real steps (t < L)
count: whatever the emissions hold at padded steps changes nothing, and a length-0 sequence
has the single empty labelling (s = 0, log Z = 0, log-likelihood 0).

Inference is the hidden-Markov-model forward-backward algorithm, with the recurrence
contract's length semantics (design.md section 2):

- the forward recursion alpha is a `jax.lax.scan` over t = 0..T-1 whose carry is frozen for
  t >= L, so the final carry is alpha_{L-1};
- the backward recursion beta is a `jax.lax.scan(..., reverse=True)` over t = T-1..0 whose
  carry keeps its initial value (`end`) while t >= L, so each sequence's beta chain starts
  at its own last real step.

`marginals` combines the two chains per step, exactly as a bidirectional RNN merges its
forward and backward states. `viterbi` is the max-product forward scan plus a backtrace
scan in reverse. Every recursion runs in float32 whatever the input dtype (bf16 emissions
would otherwise lose the small differences of large log-sums).

The public functions are jitted (one compile per shape, also when called eagerly) and
nest inside any outer jit, grad or vmap. `CRF` is the Flax module holding `transitions`,
`start` and `end`; its methods are these pure functions with the module's scores.

One module, past 500 lines, because it is one idea: the chain's scores, the two recursions
and decoding over them, and the label constraints (IOB2, IOBES) that the constrained
Viterbi enforces as transition scores; each part reads the others' conventions.
"""

__all__ = ["CRF", "log_partition", "sequence_score", "log_likelihood", "marginals",
           "viterbi", "bio_constraints", "iobes_constraints", "is_valid_bio",
           "constraint_attributes"]

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# A forbidden transition's score in Viterbi: max-product with -inf stays exact (no NaN
# arises, since scores are only added and compared).
_FORBIDDEN = -jnp.inf


def _prepare(emissions_BxTxK, lengths_B, transitions_KxK, start_K, end_K):
  """float32 copies, time-major emissions [T, B, K], and the real-step mask [T, B]."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  e_BxTxK = f32(emissions_BxTxK)
  if e_BxTxK.ndim != 3:
    raise ValueError(f"emissions must be [B, T, K], got shape {e_BxTxK.shape}.")
  num_steps, num_tags = e_BxTxK.shape[1], e_BxTxK.shape[2]
  if jnp.shape(transitions_KxK) != (num_tags, num_tags) or jnp.shape(start_K) != (
      num_tags,) or jnp.shape(end_K) != (num_tags,):
    raise ValueError(f"with K={num_tags} tags, transitions must be [K, K] and start, end "
                     f"[K]; got {jnp.shape(transitions_KxK)}, {jnp.shape(start_K)}, "
                     f"{jnp.shape(end_K)}.")
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  real_TxB = jnp.arange(num_steps)[:, None] < lengths_B[None, :]
  return (jnp.swapaxes(e_BxTxK, 0, 1), lengths_B, real_TxB, f32(transitions_KxK),
          f32(start_K), f32(end_K))


def _normalize(scores_BxK):
  """(scores - max, max): the shifted scores stay O(1) however long the chain, so float32
  keeps their differences exact; the shifts are summed separately. The shift cancels in
  every result, so no gradient flows through it."""
  shift_B = jax.lax.stop_gradient(jnp.max(scores_BxK, axis=-1))
  # A row that is all -inf (no allowed path) keeps shift 0 rather than becoming NaN.
  shift_B = jnp.where(jnp.isfinite(shift_B), shift_B, 0.0)
  return scores_BxK - shift_B[:, None], shift_B


def _forward(e_TxBxK, real_TxB, transitions_KxK, start_K):
  """Forward log-scores, each step shifted to max 0: (alpha_t - c_t [T, B, K], c [B]).

  alpha_0 = start + e_0; alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + transitions[i, j]) + e_t[j].
  c_t is the sum of the shifts so far; c is c_{L-1} (the carry is frozen after each
  sequence's last real step), so log Z = c + logsumexp(alpha_{L-1} - c + end).
  """
  alpha0_BxK, shift0_B = _normalize(start_K + e_TxBxK[0])

  def step(carry, inputs):
    alpha_BxK, shift_B = carry
    e_BxK, real_B = inputs
    new_BxK, step_shift_B = _normalize(
        jax.nn.logsumexp(alpha_BxK[:, :, None] + transitions_KxK, axis=1) + e_BxK)
    alpha_BxK = jnp.where(real_B[:, None], new_BxK, alpha_BxK)
    shift_B = shift_B + jnp.where(real_B, step_shift_B, 0.0)
    return (alpha_BxK, shift_B), alpha_BxK

  (_, shift_B), rest_TxBxK = jax.lax.scan(step, (alpha0_BxK, shift0_B),
                                          (e_TxBxK[1:], real_TxB[1:]))
  return jnp.concatenate([alpha0_BxK[None], rest_TxBxK], axis=0), shift_B


def _backward(e_TxBxK, real_TxB, transitions_KxK, end_K):
  """Backward log-scores beta_t [T, B, K], each shifted by a per-step constant.

  beta_{L-1} = end; beta_t[i] = logsumexp_j(transitions[i, j] + e_{t+1}[j] + beta_{t+1}[j]).
  The carry entering step t is (shifted) beta_t; stepping consumes e_t to give beta_{t-1}.
  Marginals only need beta up to a constant per step, so the shifts are not kept.
  """
  batch = e_TxBxK.shape[1]
  init_BxK = jnp.broadcast_to(end_K, (batch, end_K.shape[0]))

  def step(beta_BxK, inputs):
    e_BxK, real_B = inputs
    new_BxK, _ = _normalize(
        jax.nn.logsumexp(transitions_KxK + (e_BxK + beta_BxK)[:, None, :], axis=2))
    carry_BxK = jnp.where(real_B[:, None], new_BxK, init_BxK)
    return carry_BxK, beta_BxK

  _, beta_TxBxK = jax.lax.scan(step, init_BxK, (e_TxBxK, real_TxB), reverse=True)
  return beta_TxBxK


def _last(x_TxBxK, lengths_B):
  """x at each sequence's last real step [B, K] (step 0 for length 0; callers mask it)."""
  index_B = jnp.maximum(lengths_B - 1, 0)
  return jnp.take_along_axis(x_TxBxK, index_B[None, :, None], axis=0)[0]


@jax.jit
def log_partition(emissions: Array, lengths: Array, transitions: Array, start: Array,
                  end: Array) -> Array:
  """log Z of each sequence by the forward algorithm.

  Its gradient with respect to the emissions is `marginals` (autodiff through the scan
  computes it; a hand-written forward-backward VJP measured no faster to compile and
  slower to run).

  Args:
    emissions: float [B, T, K] per-step tag scores (any float dtype; computed in float32).
    lengths: int [B] in [0, T], real steps per sequence.
    transitions: float [K, K], `[i, j]` scores tag i followed by tag j.
    start: float [K], scores of the first tag.
    end: float [K], scores of the last tag.

  Returns:
    float32 [B]; 0 for a length-0 sequence.

  Example:
    >>> import jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> emissions = jnp.zeros((1, 3, 2))                  # [batch, time, tags]
    >>> zeros_2x2, zeros_2 = jnp.zeros((2, 2)), jnp.zeros(2)
    >>> log_z = crf.log_partition(emissions, jnp.array([3]), zeros_2x2, zeros_2, zeros_2)
    >>> round(float(log_z[0]), 4) == round(3 * float(jnp.log(2.0)), 4)   # 2**3 paths
    True
  """
  e_TxBxK, lengths_B, real_TxB, trans, start, end = _prepare(
      emissions, lengths, transitions, start, end)
  if e_TxBxK.shape[0] == 0:
    return jnp.zeros(lengths_B.shape, jnp.float32)
  alpha_TxBxK, shift_B = _forward(e_TxBxK, real_TxB, trans, start)
  log_z_B = shift_B + jax.nn.logsumexp(_last(alpha_TxBxK, lengths_B) + end, axis=-1)
  return jnp.where(lengths_B > 0, log_z_B, 0.0)


@jax.jit
def sequence_score(emissions: Array, tags: Array, lengths: Array, transitions: Array,
                   start: Array, end: Array) -> Array:
  """s(tags) of each sequence (see the module docstring), float32 [B]; 0 for length 0.

  Args as `log_likelihood`. Tags at padded steps are ignored (they may be anything in [0, K)).

  Example:
    >>> import jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> emissions = jnp.array([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])   # step 2 is padding
    >>> transitions = jnp.array([[0.0, 0.5], [0.0, 0.0]])
    >>> score = crf.sequence_score(emissions, jnp.array([[0, 1, 0]]), jnp.array([2]),
    ...                            transitions, jnp.zeros(2), jnp.zeros(2))
    >>> float(score[0])                                    # 1 + 2 + transitions[0, 1]
    3.5
  """
  e_TxBxK, lengths_B, real_TxB, trans, start, end = _prepare(
      emissions, lengths, transitions, start, end)
  if e_TxBxK.shape[0] == 0:
    return jnp.zeros(lengths_B.shape, jnp.float32)
  num_tags = e_TxBxK.shape[2]
  # Padded tags are clipped into range so that a garbage id can never index out of bounds.
  y_TxB = jnp.clip(jnp.swapaxes(jnp.asarray(tags, jnp.int32), 0, 1), 0, num_tags - 1)
  emit_TxB = jnp.take_along_axis(e_TxBxK, y_TxB[:, :, None], axis=2)[:, :, 0]
  trans_TxB = trans[y_TxB[:-1], y_TxB[1:]]  # step t -> t+1, real when t+1 < L
  score_B = (jnp.sum(jnp.where(real_TxB, emit_TxB, 0.0), axis=0)
             + jnp.sum(jnp.where(real_TxB[1:], trans_TxB, 0.0), axis=0)
             + start[y_TxB[0]] + end[_last(y_TxB[:, :, None], lengths_B)[:, 0]])
  return jnp.where(lengths_B > 0, score_B, 0.0)


@jax.jit
def log_likelihood(emissions: Array, tags: Array, lengths: Array, transitions: Array,
                   start: Array, end: Array) -> Array:
  """log p(tags | emissions) of each sequence.

  Args:
    emissions: float [B, T, K] per-step tag scores (any float dtype; computed in float32).
    tags: int [B, T] gold tag ids; padded steps are ignored.
    lengths: int [B] in [0, T].
    transitions: float [K, K], `[i, j]` scores tag i followed by tag j.
    start: float [K].
    end: float [K].

  Returns:
    float32 [B], <= 0; exactly 0 for a length-0 sequence.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> emissions = jax.random.normal(jax.random.key(0), (2, 4, 3))   # [batch, time, tags]
    >>> tags, lengths = jnp.zeros((2, 4), jnp.int32), jnp.array([4, 0])
    >>> scores = (jnp.zeros((3, 3)), jnp.zeros(3), jnp.zeros(3))
    >>> ll = crf.log_likelihood(emissions, tags, lengths, *scores)
    >>> bool(ll[0] < 0), float(ll[1])
    (True, 0.0)
  """
  return (sequence_score(emissions, tags, lengths, transitions, start, end)
          - log_partition(emissions, lengths, transitions, start, end))


@jax.jit
def marginals(emissions: Array, lengths: Array, transitions: Array, start: Array,
              end: Array) -> Array:
  """p(y_t = k | x) by forward-backward: alpha (a forward scan) and beta (a reverse scan).

  Args as `log_partition`.

  Returns:
    float32 [B, T, K]; each real step sums to 1 over k, padded steps are 0. Equal to the
    gradient of `log_partition(...).sum()` with respect to the emissions.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> emissions = jax.random.normal(jax.random.key(0), (1, 4, 3))
    >>> p = crf.marginals(emissions, jnp.array([3]), jnp.zeros((3, 3)), jnp.zeros(3),
    ...                   jnp.zeros(3))
    >>> p.sum(-1).round(4)                                 # step 3 is padding
    Array([[1., 1., 1., 0.]], dtype=float32)
  """
  e_TxBxK, lengths_B, real_TxB, trans, start, end = _prepare(
      emissions, lengths, transitions, start, end)
  if e_TxBxK.shape[0] == 0:
    return jnp.zeros(jnp.shape(emissions), jnp.float32)
  alpha_TxBxK, _ = _forward(e_TxBxK, real_TxB, trans, start)
  beta_TxBxK = _backward(e_TxBxK, real_TxB, trans, end)
  # p_t(k) is proportional to alpha_t(k) beta_t(k): normalising over k at each step needs
  # neither log Z nor the per-step shifts, and sums to 1 however long the sequence.
  log_p_TxBxK = jax.nn.log_softmax(alpha_TxBxK + beta_TxBxK, axis=-1)
  # Masked before exp: a padded step's exp may overflow, and inf * 0 would put NaN in
  # the gradient.
  p_TxBxK = jnp.exp(jnp.where(real_TxB[:, :, None], log_p_TxBxK, -jnp.inf))
  return jnp.swapaxes(p_TxBxK, 0, 1)


@jax.jit
def viterbi(emissions: Array, lengths: Array, transitions: Array, start: Array, end: Array,
            allowed: Array | None = None, allowed_start: Array | None = None,
            allowed_end: Array | None = None) -> tuple[Array, Array]:
  """The highest-scoring tag sequence of each sequence (max-product, then a backtrace).

  Args:
    emissions, lengths, transitions, start, end: as `log_partition`.
    allowed: bool [K, K] or None; `allowed[i, j]` False forbids tag i followed by tag j.
    allowed_start: bool [K] or None; False forbids a sequence to start with that tag.
    allowed_end: bool [K] or None; False forbids a sequence to end with that tag.

  Returns:
    (tags int32 [B, T] with 0 at padded steps, scores float32 [B] = s(tags), 0 for length 0).
    If the constraints leave a sequence no allowed path, its score is -inf.

  Example:
    >>> import jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> labels = ("O", "B-PER", "I-PER")
    >>> emissions = jnp.array([[[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]])   # I-PER scores best
    >>> allowed, allowed_start, allowed_end = crf.bio_constraints(labels)
    >>> tags, score = crf.viterbi(emissions, jnp.array([2]), jnp.zeros((3, 3)), jnp.zeros(3),
    ...                           jnp.zeros(3), allowed, allowed_start, allowed_end)
    >>> [labels[t] for t in tags[0].tolist()]               # never I-PER first
    ['B-PER', 'I-PER']
  """
  e_TxBxK, lengths_B, real_TxB, trans, start, end = _prepare(
      emissions, lengths, transitions, start, end)
  num_steps, batch, num_tags = e_TxBxK.shape
  if num_steps == 0:
    return jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch,), jnp.float32)
  if allowed is not None:
    trans = jnp.where(jnp.asarray(allowed, bool), trans, _FORBIDDEN)
  if allowed_start is not None:
    start = jnp.where(jnp.asarray(allowed_start, bool), start, _FORBIDDEN)
  if allowed_end is not None:
    end = jnp.where(jnp.asarray(allowed_end, bool), end, _FORBIDDEN)
  identity_BxK = jnp.broadcast_to(jnp.arange(num_tags, dtype=jnp.int32), (batch, num_tags))

  def forward_step(carry, inputs):
    delta_BxK, shift_B = carry
    e_BxK, real_B = inputs
    cand_BxKxK = delta_BxK[:, :, None] + trans    # [b, previous i, next j]
    back_BxK = jnp.argmax(cand_BxKxK, axis=1).astype(jnp.int32)
    new_BxK, step_shift_B = _normalize(jnp.max(cand_BxKxK, axis=1) + e_BxK)
    # On padded steps the score is frozen and the backpointer is the identity, so the
    # backtrace below passes through padding unchanged.
    delta_BxK = jnp.where(real_B[:, None], new_BxK, delta_BxK)
    shift_B = shift_B + jnp.where(real_B, step_shift_B, 0.0)
    back_BxK = jnp.where(real_B[:, None], back_BxK, identity_BxK)
    return (delta_BxK, shift_B), back_BxK

  (delta_BxK, shift_B), back_TxBxK = jax.lax.scan(
      forward_step, _normalize(start + e_TxBxK[0]), (e_TxBxK[1:], real_TxB[1:]))
  final_BxK = delta_BxK + end
  last_B = jnp.argmax(final_BxK, axis=-1).astype(jnp.int32)
  score_B = shift_B + jnp.max(final_BxK, axis=-1)

  def back_step(y_B, back_BxK):
    # The carry is the tag at step t; backpointers of step t give the tag at t-1.
    prev_B = jnp.take_along_axis(back_BxK, y_B[:, None], axis=1)[:, 0]
    return prev_B, y_B

  first_B, rest_TxB = jax.lax.scan(back_step, last_B, back_TxBxK, reverse=True)
  tags_TxB = jnp.concatenate([first_B[None], rest_TxB], axis=0)
  tags_BxT = jnp.swapaxes(jnp.where(real_TxB, tags_TxB, 0), 0, 1)
  return tags_BxT, jnp.where(lengths_B > 0, score_B, 0.0)


# IOB2 constraints -----------------------------------------------------------------------------

def _split_label(label: str) -> tuple[str, str]:
  """('B' | 'I' | 'O', entity type) of an IOB2 label; anything not B-X / I-X is outside."""
  if len(label) > 2 and label[1] == "-" and label[0] in "BI":
    return label[0], label[2:]
  return "O", ""


def bio_constraints(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Which transitions a valid IOB2 sequence may use.

  I-X may only follow B-X or I-X, and a sequence cannot start with I-X; anything else
  (O, B-X, and any label not of the form B-X / I-X) is unrestricted. Any tag may end.

  Args:
    labels: the K tag names in id order, e.g. ("O", "B-PER", "I-PER", ...).

  Returns:
    (allowed bool [K, K], allowed_start bool [K], allowed_end bool [K]) for `viterbi`.

  Example:
    >>> from birnn_jax import crf
    >>> allowed, allowed_start, _ = crf.bio_constraints(["O", "B-LOC", "I-LOC"])
    >>> allowed[:, 2].tolist(), allowed_start.tolist()     # who may precede I-LOC; start
    ([False, True, True], [True, True, False])
  """
  parts = [_split_label(label) for label in labels]
  num_tags = len(parts)
  allowed = np.ones((num_tags, num_tags), bool)
  allowed_start = np.ones(num_tags, bool)
  for j, (prefix_j, type_j) in enumerate(parts):
    if prefix_j != "I":
      continue
    allowed_start[j] = False
    for i, (prefix_i, type_i) in enumerate(parts):
      allowed[i, j] = prefix_i in ("B", "I") and type_i == type_j
  return allowed, allowed_start, np.ones(num_tags, bool)


def iobes_constraints(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Which transitions a valid IOBES (BIOES) sequence may use.

  An entity is S-X alone or B-X I-X* E-X: after B-X or I-X only I-X or E-X may follow;
  after anything else (O, E-X, S-X) only O, B-Y or S-Y. A sequence starts with O, B-X or
  S-X and ends with O, E-X or S-X.

  Args:
    labels: the K tag names in id order, e.g. ("O", "B-PER", "I-PER", "E-PER", "S-PER").

  Returns:
    (allowed bool [K, K], allowed_start bool [K], allowed_end bool [K]) for `viterbi`.

  Example:
    >>> from birnn_jax import crf
    >>> allowed, allowed_start, allowed_end = crf.iobes_constraints(
    ...     ["O", "B-PER", "I-PER", "E-PER", "S-PER"])
    >>> allowed[1].tolist(), allowed_end.tolist()          # what may follow B-PER; end
    ([False, False, True, True, False], [True, False, False, True, True])
  """
  parts = [(label[0], label[2:]) if len(label) > 2 and label[1] == "-" and label[0] in "BIES"
           else ("O", "") for label in labels]
  opens = np.array([p in ("B", "I") for p, _ in parts])        # an entity continues after
  starts = np.array([p in ("O", "B", "S") for p, _ in parts])  # may come outside an entity
  num_tags = len(parts)
  allowed = np.zeros((num_tags, num_tags), bool)
  for i, (_, type_i) in enumerate(parts):
    for j, (prefix_j, type_j) in enumerate(parts):
      allowed[i, j] = (prefix_j in ("I", "E") and type_i == type_j) if opens[i] else starts[j]
  return allowed, starts.copy(), ~opens


def is_valid_bio(tags: Sequence[str]) -> bool:
  """Whether a tag sequence obeys `bio_constraints` (no I-X without B-X/I-X before it).

  Example:
    >>> from birnn_jax import crf
    >>> crf.is_valid_bio(["B-PER", "I-PER", "O"]), crf.is_valid_bio(["O", "I-PER"])
    (True, False)
  """
  previous = ("O", "")
  for tag in tags:
    prefix, kind = _split_label(tag)
    if prefix == "I" and (previous[0] == "O" or previous[1] != kind):
      return False
    previous = (prefix, kind)
  return True


# Flax module ----------------------------------------------------------------------------------

class CRF(nn.Module):
  """The CRF's scores as Flax parameters, with the pure functions above as methods.

  Calling the module gives the negative log-likelihood (a loss per sequence); `decode`
  is the (constrained) Viterbi, `log_partition` and `marginals` the other methods.

  Attributes:
    num_tags: K.
    init_scale: the parameters start uniform in [-init_scale, init_scale] (0: all zeros,
      so training starts from independent per-step softmaxes).
    allowed, allowed_start, allowed_end: optional decoding constraints (`bio_constraints`),
      as nested tuples of bools so the module stays hashable; applied by `decode` only.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from birnn_jax import crf
    >>> labels = ["O", "B-PER", "I-PER"]
    >>> module = crf.CRF(num_tags=3, **crf.constraint_attributes(labels))
    >>> emissions = jax.random.normal(jax.random.key(0), (2, 4, 3))   # [batch, time, tags]
    >>> tags, lengths = jnp.zeros((2, 4), jnp.int32), jnp.array([4, 2])
    >>> variables = module.init(jax.random.key(1), emissions, tags, lengths)
    >>> module.apply(variables, emissions, tags, lengths).shape     # the loss per sequence
    (2,)
    >>> best, scores = module.apply(variables, emissions, lengths, method=crf.CRF.decode)
    >>> best.shape, all(crf.is_valid_bio([labels[t] for t in row]) for row in best.tolist())
    ((2, 4), True)
  """
  num_tags: int
  init_scale: float = 0.0
  allowed: tuple | None = None
  allowed_start: tuple | None = None
  allowed_end: tuple | None = None

  def setup(self):
    scale = self.init_scale
    init = (nn.initializers.zeros if scale == 0.0 else
            lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -scale, scale))
    k = self.num_tags
    self.transitions = self.param("transitions", init, (k, k))
    self.start = self.param("start", init, (k,))
    self.end = self.param("end", init, (k,))

  def scores(self) -> tuple[Array, Array, Array]:
    """The parameters: (transitions [K, K], start [K], end [K])."""
    return self.transitions, self.start, self.end

  def __call__(self, emissions: Array, tags: Array, lengths: Array) -> Array:
    """The negative log-likelihood of `tags`, float32 [B] (see `log_likelihood`)."""
    return self.nll(emissions, tags, lengths)

  def nll(self, emissions: Array, tags: Array, lengths: Array) -> Array:
    """The negative log-likelihood of `tags`, float32 [B] (see `log_likelihood`)."""
    return -log_likelihood(emissions, tags, lengths, *self.scores())

  def log_partition(self, emissions: Array, lengths: Array) -> Array:
    """log Z of each sequence, float32 [B] (see the function `log_partition`)."""
    return log_partition(emissions, lengths, *self.scores())

  def marginals(self, emissions: Array, lengths: Array) -> Array:
    """p(y_t = k | x), float32 [B, T, K] (see the function `marginals`)."""
    return marginals(emissions, lengths, *self.scores())

  def decode(self, emissions: Array, lengths: Array) -> tuple[Array, Array]:
    """Constrained Viterbi: (tags int32 [B, T], scores [B])."""
    as_array = lambda a: None if a is None else np.asarray(a, bool)
    return viterbi(emissions, lengths, *self.scores(), allowed=as_array(self.allowed),
                   allowed_start=as_array(self.allowed_start),
                   allowed_end=as_array(self.allowed_end))


def constraint_attributes(labels: Sequence[str], scheme: str = "iob2") -> dict[str, tuple]:
  """Decoding constraints as `CRF` attributes: `CRF(K, **constraint_attributes(labels))`.

  Args:
    labels: the K tag names in id order.
    scheme: 'iob2' (`bio_constraints`) or 'iobes' (`iobes_constraints`).

  Returns:
    `{'allowed': ..., 'allowed_start': ..., 'allowed_end': ...}` as tuples of bools.

  Raises:
    ValueError: an unknown scheme.

  Example:
    >>> from birnn_jax import crf
    >>> attributes = crf.constraint_attributes(["O", "B-ORG", "I-ORG"])
    >>> attributes["allowed_start"]
    (True, True, False)
  """
  constraints = {"iob2": bio_constraints, "iobes": iobes_constraints}
  if scheme not in constraints:
    raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {sorted(constraints)}.")
  allowed, allowed_start, allowed_end = constraints[scheme](labels)
  return {"allowed": tuple(map(tuple, allowed.tolist())),
          "allowed_start": tuple(allowed_start.tolist()),
          "allowed_end": tuple(allowed_end.tolist())}
