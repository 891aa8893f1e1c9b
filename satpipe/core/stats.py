"""Numbers with their uncertainty: intervals for accuracies and scores, paired tests for claims.

Every accuracy satpipe reports is a proportion over test images, so it gets a Wilson score
interval (good at small n and near 0 or 1, where the normal approximation is not). A
comparison of two models is paired: both were evaluated on the same test images (and, where
there are seeds, seed k of one against seed k of the other), so the test resamples images,
and seed pairs, jointly — much tighter than comparing two intervals. A difference is called a
result only when its interval excludes 0 (`verdict`).

Everything here is plain numpy (and scipy for two exact distributions); inputs are arrays of
per-image correctness (bool or {0, 1}), shapes given per function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
BOOTSTRAP = 2000  # resamples per bootstrap: the 2.5% / 97.5% quantiles move by < 0.2 points
_CHUNK = 100  # bootstrap resamples drawn at once


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval, in the estimate's units."""

    value: float
    low: float
    high: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.value * factor, self.low * factor, self.high * factor)

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of a proportion: `successes` of `n` (fractions in [0, 1])."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes {successes} not in [0, {n}]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(correct: np.ndarray) -> Interval:
    """Accuracy of per-image correctness `correct` (N,) with its Wilson interval, in %.

    With seeds, (S, N): the mean over seeds, with the Wilson interval of the pooled count
    (S x N trials); the spread over seeds is reported beside it, not folded in."""
    c = np.asarray(correct, dtype=bool)
    return wilson(int(c.sum()), int(c.size)).scaled(100.0)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x57A7]))


def _as_runs(correct: np.ndarray) -> np.ndarray:
    c = np.asarray(correct, dtype=np.float64)
    return c[None] if c.ndim == 1 else c


def paired_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0
) -> Interval:
    """Accuracy of `a` minus accuracy of `b` in points (%), with a paired bootstrap interval.

    a, b: per-image correctness (N,) or (S, N), same N (the same test images, same order);
    with S seeds each, run k of `a` is paired with run k of `b` (as S differ, the shorter is
    matched cyclically). Each resample draws test images (same indices for both, which is the
    pairing) and seed pairs with replacement; the interval is the 2.5-97.5% quantile range.
    """
    return paired_test(a, b, n_boot, seed).difference


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: the difference (points) with its 95% interval, and the two-sided
    bootstrap p-value of "no difference" (the smallest level whose interval reaches 0)."""

    difference: Interval
    p: float


def paired_test(a: np.ndarray, b: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> PairedTest:
    """`paired_difference` and its p-value from the same resamples: p = 2 min(P*(d <= 0),
    P*(d >= 0)) with the usual +1 correction, so p < 0.05 exactly when the 95% percentile
    interval excludes 0 (up to quantile interpolation). Identical inputs give p = 1."""
    mean, boots = _paired_boots(a, b, n_boot, seed)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    below = (1 + int((boots <= 0).sum())) / (n_boot + 1)
    above = (1 + int((boots >= 0).sum())) / (n_boot + 1)
    return PairedTest(
        Interval(100 * mean, 100 * float(lo), 100 * float(hi)), min(1.0, 2 * min(below, above))
    )


def _paired_boots(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int):
    """(mean paired difference, (n_boot,) bootstrap means), as fractions."""
    ra, rb = _as_runs(a), _as_runs(b)
    if ra.shape[1] != rb.shape[1]:
        raise ValueError(f"paired_difference: {ra.shape[1]} vs {rb.shape[1]} test images")
    s = max(len(ra), len(rb))
    diff = ra[np.arange(s) % len(ra)] - rb[np.arange(s) % len(rb)]  # (S, N) per-pair
    rng = _rng(seed)
    n = diff.shape[1]
    boots = np.empty(n_boot)
    # Per resample: the mean over resampled seed pairs of the mean over resampled images (the
    # same images for every pair). In chunks: (S, chunk, N) floats stay small at N = 10,000.
    for start in range(0, n_boot, _CHUNK):
        k = min(_CHUNK, n_boot - start)
        images = rng.integers(0, n, (k, n))
        pairs = rng.integers(0, s, (k, s))
        per_pair = diff[:, images].mean(axis=2).T  # (k, S)
        boots[start : start + k] = np.take_along_axis(per_pair, pairs, axis=1).mean(axis=1)
    return float(diff.mean()), boots


def significance(test: PairedTest, p_adjusted: float | None = None, level: float = 0.05) -> str:
    """'holds' / 'reversed' / 'not significant' for a paired test whose p-value was adjusted
    for multiplicity (`p_adjusted`, e.g. Holm over a claim's eps): significant only when the
    adjusted p is below `level` AND the 95% interval excludes 0 (the two agree by
    construction; requiring both keeps a rounding of one from deciding)."""
    p = test.p if p_adjusted is None else p_adjusted
    return verdict(test.difference) if p < level else "not significant"


def verdict(difference: Interval) -> str:
    """'holds' when the interval of (claimed better - worse) lies above 0, 'reversed' when
    below, else 'not significant': nothing is called held on a gap inside its own noise."""
    if difference.low > 0:
        return "holds"
    if difference.high < 0:
        return "reversed"
    return "not significant"


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired correctness a, b (N,): a binomial test of
    the discordant pairs (a right, b wrong) against (a wrong, b right) at 1/2."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order), for a family of tests (claims x eps)."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def spearman(
    x: Sequence[float], y: Sequence[float], n_boot: int = BOOTSTRAP, seed: int = 0
) -> Interval:
    """Spearman rank correlation of paired values x, y (K,) with a bootstrap 95% interval
    over the K pairs (resamples in which x or y is constant are dropped; none left: NaN)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError("spearman: needs at least 3 pairs of equal length")
    rho = _rank_correlation(rankdata(x)[None], rankdata(y)[None])[0]
    idx = _rng(seed).integers(0, len(x), (n_boot, len(x)))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)  # ties: average ranks
    boots = _rank_correlation(rx, ry)
    boots = boots[np.isfinite(boots)]
    if not boots.size:
        return Interval(float(rho), math.nan, math.nan)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Interval(float(rho), float(lo), float(hi))


def _rank_correlation(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of rank rows (Spearman's rho); NaN where a row is flat."""
    dx, dy = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(1) / np.where(den > 0, den, 1), np.nan)


def mean_interval(values: Sequence[float], n_boot: int = BOOTSTRAP, seed: int = 0) -> Interval:
    """Mean of `values` (K,) with a bootstrap 95% interval (e.g. a score averaged over
    images); a single value gives a zero-width interval."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("mean_interval: no values")
    if v.size == 1:
        return Interval(float(v[0]), float(v[0]), float(v[0]))
    rng = _rng(seed)
    # In chunks of resamples (the same draws as all at once): (chunk, K) indices stay small
    # when K is every image of a store (50,000 scores).
    boots = np.concatenate([
        v[rng.integers(0, v.size, (min(_CHUNK, n_boot - a), v.size))].mean(axis=1)
        for a in range(0, n_boot, _CHUNK)
    ])  # fmt: skip
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Interval(float(v.mean()), float(lo), float(hi))
