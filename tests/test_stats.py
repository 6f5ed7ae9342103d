"""Welch's interval, verdict, MDD and convergence on examples worked out by hand."""

import math

import pytest

from attnbench.core.stats import Comparison, convergence, t_quantile, verdict, welch, welch_df


def test_t_quantiles_match_the_printed_table():
    # Student's t table, df = 4: t(0.975) = 2.776, t(0.80) = 0.941; df = 2: t(0.975) = 4.303
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.80, 4) == pytest.approx(0.9410, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)


def test_welch_interval_worked_by_hand():
    # module a = [90, 91, 92]: mean 91, s² = (1 + 0 + 1) / 2 = 1
    # base   b = [88, 89, 90]: mean 89, s² = 1
    # Δ = 2; se = sqrt(1/3 + 1/3) = sqrt(2/3) = 0.816497
    # df = (2/3)² / ((1/3)²/2 + (1/3)²/2) = (4/9) / (1/9) = 4
    # half-width = t(0.975, 4) · se = 2.776445 · 0.816497 = 2.266958 -> [-0.266958, 4.266958]
    # MDD = (2.776445 + 0.940965) · 0.816497 = 3.717410 · 0.816497 = 3.035252
    c = welch([90, 91, 92], [88, 89, 90])
    assert c.diff == pytest.approx(2.0)
    assert c.se == pytest.approx(math.sqrt(2 / 3))
    assert c.df == pytest.approx(4.0)
    assert (c.low, c.high) == (pytest.approx(-0.266958, abs=1e-5), pytest.approx(4.266958, abs=1e-5))
    assert c.mdd == pytest.approx(3.035252, abs=1e-5)
    assert c.verdict == "no detectable difference"  # the interval holds 0: Δ = 2 < MDD 3.04


def test_welch_unequal_spreads_and_a_clear_difference():
    # a = [80, 82, 84]: mean 82, s² = 4;  b = [90, 91, 92]: mean 91, s² = 1
    # se² = 4/3 + 1/3 = 5/3; df = (5/3)² / ((4/3)²/2 + (1/3)²/2) = (25/9) / (17/18) = 50/17 = 2.941176
    c = welch([80, 82, 84], [90, 91, 92])
    assert c.diff == pytest.approx(-9.0)
    assert c.df == pytest.approx(50 / 17)
    assert welch_df(4, 3, 1, 3) == pytest.approx(50 / 17)
    half = t_quantile(0.975, 50 / 17) * math.sqrt(5 / 3)  # t(0.975, 2.94) ≈ 3.21 -> half ≈ 4.15
    assert 4.0 < half < 4.3 and c.high == pytest.approx(-9.0 + half)
    assert c.verdict == "worse"
    assert welch([90, 91, 92], [80, 82, 84]).verdict == "better"


def test_one_seed_gives_no_interval():
    c = welch([90.0], [88.0, 89.0])
    assert c.diff == pytest.approx(1.5) and c.low is None and c.mdd is None and c.verdict == "n/a (< 2 seeds)"
    assert verdict(None, None) == "n/a (< 2 seeds)"
    assert isinstance(c, Comparison)


def test_convergence_rule():
    assert convergence([80.0, 83.9]) == (False, pytest.approx(3.9))  # +3.9 pp in the last epoch > 0.5
    assert convergence([92.0, 93.1, 93.4]) == (True, pytest.approx(0.3))
    assert convergence([85.0]) == (None, None)
