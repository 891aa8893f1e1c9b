"""The wrapped-vs-bare benchmark runs and reports its ratios (values are not asserted: timing
belongs to benchmarks, not unit tests)."""

from satpipe.bench import BENCHMARKS, run_benchmark


def test_bench_wrapped_model_reports_ratios():
    report = run_benchmark(
        "models", model="torchvision:mobilenet_v3_small", methods=("gradient",), size=16,
        batch_size=2, n_batches=1, rounds=1, floor_seconds=0.0, device="cpu", threads=1,
    )  # fmt: skip
    assert set(report["methods"]) == {"gradient"}
    for row in report["methods"].values():
        assert row["ratio"] > 0 and row["wrapped_img_s"] > 0 and row["bare_img_s"] > 0
        q1, q3 = row["ratio_quartiles"]
        assert q1 <= row["ratio"] <= q3
        assert row["timing"]["rounds"] == 2  # one ABBA pair: wrapped, bare | bare, wrapped
    assert report["worst_ratio"] == min(r["ratio"] for r in report["methods"].values())
    rows = BENCHMARKS.get("models").headline(report)
    assert [r["value"] for r in rows] == [report["methods"]["gradient"]["ratio"]]
