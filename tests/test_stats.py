"""Statistics over members (training/stats.py), checked against oracles written out here: hand
means and sds, the textbook t interval with quantiles from a printed t table, closed forms of
the t distribution's tail for 1 and 2 degrees of freedom, the exact Wilcoxon null
distribution, numpy."""

import doctest
import importlib.metadata
import json
import math
import sys
import types

import numpy as np
import pytest

from birnn_jax.training import stats

# Two-sided 95% quantiles t_{0.975, df}, as printed in a t table.
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622}


def textbook_interval(values, df_quantile):
  x = np.asarray(values, np.float64)
  half = df_quantile * x.std(ddof=1) / math.sqrt(len(x))
  return [x.mean() - half, x.mean() + half]


def json_round_trip(obj):
  return json.loads(json.dumps(obj, allow_nan=False))


# --- describe -------------------------------------------------------------------------------


def test_describe_five_values_by_hand():
  d = stats.describe([0.70, 0.72, 0.74, 0.76, 0.78])
  assert d["n"] == 5
  assert d["mean"] == pytest.approx(0.74, abs=1e-12)
  # deviations ±0.04, ±0.02, 0: sum of squares 0.004, / (n - 1) = 0.001
  assert d["sd"] == pytest.approx(math.sqrt(0.001), abs=1e-12)
  assert (d["min"], d["max"]) == (0.70, 0.78)
  half = 2.7764 * math.sqrt(0.001) / math.sqrt(5)   # t_{0.975,4} = 2.7764
  assert d["ci95"] == pytest.approx([0.74 - half, 0.74 + half], abs=1e-5)
  assert d["values"] == [0.70, 0.72, 0.74, 0.76, 0.78]


def test_describe_matches_numpy_and_the_t_table_on_ten_values():
  x = np.random.default_rng(3).normal(0.8, 0.05, size=10)
  d = stats.describe(x)
  assert d["mean"] == pytest.approx(x.mean(), rel=1e-12)
  assert d["sd"] == pytest.approx(x.std(ddof=1), rel=1e-12)   # sample sd, not ddof=0
  assert d["sd"] != pytest.approx(x.std(ddof=0), rel=1e-6)
  assert d["ci95"] == pytest.approx(textbook_interval(x, T_TABLE[9]), abs=1e-5)
  assert (d["min"], d["max"]) == (x.min(), x.max())
  assert all(type(v) is float for v in d["values"] + [d["mean"], d["sd"], *d["ci95"]])


def test_describe_one_member_has_no_spread_and_is_json_safe():
  d = stats.describe([0.7])
  assert d == {"n": 1, "mean": 0.7, "sd": None, "min": 0.7, "max": 0.7, "ci95": None,
               "values": [0.7]}
  assert json_round_trip(d) == d


def test_describe_two_members_uses_one_degree_of_freedom():
  d = stats.describe([1.0, 3.0])
  assert d["sd"] == pytest.approx(math.sqrt(2))
  # h = t_{0.975,1} * sqrt(2) / sqrt(2) = 12.7062
  assert d["ci95"] == pytest.approx([2 - 12.7062, 2 + 12.7062], abs=1e-4)


def test_describe_equal_values_has_a_zero_width_interval():
  d = stats.describe([0.5, 0.5, 0.5])
  assert d["sd"] == 0.0 and d["ci95"] == [0.5, 0.5]


def test_describe_non_finite_value_is_none_everywhere_and_json_safe():
  d = stats.describe([0.7, float("nan"), 0.8])
  assert d["n"] == 3 and d["values"] == [0.7, None, 0.8]
  assert all(d[k] is None for k in ("mean", "sd", "min", "max", "ci95"))
  assert json_round_trip(d) == d
  assert stats.describe([1.0, float("inf")])["values"] == [1.0, None]


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_describe_refuses_empty_or_nested_input(bad):
  with pytest.raises(ValueError, match="describe needs a non-empty list"):
    stats.describe(bad)


# --- paired_difference ----------------------------------------------------------------------

A5 = [0.72, 0.74, 0.73, 0.75, 0.71]
B5 = [0.70, 0.71, 0.72, 0.72, 0.70]   # differences 0.02, 0.03, 0.01, 0.03, 0.01


