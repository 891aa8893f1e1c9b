"""The quality-vs-robustness claim from run records and quality records (no training)."""

from __future__ import annotations

import math

import pytest

from satpipe.core.stats import wilson
from satpipe.reproduce import quality_report as qr


def _record(
    row: str,
    variant: str,
    acc: dict[str, float],
    seed: int = 0,
    n: int = 1000,
    group: str = "methods",
) -> dict:
    return {"row": row, "variant": variant, "group": group, "seed": seed, "pgd": acc, "n": n}


def _quality(value: float) -> dict:
    score = {
        "value": value,
        "low": value - 0.02,
        "high": value + 0.02,
        "chance": 0.2,
        "higher_is_better": True,
        "n": 100,
    }
    return {"scores": {"sign-agreement": score}, "notes": ["a note"], "flags": []}


def test_gain_interval_is_newcombe_from_two_wilson_intervals():
    sat = [_record("s", "sat", {"2": 60.0})]
    base = [_record("b", "original-noise", {"2": 50.0})]
    gain = qr.gain_interval(sat, base, "2")
    a, b = wilson(600, 1000), wilson(500, 1000)
    assert gain.value == pytest.approx(10.0)
    assert gain.low == pytest.approx(100 * (0.1 - math.hypot(a.value - a.low, b.high - b.value)))
    assert gain.high == pytest.approx(100 * (0.1 + math.hypot(a.high - a.value, b.value - b.low)))
    # Two seeds pool into one proportion over 2000 trials: a narrower interval.
    two = qr.gain_interval(
        sat + [_record("s", "sat", {"2": 60.0}, seed=1)],
        base + [_record("b", "original-noise", {"2": 50.0}, seed=1)],
        "2",
    )
    assert two.high - two.low < gain.high - gain.low
    assert qr.gain_interval(sat, base, "8") is None  # eps not measured


def test_the_claim_is_a_rank_correlation_over_stores():
    base = _record("noise", "original-noise", {"2": 40.0, "8": 10.0})
    points, records = [], [base]
    for i, q in enumerate((0.2, 0.4, 0.6, 0.8, 0.9)):
        row = f"SAT {i}"
        points.append({"label": f"store {i}", "row": row, "quality": _quality(q)})
        # The gain grows with quality at eps 2; at eps 8 it does not move with it.
        records.append(_record(row, "sat", {"2": 40.0 + 5 * i, "8": 10.0 + (i % 2)}))
    points.append({"label": "unscored", "row": "SAT 0", "quality": None})
    cpoints = qr.claim_points(points, records, "sign-agreement")
    assert [p["label"] for p in cpoints] == [f"store {i}" for i in range(5)]
    assert cpoints[4]["gains"]["2"].value == pytest.approx(20.0)
    (claim,) = qr.quality_claims(cpoints, "sign-agreement")
    assert claim["detail"]["2"]["rho"]["value"] == pytest.approx(1.0)
    assert claim["detail"]["2"]["verdict"] == "holds"
    assert claim["detail"]["8"]["verdict"] == "not significant" and not claim["held"]
    md = qr.quality_claims_markdown([claim])
    assert "did NOT hold" in md and "| 2 | 5 | 1.00" in md
    table = qr.saliency_quality_markdown(points, cpoints, "sign-agreement")
    assert "| store 4 | SAT 4 | 0.900 [0.880, 0.920] | +20.0 [" in table
    assert "- store 0: a note" in table
    assert qr.quality_claims(cpoints[:2], "sign-agreement") == []
    # Four stores: rho reads 1.00 at eps 2, but no rank correlation over 4 can be significant.
    (few,) = qr.quality_claims(cpoints[:4], "sign-agreement")
    assert few["detail"]["2"]["rho"]["value"] == pytest.approx(1.0)
    assert {d["verdict"] for d in few["detail"].values()} == {qr.NO_VERDICT}
    assert not few["held"]
    assert f"## {few['claim']}: {qr.NO_VERDICT}" in qr.quality_claims_markdown([few])
    assert "not measured" in qr.quality_claims_markdown([])


def test_the_plot_is_written(tmp_path):
    base = _record("noise", "original-noise", {"2": 40.0})
    points = [{"label": "a", "row": "SAT a", "quality": _quality(0.5)}]
    records = [base, _record("SAT a", "sat", {"2": 45.0})]
    cpoints = qr.claim_points(points, records, "sign-agreement")
    out = qr.quality_robustness_plot(cpoints, tmp_path / "q.png", "sign-agreement")
    assert out.stat().st_size > 1000
    assert qr.quality_robustness_plot([], tmp_path / "e.png", "sign-agreement").exists()
