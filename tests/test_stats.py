"""Intervals and paired tests against closed forms and constructed cases with known answers."""

import math

import numpy as np
import pytest

from satpipe.core.stats import (
    accuracy_interval,
    holm,
    mcnemar,
    mean_interval,
    paired_difference,
    spearman,
    verdict,
    wilson,
)


def test_wilson_matches_the_closed_form_and_known_values():
    # Known values (Agresti & Coull 1998, z = 1.96): 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634]
    assert wilson(0, 10).low == 0 and wilson(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    five = wilson(5, 10)
    assert (five.low, five.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # The closed form, written out independently, at an arbitrary point.
    k, n, z = 37, 120, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    got = wilson(k, n)
    assert (got.low, got.high) == pytest.approx((centre - half, centre + half), rel=1e-12)
    assert got.value == p
    # At n = 1000 the half-width at 50% is under 3.1 points (the "+-3 points" test split).
    wide = accuracy_interval(np.arange(1000) % 2 == 0)
    assert wide.high - wide.value < 3.1 and wide.value == 50.0
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_paired_difference_calls_a_large_gap_held_and_equal_models_not_significant():
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.random((3, n))
    good, bad = truth < 0.8, truth < 0.5  # same images, same seeds: b right => a right
    gap = paired_difference(good, bad)
    assert gap.value == pytest.approx(100 * (good.mean() - bad.mean()))
    assert verdict(gap) == "holds" and gap.low > 20
    assert verdict(paired_difference(bad, good)) == "reversed"
    same = rng.random((3, n)) < 0.6
    twin = same.copy()
    twin[:, :6] = ~twin[:, :6]  # one point of difference from flipping 6 of 600: noise
    assert verdict(paired_difference(same, twin)) == "not significant"
    # Unpaired models of equal accuracy are not significant either.
    other = rng.random((3, n)) < 0.6
    assert verdict(paired_difference(same, other)) == "not significant"
    # Deterministic: the same inputs and seed give the same interval.
    assert paired_difference(good, bad, seed=3) == paired_difference(good, bad, seed=3)


def test_mcnemar_exact_and_holm():
    a = np.array([1] * 10 + [0] * 5, bool)
    b = np.array([0] * 10 + [0] * 5, bool)
    assert mcnemar(a, b) == pytest.approx(2 * 0.5**10)  # 10 discordant, all one way
    assert mcnemar(a, a) == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_spearman_and_mean_interval():
    rho = spearman([1, 2, 3, 4, 5, 6], [2, 4, 5, 9, 10, 30])
    assert rho.value == pytest.approx(1.0) and rho.low <= 1.0
    anti = spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert anti.value == pytest.approx(-1.0)
    m = mean_interval(np.arange(101))
    assert m.value == 50 and m.low < 50 < m.high
    assert mean_interval([2.0]).low == 2.0


def test_spearman_agrees_with_scipy_on_ties():
    from scipy.stats import spearmanr

    x, y = [1, 2, 2, 3, 5, 5, 7], [3, 1, 4, 4, 9, 2, 6]
    assert spearman(x, y).value == pytest.approx(spearmanr(x, y).statistic)


def test_paired_test_p_value_matches_mcnemar_and_its_interval():
    from scipy.stats import norm

    from satpipe.core.stats import paired_test, significance

    rng = np.random.default_rng(4)
    n = 2000
    base = rng.random(n) < 0.6
    tests = {}
    for up, down in ((60, 30), (50, 30), (45, 35), (0, 0)):
        other = base.copy()
        other[rng.choice(np.flatnonzero(~base), up, replace=False)] = True
        other[rng.choice(np.flatnonzero(base), down, replace=False)] = False
        test = tests[up, down] = paired_test(other, base, seed=up)
        if up:
            # Closed forms: McNemar's exact binomial test on the discordant pairs, and its
            # normal limit z = (b - c) / sqrt(b + c). Counting resamples with d = 0 on both
            # sides makes the bootstrap p as conservative as the exact test, a little above
            # the normal one.
            assert test.p == pytest.approx(mcnemar(other, base), abs=0.03), (up, down, test)
            z = (up - down) / np.sqrt(up + down)
            assert 2 * norm.sf(z) - 0.01 <= test.p <= 2 * norm.sf(z) + 0.07
            assert test.difference.value == pytest.approx(100 * (up - down) / n)
        else:
            assert test.p == 1.0 and test.difference.value == 0.0
        # p < 0.05 exactly when the 95% interval excludes 0.
        excludes = test.difference.low > 0 or test.difference.high < 0
        assert (test.p < 0.05) == excludes, (up, down, test)
        assert significance(test) == verdict(test.difference)
    assert significance(tests[60, 30]) == "holds"  # p ~ 0.002
    assert significance(tests[45, 35]) == "not significant"  # p ~ 0.26
    # Holm over a family of 5 eps turns the lone p ~ 0.025 into "not significant".
    p_holm = holm([tests[50, 30].p, 0.5, 0.6, 0.7, 0.8])[0]
    assert tests[50, 30].p < 0.05 < p_holm
    assert significance(tests[50, 30], p_adjusted=p_holm) == "not significant"
    # The interval of paired_test is paired_difference's (same resamples).
    assert paired_test(base, ~base, seed=1).difference == paired_difference(base, ~base, seed=1)