def test_paired_difference_is_describe_of_the_differences():
  d = stats.paired_difference(A5, B5, aso=False)
  ref = stats.describe(np.subtract(A5, B5))
  for key in ("n", "mean", "sd", "min", "max"):
    assert d[key] == pytest.approx(ref[key], rel=1e-12), key
  assert d["values"] == pytest.approx(ref["values"], rel=1e-12)
  # ttest_rel's interval and describe's t interval agree, and both are the textbook one.
  assert d["ci95"] == pytest.approx(ref["ci95"], rel=1e-9)
  assert d["ci95"] == pytest.approx(textbook_interval(np.subtract(A5, B5), T_TABLE[4]),
                                    abs=1e-5)


def test_paired_difference_known_significant_case():
  d = stats.paired_difference(A5, B5, aso=False)
  assert d["mean"] == pytest.approx(0.02) and d["sd"] == pytest.approx(0.01)
  # t = 0.02 / (0.01 / sqrt 5) = 4.472, df 4; the table gives t_{0.99,4} = 3.7469 and
  # t_{0.995,4} = 4.6041, so the two-sided p lies between 0.01 and 0.02.
  assert 0.01 < d["p_ttest"] < 0.02
  assert d["ci95"][0] > 0   # the interval excludes zero, as p < 0.05 says
  # Exact Wilcoxon: all 5 differences positive, P = 2 / 2**5.
  assert d["p_wilcoxon"] == pytest.approx(2 / 2**5)


def test_paired_difference_wilcoxon_reaches_significance_with_six_pairs():
  d = stats.paired_difference([1, 2, 3, 4, 5, 6], [0] * 6, aso=False)
  assert d["p_wilcoxon"] == pytest.approx(2 / 2**6)


def test_paired_difference_known_null_case():
  b = [0.70, 0.75, 0.72, 0.78]
  a = [0.71, 0.74, 0.75, 0.75]      # differences +0.01, -0.01, +0.03, -0.03: mean 0
  d = stats.paired_difference(a, b, aso=False)
  assert d["mean"] == pytest.approx(0.0, abs=1e-12)
  assert d["p_ttest"] == pytest.approx(1.0, abs=1e-9)       # t = 0
  assert d["p_wilcoxon"] == pytest.approx(1.0)               # W+ = W-
  assert d["ci95"][0] < 0 < d["ci95"][1]


def test_paired_difference_two_pairs_against_the_closed_form():
  d = stats.paired_difference([1.0, 2.0], [0.0, 0.0], aso=False)
  # t = 1.5 / (sqrt(0.5) / sqrt 2) = 3 with 1 df (Cauchy): p = 1 - (2/pi) atan(3)
  assert d["p_ttest"] == pytest.approx(1 - 2 / math.pi * math.atan(3.0), rel=1e-9)
  assert d["p_wilcoxon"] == pytest.approx(0.5)               # 2 / 2**2
  assert d["ci95"] == pytest.approx([1.5 - 12.7062 * 0.5, 1.5 + 12.7062 * 0.5], abs=1e-4)


def test_paired_difference_one_pair_has_no_tests():
  d = stats.paired_difference([0.8], [0.7], aso=True if stats.aso_available() else False)
  assert d["n"] == 1 and d["mean"] == pytest.approx(0.1)
  assert d["sd"] is d["ci95"] is d["p_ttest"] is d["p_wilcoxon"] is d["aso_eps_min"] is None
  assert json_round_trip(d) == d


def test_paired_difference_all_zero_differences_has_no_p_values():
  d = stats.paired_difference([0.7, 0.8, 0.9], [0.7, 0.8, 0.9], aso=False)
  assert (d["mean"], d["sd"], d["ci95"]) == (0.0, 0.0, [0.0, 0.0])
  assert d["p_ttest"] is None and d["p_wilcoxon"] is None and d["aso_eps_min"] is None
  assert json_round_trip(d) == d


def test_paired_difference_constant_nonzero_difference():
  d = stats.paired_difference([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0], aso=False)
  assert d["sd"] == 0.0 and d["ci95"] == [1.0, 1.0]
  assert d["p_ttest"] == 0.0                                 # infinite t
  assert d["p_wilcoxon"] == pytest.approx(2 / 2**5)
  json.dumps(d, allow_nan=False)


def test_paired_difference_non_finite_member_gives_none():
  d = stats.paired_difference([0.7, float("nan"), 0.9], [0.6, 0.7, 0.8], aso=False)
  assert d["values"][1] is None and d["mean"] is None
  assert d["p_ttest"] is None and d["p_wilcoxon"] is None
  json.dumps(d, allow_nan=False)


def test_paired_difference_refuses_unequal_members():
  with pytest.raises(ValueError, match="got 3 and 2"):
    stats.paired_difference([1, 2, 3], [1, 2])


