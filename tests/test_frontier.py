"""The cost-robustness frontier from a tiny grid of run records: pooled Wilson intervals, time
spreads, the Pareto front, frontier.md and frontier.png."""

import math

import pytest

from satpipe.core.stats import wilson
from satpipe.reproduce.frontier import (
    pareto_front,
    robust_accuracy,
    run_record,
    summarize,
    write_frontier,
)


def results(pgd8: float, n: int = 200, time_s: float = 10.0, epochs: int = 4, fired=False):
    """A results.json as `satpipe eval` writes it (only what the frontier reads)."""
    return {
        "checkpoint": "RUN/checkpoint.pt",
        "n": n,
        "clean": 90.0,
        "attack": {"steps": 5},
        "pgd": {"0": 90.0, "2": 60.0, "8": pgd8},
        "train_time_s": time_s,
        "epochs": epochs,
        "guard": {"fired": True} if fired else None,
    }


GRID = {  # variant: [(PGD accuracy at 8/255 %, training seconds) per seed]
    "original": [(1.0, 10.0), (2.0, 12.0)],
    "pgd": [(40.0, 80.0), (42.0, 84.0)],
    "fgsm-rs": [(38.0, 20.0), (39.0, 22.0)],
    "igr": [(20.0, 30.0), (22.0, 34.0)],  # slower and less robust than fgsm-rs: dominated
}


def grid_records():
    return [
        run_record(results(acc, time_s=t, fired=(v == "fgsm-rs" and seed == 1)), variant=v,
                   seed=seed, eps=8, options={"lr_schedule": "cyclic"} if v == "fgsm-rs" else {})
        for v, runs in GRID.items()
        for seed, (acc, t) in enumerate(runs)
    ]  # fmt: skip


def test_robust_accuracy_reads_the_strongest_attack_at_the_eps():
    r = robust_accuracy(results(33.5), 8)
    assert (r.attack, r.accuracy, r.n) == ("PGD-5", 33.5, 200)
    with pytest.raises(KeyError, match="eps 4/255"):
        robust_accuracy(results(33.5), 4)


def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [(10, 1), (80, 40), (20, 38), (30, 20), (20, 38), (math.nan, 99)]
    assert pareto_front(pts) == [True, True, True, False, True, False]  # ties both stay


def test_points_pool_seeds_into_wilson_intervals_and_spread_time():
    points = {p["variant"]: p for p in summarize(grid_records())}
    assert list(points) == ["original", "pgd", "fgsm-rs", "igr"]  # registry order
    pgd = points["pgd"]
    expected = wilson(80 + 84, 400).scaled(100)  # 40% and 42% of 200 images, pooled
    assert pgd["robust"]["value"] == pytest.approx(expected.value)
    assert (pgd["robust"]["low"], pgd["robust"]["high"]) == pytest.approx(
        (expected.low, expected.high)
    )
    assert pgd["robust_seeds"] == {"mean": 41.0, "min": 40.0, "max": 42.0}
    assert pgd["time_s"] == {"mean": 82.0, "min": 80.0, "max": 84.0}
    assert pgd["epoch_s"]["mean"] == pytest.approx(82.0 / 4)
    assert {v for v, p in points.items() if p["pareto"]} == {"original", "pgd", "fgsm-rs"}
    assert points["fgsm-rs"]["guard_fired"] == 1 and points["fgsm-rs"]["kind"] == "fast-at"


def test_frontier_files_from_a_tiny_grid(tmp_path):
    points = write_frontier(
        tmp_path, grid_records(), "tiny: robustness vs time", "One run at a time."
    )
    assert len(points) == 4 and (tmp_path / "frontier.png").stat().st_size > 10_000
    md = (tmp_path / "frontier.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"**PGD**", "**FGSM-RS**", "**Original**", "IGR"}  # bold: on the front
    assert "[" in rows["**PGD**"] and "80.0–84.0" in rows["**PGD**"]
    assert (
        "lr-schedule=cyclic" in rows["**FGSM-RS**"]
        and "guard fired in 1 of 2" in rows["**FGSM-RS**"]
    )
    assert "eps = 8/255 under PGD-5" in md and "One run at a time." in md
