"""The in-flight check's benchmark runs and reports its ratios (figures are not asserted:
performance is measured by the benchmark, not by unit tests)."""

from __future__ import annotations

import json

from satpipe.bench import BENCHMARKS, run_benchmark
from satpipe.bench.integrity import TARGET


def test_bench_integrity_reports_the_cost_of_the_check_as_ratios(tmp_path):
    out = tmp_path / "bench-integrity.json"
    report = run_benchmark("integrity", out, n_train=64, size=8, rows_per_shard=16,
                           model="smallcnn", batch_size=32, rounds=1, device="cpu",
                           checkpoint_mb=2)  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["sizes"]["rows"] == 64 and report["sizes"]["rows_per_shard"] == 16
    for key in ("hash_ratio", "first_epoch_ratio", "resident_load_ratio"):
        assert report[key] > 0, key
    assert report["hash_ratio"] == report["hash_seconds"] / report["epoch_seconds"]
    assert report["target"] == TARGET and report["meets_target"] == (report["hash_ratio"] <= TARGET)
    rows = BENCHMARKS.get("integrity").headline(report)
    assert rows[0]["value"] == round(report["hash_ratio"], 3)
    assert rows[0]["passed"] == report["meets_target"]


def test_bench_integrity_times_the_checkpoint_digest_and_metadata_checks(tmp_path):
    out = tmp_path / "bench-integrity.json"
    report = run_benchmark("integrity", out, rounds=1, device="cpu", checkpoint_mb=4,
                           epochs=False)  # fmt: skip
    ckpt, meta = report["checkpoint"], report["metadata"]
    assert 4e6 <= ckpt["bytes"] < 5e6 and ckpt["load_checked_s"] > 0 and ckpt["digest_s"] > 0
    assert meta["claimed_rows"] == 10**9 and 0 < meta["refuse_claim_s"] < 1
    assert "first_epoch_ratio" not in report
    rows = BENCHMARKS.get("integrity").headline(report)
    assert [r["value"] for r in rows][1] == round(1e3 * meta["refuse_claim_s"], 3)
