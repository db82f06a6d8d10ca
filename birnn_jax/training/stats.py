"""Statistics over members (seeds): a result is a distribution, not a number (design.md §9).

- :func:`describe`: n, mean, sample sd, min, max and the 95% confidence interval of the mean
  (Student's t), with the per-member values;
- :func:`paired_difference`: member k of A minus member k of B, described the same way, with
  the paired t-test's and the Wilcoxon signed-rank test's p-values (``scipy.stats``) and, where
  the optional ``deepsig`` package is installed, the Almost Stochastic Order test's ε_min;
- :func:`summarize_members`: :func:`describe` of every number all members report;
- :func:`markdown_table`: the table a reader pastes into a paper.

Every figure is a plain Python float, int or None, so a result goes through
``json.dumps(..., allow_nan=False)``: never NaN or infinity. The rules for what cannot be
computed, the same everywhere:

- one member: ``sd`` and ``ci95`` are None (nothing to estimate a spread from), as are the
  p-values and ε_min of a paired difference of one pair;
- a member value that is not finite (a diverged run): that value is None in ``values`` and
  every figure computed from it (mean, sd, min, max, the interval, the tests) is None;
- a paired difference whose differences are all zero: the p-values and ε_min are None (the
  tests' statistics are 0/0); the mean, sd and interval are 0.

The tests are scipy's and deepsig's, not written here. scipy is imported by this module only,
which the runner loads; ``import birnn_jax`` (the library) never does.
"""

import contextlib
import importlib.metadata
import math
import numbers
import re
import warnings
from collections.abc import Collection, Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
"""The level of every interval (``ci95``) and of the ASO test."""

ASO_MIN_VERSION = (1, 2, 4)
"""deepsig's first version whose ``confidence_level`` means a confidence (0.95), not an
error rate (0.05): an older deepsig is treated as not installed."""