def test_paired_interval_without_ttest_rel_confidence_interval(monkeypatch):
  """scipy < 1.10: ttest_rel's result has no confidence_interval; the t interval is used."""
  real = stats.scipy_stats.ttest_rel
  bare = lambda a, b: types.SimpleNamespace(pvalue=real(a, b).pvalue)
  monkeypatch.setattr(stats.scipy_stats, "ttest_rel", bare)
  d = stats.paired_difference(A5, B5, aso=False)
  assert d["ci95"] == pytest.approx(textbook_interval(np.subtract(A5, B5), T_TABLE[4]),
                                    abs=1e-5)
  assert 0.01 < d["p_ttest"] < 0.02


# --- ASO (deepsig, optional) ----------------------------------------------------------------


def test_aso_without_deepsig(monkeypatch):
  monkeypatch.setattr(stats, "_deepsig_aso", lambda: None)
  assert stats.aso_available() is False
  assert stats.paired_difference(A5, B5)["aso_eps_min"] is None
  with pytest.raises(ImportError, match="pip install deepsig"):
    stats.paired_difference(A5, B5, aso=True)


def test_aso_with_a_fake_deepsig_is_called_seeded_and_leaves_numpys_rng(monkeypatch):
  calls = []
  def fake_aso(a, b, **kwargs):
    calls.append((list(a), list(b), kwargs))
    np.random.seed(12345)         # deepsig reseeds numpy's global generator
    return np.float64(0.125)
  monkeypatch.setattr(stats, "_deepsig_aso", lambda: fake_aso)
  np.random.seed(7)
  expected_next = np.random.RandomState(7).random_sample()
  d = stats.paired_difference(A5, B5, aso_seed=3)
  assert d["aso_eps_min"] == 0.125 and type(d["aso_eps_min"]) is float
  assert calls == [(A5, B5, {"confidence_level": 0.95, "num_jobs": 1,
                             "show_progress": False, "seed": 3})]
  assert np.random.random_sample() == expected_next
  assert stats.paired_difference(A5, B5, aso=False)["aso_eps_min"] is None
  assert len(calls) == 1
  # The same values in another order: the distributions are equal, ASO is not run.
  assert stats.paired_difference(A5, A5[::-1])["aso_eps_min"] is None and len(calls) == 1


@pytest.mark.parametrize("version,found", [("1.2.3", False), ("1.2.8", True), ("2.0", True)])
def test_aso_needs_deepsig_1_2_4(monkeypatch, version, found):
  """Before 1.2.4 deepsig's confidence_level meant an error rate: treated as absent."""
  module = types.ModuleType("deepsig")
  module.aso = lambda *a, **k: 0.0
  monkeypatch.setitem(sys.modules, "deepsig", module)
  real_version = importlib.metadata.version
  monkeypatch.setattr(importlib.metadata, "version",
                      lambda name: version if name == "deepsig" else real_version(name))
  assert (stats._deepsig_aso() is module.aso) is found
  assert stats.aso_available() is found


def test_aso_with_the_real_deepsig():
  pytest.importorskip("deepsig")
  if not stats.aso_available():
    pytest.skip("deepsig older than 1.2.4")
  b = [0.69, 0.70, 0.685, 0.71, 0.70]
  a = [v + 0.03 for v in b]
  better = stats.paired_difference(a, b, aso=True)["aso_eps_min"]
  worse = stats.paired_difference(b, a, aso=True)["aso_eps_min"]
  assert 0.0 <= better < 0.5 < worse <= 1.0
  assert stats.paired_difference(a, b, aso=True)["aso_eps_min"] == better   # seeded


# --- summarize_members ----------------------------------------------------------------------


def test_summarize_members_describes_numbers_every_member_has():
  per_member = [
      {"seed": 0, "test_f1": 0.70, "dev_f1": np.float32(0.75), "steps": 100, "flag": True,
       "name": "a", "nested": {"x": 1.0}, "curve": [1.0], "only_first": 1.0},
      {"seed": 1, "test_f1": 0.72, "dev_f1": np.float32(0.77), "steps": 100, "flag": False,
       "name": "b", "nested": {"x": 2.0}, "curve": [2.0]},
      {"seed": 2, "test_f1": 0.74, "dev_f1": np.float32(0.76), "steps": 100, "flag": True,
       "name": "c", "nested": {"x": 3.0}, "curve": [3.0], "only_first": "n/a"},
  ]
  s = stats.summarize_members(per_member)
  assert list(s) == ["test_f1", "dev_f1", "steps"]   # first member's order
  assert s["test_f1"] == stats.describe([0.70, 0.72, 0.74])
  assert s["dev_f1"]["mean"] == pytest.approx(0.76, abs=1e-6)
  assert s["steps"]["sd"] == 0.0
  assert json_round_trip(s) == s
  assert "seed" in stats.summarize_members(per_member, exclude=())


