"""The linear-chain CRF (birnn_jax/crf.py).

The oracle is brute force: for small K and L every one of the K^L tag sequences is scored
in float64 numpy, which gives log Z, log-likelihoods, marginals and the best sequence with
no dynamic programming at all. The rest checks what the scans must also get right:
padding and other rows never matter, gradients are right, long sequences stay finite.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import crf

pytestmark = pytest.mark.usefixtures("fast_compile")

# (K, T, lengths): lengths include 0, 1 and T in every case.
CASES = {
    "K2_T1": (2, 1, [1, 0, 1]),
    "K3_T4": (3, 4, [4, 0, 1, 2, 3]),
    "K4_T5": (4, 5, [5, 1, 0, 3]),
}
BIO = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def make_problem(num_tags, num_steps, lengths, seed=0, scale=1.0):
  """Random emissions [B, T, K] (padding too: it must not matter), tags, lengths, scores."""
  rng = np.random.default_rng(seed)
  batch = len(lengths)
  return dict(
      emissions=(scale * rng.normal(size=(batch, num_steps, num_tags))).astype(np.float32),
      tags=rng.integers(0, num_tags, size=(batch, num_steps)).astype(np.int32),
      lengths=np.asarray(lengths, np.int32),
      transitions=rng.normal(size=(num_tags, num_tags)).astype(np.float32),
      start=rng.normal(size=num_tags).astype(np.float32),
      end=rng.normal(size=num_tags).astype(np.float32))


def scores_of(p):
  return p["transitions"], p["start"], p["end"]


def brute_score(e_TxK, y, trans, start, end):
  """s(y) in float64 for one sequence of len(y) steps."""
  if not y:
    return 0.0
  e = np.asarray(e_TxK, np.float64)
  s = start[y[0]] + end[y[-1]] + sum(e[t, k] for t, k in enumerate(y))
  return float(s + sum(trans[a, b] for a, b in zip(y[:-1], y[1:])))


def brute_force(p, b, allowed=None, allowed_start=None, allowed_end=None):
  """(log Z, marginals [L, K], best sequence, best score) of row b by enumeration."""
  num_tags = p["emissions"].shape[2]
  length = int(p["lengths"][b])
  trans, start, end = (np.asarray(a, np.float64) for a in scores_of(p))
  seqs = list(itertools.product(range(num_tags), repeat=length))
  scores = np.array([brute_score(p["emissions"][b], list(y), trans, start, end)
                     for y in seqs])
  log_z = float(np.logaddexp.reduce(scores))
  probs = np.exp(scores - log_z)
  marg = np.zeros((length, num_tags))
  for y, prob in zip(seqs, probs):
    marg[np.arange(length), list(y)] += prob

  def ok(y):
    if not y:
      return True
    return ((allowed_start is None or allowed_start[y[0]])
            and (allowed_end is None or allowed_end[y[-1]])
            and (allowed is None or all(allowed[a, c] for a, c in zip(y[:-1], y[1:]))))

  valid = [i for i, y in enumerate(seqs) if ok(y)]
  best = max(valid, key=lambda i: scores[i]) if valid else None
  best_seq = list(seqs[best]) if best is not None else None
  return log_z, marg, best_seq, (scores[best] if best is not None else -np.inf)


# Against brute force ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_log_partition_log_likelihood_and_marginals_match_enumeration(case):
  p = make_problem(*CASES[case], seed=1)
  log_z = crf.log_partition(p["emissions"], p["lengths"], *scores_of(p))
  ll = crf.log_likelihood(p["emissions"], p["tags"], p["lengths"], *scores_of(p))
  marg = crf.marginals(p["emissions"], p["lengths"], *scores_of(p))
  assert log_z.dtype == ll.dtype == marg.dtype == jnp.float32
  trans, start, end = (np.asarray(a, np.float64) for a in scores_of(p))
  for b, length in enumerate(p["lengths"]):
    want_z, want_marg, _, _ = brute_force(p, b)
    want_ll = brute_score(p["emissions"][b], list(p["tags"][b, :length]), trans, start,
                          end) - want_z
    np.testing.assert_allclose(log_z[b], want_z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ll[b], want_ll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(marg[b, :length], want_marg, atol=1e-5)
    np.testing.assert_array_equal(marg[b, length:], 0.0)
  length0 = p["lengths"] == 0
  np.testing.assert_array_equal(np.asarray(log_z)[length0], 0.0)
  np.testing.assert_array_equal(np.asarray(ll)[length0], 0.0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_viterbi_matches_enumeration(case):
  p = make_problem(*CASES[case], seed=2)
  tags, score = crf.viterbi(p["emissions"], p["lengths"], *scores_of(p))
  assert tags.dtype == jnp.int32 and tags.shape == p["tags"].shape
  for b, length in enumerate(p["lengths"]):
    _, _, best, best_score = brute_force(p, b)
    assert list(np.asarray(tags[b, :length])) == best
    np.testing.assert_array_equal(tags[b, length:], 0)
    np.testing.assert_allclose(score[b], best_score, rtol=1e-5, atol=1e-5)
  # The returned score is the CRF score of the returned tags.
  np.testing.assert_allclose(
      score, crf.sequence_score(p["emissions"], tags, p["lengths"], *scores_of(p)),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_constrained_viterbi_matches_enumeration_of_allowed_sequences(case):
  p = make_problem(*CASES[case], seed=3)
  num_tags = p["emissions"].shape[2]
  rng = np.random.default_rng(4)
  allowed = rng.random((num_tags, num_tags)) < 0.6
  allowed[:, 0] = allowed[0, :] = True        # tag 0 is always possible: a path exists
  allowed_start = rng.random(num_tags) < 0.5
  allowed_end = rng.random(num_tags) < 0.5
  allowed_start[0] = allowed_end[0] = True
  tags, score = crf.viterbi(p["emissions"], p["lengths"], *scores_of(p), allowed=allowed,
                            allowed_start=allowed_start, allowed_end=allowed_end)
  for b, length in enumerate(p["lengths"]):
    _, _, best, best_score = brute_force(p, b, allowed, allowed_start, allowed_end)
    assert list(np.asarray(tags[b, :length])) == best
    np.testing.assert_allclose(score[b], best_score, rtol=1e-5, atol=1e-5)


def test_bio_constrained_viterbi_never_emits_invalid_sequences():
  """Emissions that favour I- tags everywhere: unconstrained Viterbi starts with I-X or
  follows O / B-Y with I-X; constrained Viterbi is the best valid sequence."""
  allowed, allowed_start, allowed_end = crf.bio_constraints(BIO)
  rng = np.random.default_rng(5)
  e = rng.normal(size=(6, 4, len(BIO))).astype(np.float32)
  e[:, :, [2, 4]] += 3.0                      # I-PER, I-LOC
  p = dict(emissions=e, lengths=np.array([4, 3, 1, 0, 4, 2], np.int32),
           transitions=np.zeros((5, 5), np.float32), start=np.zeros(5, np.float32),
           end=np.zeros(5, np.float32))
  free, _ = crf.viterbi(e, p["lengths"], *scores_of(p))
  tags, score = crf.viterbi(e, p["lengths"], *scores_of(p), allowed=allowed,
                            allowed_start=allowed_start, allowed_end=allowed_end)
  labels = lambda row, n: [BIO[int(t)] for t in row[:n]]
  assert not all(crf.is_valid_bio(labels(free[b], n)) for b, n in enumerate(p["lengths"]))
  for b, length in enumerate(p["lengths"]):
    assert crf.is_valid_bio(labels(tags[b], length))
    _, _, best, best_score = brute_force(p, b, allowed, allowed_start, allowed_end)
    assert list(np.asarray(tags[b, :length])) == best
    np.testing.assert_allclose(score[b], best_score, rtol=1e-5, atol=1e-5)


def test_bio_constraints():
  allowed, allowed_start, allowed_end = crf.bio_constraints(BIO)
  # Rows: previous tag; columns: next tag. I-PER only after B-PER / I-PER, I-LOC likewise.
  np.testing.assert_array_equal(allowed, [
      [1, 1, 0, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 0, 1, 1],
      [1, 1, 0, 1, 1]])
  np.testing.assert_array_equal(allowed_start, [1, 1, 0, 1, 0])
  np.testing.assert_array_equal(allowed_end, [1, 1, 1, 1, 1])
  assert crf.is_valid_bio(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"])
  assert not crf.is_valid_bio(["I-PER"])
  assert not crf.is_valid_bio(["B-PER", "I-LOC"])
  assert not crf.is_valid_bio(["O", "I-LOC"])
  assert crf.is_valid_bio([])


def test_iobes_constraints():
  """After B-X / I-X only I-X or E-X; elsewhere only O, B-Y or S-Y; start O / B / S; end
  O / E / S; and exactly the sequences they allow are well-formed IOBES."""
  labels = ("O", "B-PER", "I-PER", "E-PER", "S-PER")
  allowed, allowed_start, allowed_end = crf.iobes_constraints(labels)
  np.testing.assert_array_equal(allowed, [
      [1, 1, 0, 0, 1],
      [0, 0, 1, 1, 0],
      [0, 0, 1, 1, 0],
      [1, 1, 0, 0, 1],
      [1, 1, 0, 0, 1]])
  np.testing.assert_array_equal(allowed_start, [1, 1, 0, 0, 1])
  np.testing.assert_array_equal(allowed_end, [1, 0, 0, 1, 1])
  two = ("O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC")
  allowed, _, _ = crf.iobes_constraints(two)
  assert allowed[1, 3] and not allowed[1, 7] and not allowed[2, 6]   # no type change inside
  assert allowed[3, 5] and allowed[8, 4] and not allowed[4, 6]

  def well_formed(seq):   # an entity is S-X, or B-X I-X* E-X
    inside = None
    for tag in seq:
      prefix, kind = tag[0], tag[2:]
      if inside is not None:
        if prefix not in "IE" or kind != inside:
          return False
        inside = None if prefix == "E" else inside
      elif prefix in "IE":
        return False
      elif prefix == "B":
        inside = kind
    return inside is None

  allowed, allowed_start, allowed_end = crf.iobes_constraints(labels)
  for length in range(1, 5):
    for seq in itertools.product(range(len(labels)), repeat=length):
      ok = (allowed_start[seq[0]] and allowed_end[seq[-1]] and
            all(allowed[i, j] for i, j in zip(seq, seq[1:])))
      assert ok == well_formed([labels[t] for t in seq]), [labels[t] for t in seq]
  with pytest.raises(ValueError, match="tag scheme"):
    crf.constraint_attributes(labels, "bilou")


# Properties ------------------------------------------------------------------------------------

def test_marginals_are_the_gradient_of_log_partition_and_sum_to_one():
  p = make_problem(*CASES["K4_T5"], seed=6)
  grad = jax.grad(lambda e: crf.log_partition(e, p["lengths"], *scores_of(p)).sum())(
      p["emissions"])
  marg = crf.marginals(p["emissions"], p["lengths"], *scores_of(p))
  np.testing.assert_allclose(marg, grad, atol=1e-6)
  mask = np.arange(p["emissions"].shape[1])[None, :] < p["lengths"][:, None]
  np.testing.assert_allclose(np.asarray(marg.sum(-1))[mask], 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(marg.sum(-1))[~mask], 0.0)


def brute_log_z_jax(p_row_e, length, trans, start, end):
  """log Z of one row by enumeration, written in jnp so that jax.grad differentiates it."""
  if length == 0:
    return jnp.zeros(())
  num_tags = p_row_e.shape[-1]
  seqs = np.array(list(itertools.product(range(num_tags), repeat=length)))   # [N, L]
  scores = (start[seqs[:, 0]] + end[seqs[:, -1]]
            + p_row_e[np.arange(length), seqs].sum(-1)
            + trans[seqs[:, :-1], seqs[:, 1:]].sum(-1))
  return jax.nn.logsumexp(scores)


def test_forward_backward_gradient_equals_autodiff_of_enumeration():
  """log_partition's custom VJP (the beta scan and pairwise marginals) against jax.grad
  of the brute-force log Z, for every input, with a random cotangent; also under vmap."""
  p = make_problem(*CASES["K3_T4"], seed=16)
  weights = np.random.default_rng(17).normal(size=len(p["lengths"])).astype(np.float32)
  args = (p["emissions"], p["transitions"], p["start"], p["end"])

  def ours(e, trans, start, end):
    return jnp.sum(weights * crf.log_partition(e, p["lengths"], trans, start, end))

  def brute(e, trans, start, end):
    return sum(w * brute_log_z_jax(e[b], int(n), trans, start, end)
               for b, (w, n) in enumerate(zip(weights, p["lengths"])))

  got = jax.grad(ours, argnums=(0, 1, 2, 3))(*args)
  want = jax.jit(jax.grad(brute, argnums=(0, 1, 2, 3)))(*args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Per-example gradients by vmap equal one row at a time.
  per_row = jax.vmap(jax.grad(lambda e, n: crf.log_partition(e[None], n[None], *args[1:])[0]))(
      p["emissions"], p["lengths"])
  np.testing.assert_allclose(per_row, crf.marginals(p["emissions"], p["lengths"], *args[1:]),
                             atol=1e-6)


def test_zero_scores_reduce_to_per_step_softmax_and_argmax():
  p = make_problem(*CASES["K4_T5"], seed=7)
  zero = (np.zeros((4, 4), np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32))
  marg = crf.marginals(p["emissions"], p["lengths"], *zero)
  tags, _ = crf.viterbi(p["emissions"], p["lengths"], *zero)
  mask = np.arange(5)[None, :] < p["lengths"][:, None]
  np.testing.assert_allclose(np.asarray(marg)[mask],
                             jax.nn.softmax(p["emissions"], -1)[mask], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(tags)[mask], p["emissions"].argmax(-1)[mask])


def test_nll_gradients_match_finite_differences():
  p = make_problem(*CASES["K3_T4"], seed=8)
  args = {k: p[k] for k in ("emissions", "transitions", "start", "end")}

  def nll(a):
    return -crf.log_likelihood(a["emissions"], p["tags"], p["lengths"], a["transitions"],
                               a["start"], a["end"]).sum()

  grads = jax.grad(nll)(args)
  rng = np.random.default_rng(9)
  eps = 1e-2
  for _ in range(3):
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in args.items()}
    plus = {k: v + eps * direction[k] for k, v in args.items()}
    minus = {k: v - eps * direction[k] for k, v in args.items()}
    numeric = (float(nll(plus)) - float(nll(minus))) / (2 * eps)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in args)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-3)


def test_padding_and_other_rows_do_not_matter():
  p = make_problem(*CASES["K4_T5"], seed=10)
  q = {k: v.copy() for k, v in p.items()}
  rng = np.random.default_rng(11)
  pad = np.arange(5)[None, :] >= p["lengths"][:, None]
  q["emissions"][pad] = 100.0 * rng.normal(size=(pad.sum(), 4))
  q["tags"][pad] = rng.integers(0, 4, size=pad.sum())
  q["emissions"][0] += 5.0 * rng.normal(size=q["emissions"][0].shape)  # row 0 changes
  q["tags"][0] = (q["tags"][0] + 1) % 4

  def everything(x):
    return (crf.log_partition(x["emissions"], x["lengths"], *scores_of(x)),
            crf.log_likelihood(x["emissions"], x["tags"], x["lengths"], *scores_of(x)),
            crf.marginals(x["emissions"], x["lengths"], *scores_of(x)),
            *crf.viterbi(x["emissions"], x["lengths"], *scores_of(x)),
            jax.grad(lambda e: crf.log_likelihood(e, x["tags"], x["lengths"],
                                                  *scores_of(x)).sum())(x["emissions"]))

  for a, b in zip(everything(p), everything(q)):
    np.testing.assert_allclose(np.asarray(a)[1:], np.asarray(b)[1:], rtol=1e-6, atol=1e-6)
  grad_q = everything(q)[-1]
  assert np.all(np.isfinite(grad_q)) and np.all(np.asarray(grad_q)[pad] == 0.0)


def test_long_sequences_stay_finite():
  num_steps = 2000
  p = make_problem(5, num_steps, [num_steps, 1, 1234, 0], seed=12, scale=10.0)
  log_z = crf.log_partition(p["emissions"], p["lengths"], *scores_of(p))
  ll = crf.log_likelihood(p["emissions"], p["tags"], p["lengths"], *scores_of(p))
  marg = crf.marginals(p["emissions"], p["lengths"], *scores_of(p))
  tags, score = crf.viterbi(p["emissions"], p["lengths"], *scores_of(p))
  assert np.all(np.isfinite(log_z)) and np.all(np.isfinite(ll)) and np.all(np.isfinite(score))
  assert np.all(np.asarray(ll) <= 1e-3) and float(log_z[0]) > 1e4
  mask = np.arange(num_steps)[None, :] < p["lengths"][:, None]
  np.testing.assert_allclose(np.asarray(marg.sum(-1))[mask], 1.0, atol=1e-4)
  np.testing.assert_allclose(
      score, crf.sequence_score(p["emissions"], tags, p["lengths"], *scores_of(p)),
      rtol=1e-5)


def test_bfloat16_emissions_compute_in_float32():
  p = make_problem(*CASES["K4_T5"], seed=13)
  e16 = jnp.asarray(p["emissions"], jnp.bfloat16)
  e32 = jnp.asarray(e16, jnp.float32)   # the same values, exactly
  for fn in (crf.log_partition, crf.marginals):
    out16, out32 = fn(e16, p["lengths"], *scores_of(p)), fn(e32, p["lengths"], *scores_of(p))
    assert out16.dtype == jnp.float32
    np.testing.assert_array_equal(out16, out32)
  grad = jax.grad(lambda e: crf.log_likelihood(e, p["tags"], p["lengths"],
                                               *scores_of(p)).sum())(e16)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
  np.testing.assert_array_equal(crf.viterbi(e16, p["lengths"], *scores_of(p))[0],
                                crf.viterbi(e32, p["lengths"], *scores_of(p))[0])


# The Flax module -------------------------------------------------------------------------------

def test_module_loss_and_decoding_under_jit_grad_and_vmap():
  p = make_problem(len(BIO), 5, [5, 0, 3, 1], seed=14)
  module = crf.CRF(len(BIO), **crf.constraint_attributes(BIO))
  variables = module.init(jax.random.key(0), p["emissions"], p["tags"], p["lengths"])
  params = variables["params"]
  assert {k: v.shape for k, v in params.items()} == {
      "transitions": (5, 5), "start": (5,), "end": (5,)}
  assert all(np.all(v == 0) for v in params.values())   # zeros by default
  params = jax.tree.map(lambda v: v + jnp.asarray(
      np.random.default_rng(15).normal(size=v.shape), jnp.float32), params)

  loss = jax.jit(lambda prm, e: module.apply({"params": prm}, e, p["tags"], p["lengths"]))
  want = -crf.log_likelihood(p["emissions"], p["tags"], p["lengths"], params["transitions"],
                             params["start"], params["end"])
  np.testing.assert_allclose(loss(params, p["emissions"]), want, rtol=1e-6)

  grads = jax.grad(lambda prm: loss(prm, p["emissions"]).sum())(params)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))

  # vmap over a leading axis of emissions equals a loop.
  stacked = np.stack([p["emissions"], 2 * p["emissions"]])
  batched = jax.vmap(loss, in_axes=(None, 0))(params, stacked)
  np.testing.assert_allclose(batched[1], loss(params, stacked[1]), rtol=1e-6)

  decode = jax.jit(lambda prm, e: module.apply({"params": prm}, e, p["lengths"],
                                               method=crf.CRF.decode))
  tags, _ = decode(params, p["emissions"])
  allowed, allowed_start, allowed_end = crf.bio_constraints(BIO)
  np.testing.assert_array_equal(tags, crf.viterbi(
      p["emissions"], p["lengths"], params["transitions"], params["start"], params["end"],
      allowed, allowed_start, allowed_end)[0])
  tags16, _ = decode(params, jnp.asarray(p["emissions"], jnp.bfloat16))
  assert tags16.shape == tags.shape
  marg = module.apply({"params": params}, p["emissions"], p["lengths"],
                      method=crf.CRF.marginals)
  np.testing.assert_allclose(marg, crf.marginals(
      p["emissions"], p["lengths"], params["transitions"], params["start"], params["end"]))