def _finite(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


@contextlib.contextmanager
def _quiet():
  """scipy's warnings about degenerate inputs (zero variance, 0/0) while we handle them."""
  with warnings.catch_warnings(), np.errstate(all="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    warnings.simplefilter("ignore", UserWarning)
    yield


def _array(values, what: str) -> np.ndarray:
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or len(x) == 0:
    raise ValueError(f"{what} needs a non-empty list of numbers, got shape {x.shape}.")
  return x


def describe(values: Sequence[float]) -> dict:
  """The statistics of one metric over the members.

  Returns ``{"n", "mean", "sd", "min", "max", "ci95", "values"}``: ``n`` the number of
  members, ``sd`` the sample standard deviation (ddof=1), ``ci95`` the Student t interval
  of the mean, ``[mean - h, mean + h]`` with ``h = t_{0.975, n-1} * sd / sqrt(n)``
  (``scipy.stats.t.interval``), and ``values`` the members' values in order. With one
  member ``sd`` and ``ci95`` are None; a non-finite value is None in ``values`` and makes
  every figure None.

  >>> d = describe([0.70, 0.72, 0.74])
  >>> d["n"], round(d["mean"], 4), round(d["sd"], 4), [round(c, 4) for c in d["ci95"]]
  (3, 0.72, 0.02, [0.6703, 0.7697])
  >>> describe([0.7])["sd"] is None
  True

  Raises:
    ValueError: ``values`` is empty or not one-dimensional.
  """
  x = _array(values, "describe")
  n = len(x)
  out = {"n": n, "mean": None, "sd": None, "min": None, "max": None, "ci95": None,
         "values": [_finite(v) for v in x]}
  if not np.all(np.isfinite(x)):
    return out
  mean = float(np.mean(x))
  out.update(mean=mean, min=float(np.min(x)), max=float(np.max(x)))
  if n > 1:
    sd = float(np.std(x, ddof=1))
    out["sd"] = sd
    if sd == 0:
      out["ci95"] = [mean, mean]
    else:
      low, high = scipy_stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sd / math.sqrt(n))
      out["ci95"] = [float(low), float(high)]
  return out


def _deepsig_aso():
  """deepsig's ``aso`` function, or None where deepsig (>= 1.2.4) is not installed."""
  try:
    version = importlib.metadata.version("deepsig")
    from deepsig import aso  # pylint: disable=g-import-not-at-top
  except (ImportError, importlib.metadata.PackageNotFoundError):
    return None
  parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
  return aso if parts >= ASO_MIN_VERSION else None


def aso_available() -> bool:
  """Whether :func:`paired_difference` can run the Almost Stochastic Order test: the
  optional ``deepsig`` package (>= 1.2.4, ``pip install deepsig``) is installed.

  >>> isinstance(aso_available(), bool)
  True
  """
  return _deepsig_aso() is not None


def _aso_eps_min(aso, a: np.ndarray, b: np.ndarray, seed: int) -> float:
  """ε_min of ASO(A, B): deepsig's bootstrap reseeds numpy's global generator, which we
  give back as we found it."""
  state = np.random.get_state()
  try:
    with _quiet():
      eps = aso(a, b, confidence_level=CONFIDENCE, num_jobs=1, show_progress=False, seed=seed)
  finally:
    np.random.set_state(state)
  return float(eps)


def paired_difference(a: Sequence[float], b: Sequence[float], *, aso: bool | None = None,
                      aso_seed: int = 0) -> dict:
  """Member k of A minus member k of B (the same seed under two variants), over the members.

  Returns :func:`describe` of the differences ``a[k] - b[k]`` (``ci95`` is the paired t
  interval, ``scipy.stats.ttest_rel(a, b).confidence_interval()``), plus, all two-sided:

  - ``p_ttest``: the paired t-test's p-value (``scipy.stats.ttest_rel``). Differences that
    are all equal and not zero have an infinite t and ``p_ttest`` 0.0 (scipy's value).
  - ``p_wilcoxon``: the Wilcoxon signed-rank test's (``scipy.stats.wilcoxon`` with its
    defaults: zero differences dropped, the exact distribution for small n without ties).
    With n pairs its smallest p is ``2 / 2**n``: 0.0625 for 5 seeds, so with 5 seeds it
    never reaches 0.05, however consistent the difference.
  - ``aso_eps_min``: the Almost Stochastic Order test (Dror et al., 2019; deepsig's
    ``aso(a, b)`` at 95% confidence, 1000 bootstrap iterations, seeded by ``aso_seed``),
    ε_min in [0, 1]: below 0.5, A's values are almost stochastically *larger* than B's
    (better, where higher is better; for a loss, read it the other way round). It compares
    the two distributions, not the pairs. About 3 s per call.

  Each is None where it cannot be computed: fewer than two pairs, all differences zero
  (for ASO: the same values in both, in any order), a non-finite value, or (ASO only)
  deepsig not installed or ``aso=False``.

  Args:
    a: member k's value under variant A, for each k.
    b: the same members' values under variant B, in the same order.
    aso: run the ASO test: None (default) where deepsig is installed, True requires it
      (ImportError otherwise), False never.
    aso_seed: the seed of ASO's bootstrap, so that a result is reproducible.

  >>> d = paired_difference([0.72, 0.74, 0.73, 0.75, 0.71],
  ...                       [0.70, 0.71, 0.72, 0.72, 0.70], aso=False)
  >>> round(d["mean"], 4), round(d["p_ttest"], 4), d["p_wilcoxon"]
  (0.02, 0.0111, 0.0625)

  Raises:
    ValueError: A and B do not have the same number (at least one) of members.
    ImportError: ``aso=True`` and deepsig is not installed.
  """
  a, b = _array(a, "paired_difference"), _array(b, "paired_difference")
  if a.shape != b.shape:
    raise ValueError(f"paired_difference needs as many members in A as in B (member k "
                     f"against member k), got {len(a)} and {len(b)}.")
  run_aso = None
  if aso is not False:
    run_aso = _deepsig_aso()
    if run_aso is None and aso:
      raise ImportError("paired_difference(aso=True) needs deepsig >= "
                        f"{'.'.join(map(str, ASO_MIN_VERSION))}: pip install deepsig")
  d = a - b
  out = describe(d)
  out.update(p_ttest=None, p_wilcoxon=None, aso_eps_min=None)
  if len(d) < 2 or out["mean"] is None or not np.any(d != 0):
    return out
  with _quiet():
    t = scipy_stats.ttest_rel(a, b)
    out["p_ttest"] = _finite(t.pvalue)
    if out["sd"] > 0 and hasattr(t, "confidence_interval"):   # scipy >= 1.10
      ci = t.confidence_interval(CONFIDENCE)
      out["ci95"] = [float(ci.low), float(ci.high)]
    out["p_wilcoxon"] = _finite(scipy_stats.wilcoxon(d).pvalue)
  if run_aso is not None and not np.array_equal(np.sort(a), np.sort(b)):
    out["aso_eps_min"] = _aso_eps_min(run_aso, a, b, aso_seed)
  return out


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def summarize_members(per_member: Sequence[dict],
                      exclude: Collection[str] = ("seed",)) -> dict:
  """:func:`describe` of every metric the members report: ``{metric: describe(...)}``.

  A metric is a top-level key whose value is a number (int or float, numpy's too; not a
  bool) in *every* member's dict; keys some member lacks, nested dicts, lists, strings and
  flags are left out, as are the keys in ``exclude`` (by default ``seed``, which differs by
  construction). Metrics keep the first member's key order.

  >>> s = summarize_members([{"seed": 0, "test_f1": 0.70, "tag": "a"},
  ...                        {"seed": 1, "test_f1": 0.74, "tag": "b"}])
  >>> list(s), s["test_f1"]["mean"]
  (['test_f1'], 0.72)

  Raises:
    ValueError: ``per_member`` is empty.
  """
  if not per_member:
    raise ValueError("summarize_members needs at least one member's results.")
  keys = [k for k, v in per_member[0].items()
          if k not in exclude and _is_number(v)
          and all(k in r and _is_number(r[k]) for r in per_member)]
  return {k: describe([r[k] for r in per_member]) for k in keys}


def _num(x: float | None, digits: int) -> str:
  """A fixed-point figure; ``–`` for None, no ``-0.0000``."""
  if x is None:
    return "–"
  s = f"{x:.{digits}f}"
  return f"{0:.{digits}f}" if float(s) == 0 else s


def _mean_sd(d: dict, digits: int) -> str:
  if d["sd"] is None:
    return _num(d["mean"], digits)
  return f"{_num(d['mean'], digits)} ± {_num(d['sd'], digits)}"


def _interval(d: dict, digits: int) -> str:
  if d["ci95"] is None:
    return "–"
  return f"[{_num(d['ci95'][0], digits)}, {_num(d['ci95'][1], digits)}]"


def _p(p: float | None) -> str:
  return "–" if p is None else f"{p:.3g}"


def _cell(name: str) -> str:
  return str(name).replace("|", "\\|") or "–"


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def _rule(columns: int) -> str:
  return "|" + "---|" * columns


def markdown_table(per_variant: dict[str, dict[str, dict]],
                   paired: dict[str, dict[str, dict]] | None = None, digits: int = 4,
                   ensemble: dict[str, dict[str, float]] | None = None) -> str:
  """The members' statistics as markdown tables, to paste into a paper.

  The first table has one row per (variant, metric): ``mean ± sd``, the 95% interval, n
  and the per-seed values (``nan`` for a non-finite one). Where every variant is named
  ``""`` (a run of one model) the variant column is left out. Then, after a blank line,
  one row per (paired difference, metric): ``mean ± sd`` of the differences, their 95%
  interval, n, the paired t-test's and the Wilcoxon test's p-values, and a column for
  ASO's ε_min where any row has one. A figure that is None reads ``–``; p-values have
  three significant digits. The output depends on the inputs only (dict order kept).

  Args:
    per_variant: ``{variant: {metric: describe(...)}}`` (:func:`summarize_members`'s
      output per variant).
    paired: ``{comparison: {metric: paired_difference(...)}}``.
    digits: the decimals of every figure but the p-values.
    ensemble: ``{variant: {metric: value}}``, the members' ensemble's figures; where given,
      the first table has an ``ensemble`` column (``–`` where a metric has none).

  >>> print(markdown_table({"": {"test_f1": describe([0.70, 0.72, 0.74])}}))
  | metric | mean ± sd | 95% CI | n | per seed |
  |---|---|---|---|---|
  | test_f1 | 0.7200 ± 0.0200 | [0.6703, 0.7697] | 3 | 0.7000, 0.7200, 0.7400 |
  """
  named = any(v != "" for v in per_variant)
  lines = []
  if per_variant:
    head = ((["variant"] if named else []) + ["metric", "mean ± sd", "95% CI", "n", "per seed"]
            + (["ensemble"] if ensemble else []))
    lines += [_row(head), _rule(len(head))]
    for variant, metrics in per_variant.items():
      for metric, d in metrics.items():
        seeds = ", ".join("nan" if v is None else _num(v, digits) for v in d["values"])
        cells = (([_cell(variant)] if named else [])
                 + [_cell(metric), _mean_sd(d, digits), _interval(d, digits), str(d["n"]), seeds])
        if ensemble:
          value = (ensemble.get(variant) or {}).get(metric)
          cells.append(_num(value, digits) if _is_number(value) else "–")
        lines.append(_row(cells))
  rows = [(name, metric, d) for name, metrics in (paired or {}).items()
          for metric, d in metrics.items()]
  if rows:
    with_aso = any(d.get("aso_eps_min") is not None for _, _, d in rows)
    head = ["paired difference", "metric", "mean ± sd", "95% CI", "n", "p (paired t)",
            "p (Wilcoxon)"] + (["ASO ε_min"] if with_aso else [])
    lines += ([""] if lines else []) + [_row(head), _rule(len(head))]
    for name, metric, d in rows:
      cells = [_cell(name), _cell(metric), _mean_sd(d, digits), _interval(d, digits),
               str(d["n"]), _p(d["p_ttest"]), _p(d["p_wilcoxon"])]
      if with_aso:
        aso = d.get("aso_eps_min")
        cells.append("–" if aso is None else f"{aso:.3f}")
      lines.append(_row(cells))
  return "\n".join(lines)
