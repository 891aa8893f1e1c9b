"""`satpipe bench all`: the headline figures and their targets are read from the parts' reports."""

import json

import pytest
from typer.testing import CliRunner

from satpipe.benchmarks import headline, summary_markdown
from satpipe.cli import app


def _report(sat_ratio: float, dask_ratio: float) -> dict:
    return {
        "device": "cpu (test)",
        "date": "2026-01-01 00:00 UTC",
        "saliency": {
            "methods": {"smoothgrad": {"efficiency": 1.1}, "gbp": {"efficiency": 0.5}},
            "peak_rss": {"growth": 1.01},
        },
        "dask": {"ratio": dask_ratio, "passed": dask_ratio >= 1.8},
        "loader": {
            "train_step": {"streaming_over_resident": 0.97},
            "streaming_rss": {"large_over_small": 1.3},
        },
        "train": {
            "checks": {
                "sat_vs_original": {"ratio": sat_ratio, "passed": sat_ratio <= 1.05},
                "pgd-sat_vs_pgd": {"ratio": 0.6, "predicted": 0.56, "relative_error": 0.07},
                "trades-sat_vs_trades": {"ratio": 0.9, "predicted": 0.6, "relative_error": 0.5},
                "precomputed_vs_smoothgrad_on_the_fly": {"speedup": 20.0, "passed": True},
            }
        },
    }


def test_headline_marks_each_target_from_the_measured_figures():
    rows = {r["figure"]: r for r in headline(_report(sat_ratio=1.2, dask_ratio=1.9))}
    assert rows["saliency efficiency, smoothgrad"]["passed"] is True
    assert rows["saliency efficiency, gbp"]["passed"] is False
    assert rows["epoch time, SAT / Original"]["passed"] is False
    assert rows["epoch time, SAT / Original"]["value"] == 1.2
    assert rows["saliency img/s, dask 2 workers / 1 worker (CPU)"]["passed"] is True
    assert rows["streaming peak RSS, large / small dataset"]["passed"] is False
    assert rows["epoch time, pgd-sat / pgd"]["passed"] is True
    assert rows["epoch time, trades-sat / trades"]["passed"] is False
    assert len(rows) == 10

    text = summary_markdown(_report(sat_ratio=1.0, dask_ratio=1.2))
    sat_line = next(line for line in text.splitlines() if "SAT / Original" in line)
    dask_line = next(line for line in text.splitlines() if "dask" in line)
    assert "| yes |" in sat_line and "| **no** |" in dask_line
    assert "cpu (test)" in text.splitlines()[0]


def test_headline_skips_parts_that_were_not_run():
    report = _report(1.0, 2.0)
    del report["train"], report["dask"]
    figures = [r["figure"] for r in headline(report)]
    assert figures and not any("SAT" in f or "dask" in f for f in figures)


def test_bench_all_refuses_unknown_parts(tmp_path):
    result = CliRunner().invoke(app, ["bench", "all", "--parts", "saliency,gpu", "--out", "x"])
    assert result.exit_code != 0 and "unknown gpu" in result.output


@pytest.mark.slow
def test_bench_all_quick_runs_every_part(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "all", "--quick", "--device", "cpu", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"saliency", "dask", "loader", "train", "headline"} <= set(report)
    table = [line for line in (tmp_path / "bench.md").read_text().splitlines() if line[:1] == "|"]
    assert len(table) == 2 + len(report["headline"])  # header and separator, then one per figure


def test_part_sizes_shrink_only_the_cpu_train_part():
    from satpipe.benchmarks import CPU, QUICK, part_sizes

    assert part_sizes("train", "cpu", quick=False) == CPU["train"]
    assert part_sizes("saliency", "cpu", quick=False) == {}
    assert part_sizes("train", "cpu", quick=True) == QUICK["train"]