def test_summarize_members_one_member_and_none():
  s = stats.summarize_members([{"test_f1": 0.7}])
  assert s["test_f1"]["sd"] is None and json_round_trip(s) == s
  with pytest.raises(ValueError, match="at least one member"):
    stats.summarize_members([])


# --- markdown_table -------------------------------------------------------------------------


def test_markdown_table_exact_with_variants_and_a_paired_difference():
  bi, fwd = [0.70, 0.72, 0.74], [0.68, 0.69, 0.70]
  table = stats.markdown_table(
      {"bi": {"test_f1": stats.describe(bi)}, "fwd": {"test_f1": stats.describe(fwd),
                                                      "steps": stats.describe([10])}},
      {"bi − fwd": {"test_f1": stats.paired_difference(bi, fwd, aso=False)}})
  # bi: 0.72 ± 0.02, h = 4.3027 * 0.02 / sqrt 3; fwd: 0.69 ± 0.01; differences 0.02, 0.03,
  # 0.04: t = 0.03 / (0.01 / sqrt 3) = sqrt 27 with 2 df, p = 1 - t / sqrt(t^2 + 2) = 0.0351;
  # Wilcoxon exact, all 3 positive: 2 / 2**3 = 0.25.
  assert table == "\n".join([
      "| variant | metric | mean ± sd | 95% CI | n | per seed |",
      "|---|---|---|---|---|---|",
      "| bi | test_f1 | 0.7200 ± 0.0200 | [0.6703, 0.7697] | 3 | 0.7000, 0.7200, 0.7400 |",
      "| fwd | test_f1 | 0.6900 ± 0.0100 | [0.6652, 0.7148] | 3 | 0.6800, 0.6900, 0.7000 |",
      "| fwd | steps | 10.0000 | – | 1 | 10.0000 |",
      "",
      "| paired difference | metric | mean ± sd | 95% CI | n | p (paired t) | p (Wilcoxon) |",
      "|---|---|---|---|---|---|---|",
      "| bi − fwd | test_f1 | 0.0300 ± 0.0100 | [0.0052, 0.0548] | 3 | 0.0351 | 0.25 |",
  ])
  assert 1 - math.sqrt(27) / math.sqrt(29) == pytest.approx(0.0351, abs=5e-5)


def test_markdown_table_one_model_drops_the_variant_column_and_shows_aso_when_present():
  d = stats.paired_difference([0.1, 0.1], [0.1, 0.1], aso=False)   # all zero: no tests
  with_aso = dict(stats.paired_difference([0.5, 0.7], [0.4, 0.5], aso=False),
                  aso_eps_min=0.0421)
  table = stats.markdown_table(
      {"": {"dev_loss": stats.describe([1.0, float("nan")])}},
      {"a|b": {"dev_loss": d, "dev_f1": with_aso}}, digits=2)
  assert table.splitlines() == [
      "| metric | mean ± sd | 95% CI | n | per seed |",
      "|---|---|---|---|---|",
      "| dev_loss | – | – | 2 | 1.00, nan |",
      "",
      "| paired difference | metric | mean ± sd | 95% CI | n | p (paired t) | p (Wilcoxon) "
      "| ASO ε_min |",
      "|---|---|---|---|---|---|---|---|",
      "| a\\|b | dev_loss | 0.00 ± 0.00 | [0.00, 0.00] | 2 | – | – | – |",
      f"| a\\|b | dev_f1 | 0.15 ± 0.07 | [{with_aso['ci95'][0]:.2f}, {with_aso['ci95'][1]:.2f}] "
      f"| 2 | {with_aso['p_ttest']:.3g} | 0.5 | 0.042 |",
  ]
  assert stats.markdown_table({}) == ""


def test_markdown_table_never_prints_negative_zero():
  d = stats.describe([-0.00001, 0.00001])
  assert "-0.0000" not in stats.markdown_table({"": {"m": d}})


# --- the module -----------------------------------------------------------------------------


def test_docstring_examples_run():
  result = doctest.testmod(stats, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted >= 5 and result.failed == 0
