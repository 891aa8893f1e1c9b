"""The in-flight check's benchmark runs and reports its ratios (figures are not asserted:
performance is measured by the benchmark, not by unit tests)."""

from __future__ import annotations

import json

from satpipe.bench_integrity import TARGET, bench_integrity


def test_bench_integrity_reports_the_cost_of_the_check_as_ratios(tmp_path):
    out = tmp_path / "bench-integrity.json"
    report = bench_integrity(n_train=64, size=8, rows_per_shard=16, model="smallcnn",
                             batch_size=32, rounds=1, device="cpu", out=str(out))  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["sizes"]["rows"] == 64 and report["sizes"]["rows_per_shard"] == 16
    for key in ("hash_ratio", "first_epoch_ratio", "resident_load_ratio"):
        assert report[key] > 0, key
    assert report["hash_ratio"] == report["hash_seconds"] / report["epoch_seconds"]
    assert report["target"] == TARGET and report["meets_target"] == (report["hash_ratio"] <= TARGET)
