"""`satpipe bench all`: the headline figures and their targets are read from the parts' reports."""

import json

import pytest
from typer.testing import CliRunner

from satpipe.bench import BENCHMARKS, headline, run_benchmark, summary_markdown
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
    assert result.exit_code != 0 and "unknown benchmark 'gpu'" in result.output


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
    from satpipe.bench import part_sizes

    train = BENCHMARKS.get("train")
    assert part_sizes("train", "cpu", quick=False) == train.cpu and train.cpu
    assert part_sizes("saliency", "cpu", quick=False) == {}
    assert part_sizes("train", "cpu", quick=True) == train.quick


class _Clock:
    """A fake perf_counter: sides advance it by the seconds they are scripted to take."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def side(self, name, durations):
        def fn(index):
            self.calls.append((name, index))
            self.now += durations[len([c for c in self.calls if c[0] == name]) - 1]
            return f"{name}{index}"

        return fn


def test_alternate_interleaves_sides_and_keeps_min_median_and_best(monkeypatch):
    from satpipe.bench import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "perf_counter", lambda: clock.now)
    prepared = []

    def prepare(index):
        prepared.append(index)
        clock.now += 100.0  # untimed set-up

    sides = {"a": clock.side("a", [9, 1, 4, 2]), "b": clock.side("b", [9, 5, 3, 7])}
    t = timing.alternate(sides, rounds=3, warmup=1, prepare={"b": prepare})
    # One warm-up call each, then rounds a, b, a, b, ...; call indices go on from the warm-up.
    assert clock.calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2),
                           ("a", 3), ("b", 3)]  # fmt: skip
    assert prepared == [0, 1, 2, 3]
    assert t.seconds == {"a": [1, 4, 2], "b": [5, 3, 7]}  # warm-up and set-up not timed
    assert (t.min("a"), t.median("a"), t.min("b"), t.median("b")) == (1, 2, 3, 5)
    assert t.best("a") == "a1" and t.best("b") == "b2" and t.rounds == 3
    assert t.summary()["median_s"] == {"a": 2, "b": 5}


def test_alternate_adds_rounds_until_the_time_floor(monkeypatch):
    from satpipe.bench import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "perf_counter", lambda: clock.now)
    t = timing.alternate({"fast": clock.side("fast", [0.5] * 100)}, rounds=2, floor_seconds=3)
    assert t.rounds == 6  # 6 x 0.5 s reaches the 3 s floor
    t = timing.alternate({"fast": clock.side("fast", [0.5] * 100)}, floor_seconds=99, max_rounds=4)
    assert t.rounds == 4


def test_alternate_mirrors_odd_rounds_and_reads_the_clock_it_is_given():
    from satpipe.bench import timing

    clock = _Clock()
    sides = {"a": clock.side("a", [1, 2, 3, 4]), "b": clock.side("b", [5, 6, 7, 8])}
    t = timing.alternate(sides, rounds=4, mirror=True, clock=lambda: clock.now)
    # ABBA pairs: a, b | b, a | a, b | b, a
    assert [c[0] for c in clock.calls] == list("abbaabba")
    assert t.seconds == {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}

    from satpipe.bench.models import abba_ratios

    assert abba_ratios(t, "a", "b") == [11 / 3, 15 / 7]


def test_torch_threads_sets_and_restores_the_thread_count():
    import torch

    from satpipe.bench.timing import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_bench_all_leaves_out_parts_not_in_all_unless_named(monkeypatch, tmp_path):
    from satpipe.bench import bench_all

    ran = []
    for name, part in BENCHMARKS.items():
        monkeypatch.setattr(part, "run", lambda name=name, **sizes: ran.append((name, sizes)) or {})
    bench_all(out=str(tmp_path / "b.json"), device="cpu", quick=True)
    default = [name for name, _ in ran]
    assert "eval" not in default and "models" in default
    assert len(default) == sum(e.in_all for _, e in BENCHMARKS.items())
    ran.clear()
    bench_all(out=str(tmp_path / "b.json"), parts=("eval",), device="cpu", quick=True)
    assert [name for name, _ in ran] == ["eval"]
    assert ran[0][1]["n"] == BENCHMARKS.get("eval").quick["n"]


def test_a_part_command_takes_its_quick_sizes_under_the_flags_given(monkeypatch):
    import satpipe.bench as bench

    seen = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda name, out, **s: seen.update(s) or {})
    monkeypatch.setattr(BENCHMARKS.get("eval"), "headline", lambda report: [])
    result = CliRunner().invoke(
        app, ["bench", "eval", "--quick", "--device", "cpu", "--n-images", "4", "--out", "x"]
    )
    assert result.exit_code == 0, result.output
    assert seen == {**BENCHMARKS.get("eval").quick, "device": "cpu", "n": 4}


def test_peak_rss_probe_reads_the_child_peak_and_its_result():
    from satpipe.bench.timing import peak_rss
    from satpipe.core.errors import SatpipeError

    code = "block = bytearray(args['mib'] * 2**20)\nresult['n'] = len(block) // 2**20"
    out = peak_rss(code, {"mib": 64}, "a 64 MiB block")
    assert out["n"] == 64 and out["peak_rss_mb"] >= 64
    with pytest.raises(SatpipeError, match="a failing run failed: ValueError: boom"):
        peak_rss("raise ValueError('boom')", {}, "a failing run")


def test_bench_functions_check_their_arguments():
    from satpipe.bench.loader import bench_loader
    from satpipe.bench.train import bench_train
    from satpipe.core.errors import SatpipeError

    with pytest.raises(SatpipeError, match="--rss-rows expects two integers"):
        bench_loader(rss_rows=(1,))
    with pytest.raises(SatpipeError, match="unknown variant 'pgd-sta'"):
        bench_train(variants=("sat", "pgd-sta"))


WIDE = {"COLUMNS": "240", "TERMINAL_WIDTH": "240"}  # --help on one line per option


def test_every_part_is_a_command_with_its_arguments_as_options():
    runner = CliRunner()
    for name, part in BENCHMARKS.items():
        assert all(callable(f) for f in (part.run, part.headline))
        result = runner.invoke(app, ["bench", name, "--help"], env=WIDE)
        assert result.exit_code == 0 and "--out" in result.output and "--quick" in result.output
        for arg, text in part.options.items():
            flag = text[0] if isinstance(text, tuple) else "--" + arg.replace("_", "-")
            assert flag in result.output, (name, flag)
    result = runner.invoke(app, ["bench", "all", "--help"], env=WIDE)
    assert result.exit_code == 0 and "--parts" in result.output
    listed = runner.invoke(app, ["bench", "--help"], env=WIDE).output
    assert all(name in listed for name in [*BENCHMARKS.names(), "all"])
    bad = runner.invoke(app, ["bench", "loader", "--rss-rows", "1,2,3", "--out", "x"])
    assert bad.exit_code == 1 and "--rss-rows expects two integers" in bad.output


def test_the_moved_parts_report_headline_rows_and_text():
    from satpipe.bench import eval as eval_part
    from satpipe.bench import integrity, models

    m = {"model": "torchvision:resnet18", "worst_ratio": 0.9, "target": ">= 0.95",
         "methods": {"gradient": {"ratio": 0.9, "ratio_quartiles": [0.85, 0.95],
                                  "wrapped_img_s": 90.0, "bare_img_s": 100.0,
                                  "efficiency_wrapped": 0.9}}}  # fmt: skip
    assert [r["passed"] for r in models.headline(m)] == [False]
    assert printed(models.headline(m)) == [
        ("img/s, wrapped / bare torchvision:resnet18, gradient", "0.900", ">= 0.95", "MISSED")
    ]
    attack = {"images_per_s": 10.0, "robust_accuracy": 0.5, "share_in_passes": 0.95,
              "image_forwards": {"with_grad": 40, "no_grad": 8}}  # fmt: skip
    e = {"pgd": attack, "autoattack": {**attack, "share_in_passes": 0.5},
         "autoattack_over_pgd_time": 30.0, "host_syncs_per_pgd_step": 0.0}  # fmt: skip
    rows = eval_part.headline(e)
    assert [r["passed"] for r in rows] == [True, None, None, True]
    assert len(eval_part.headline({**e, "host_syncs_per_pgd_step": None})) == 3
    assert printed(rows)[2] == ("eval time, AutoAttack / PGD-5", "30.000", "- (informative)", "-")
    assert printed(rows)[3][1:] == ("0.000", "0", "ok")
    i = {"hash_ratio": 0.01, "meets_target": True, "first_epoch_ratio": 1.01,
         "resident_load_ratio": 1.5, "hash_seconds": 0.05, "hash_gb_per_s": 1.0,
         "epoch_seconds": 5.0, "target": 0.02,
         "sizes": {"rows": 64, "image": [8, 8, 3], "model": "smallcnn", "variant": "original"},
         "first_epoch_seconds": {"checked": 5.05, "unchecked": 5.0},
         "resident_load_seconds": {"checked": 0.3, "unchecked": 0.2},
         "checkpoint": {"bytes": 1e8, "tensors": 10, "checked_over_unchecked": 2.0,
                        "digest_s": 0.15, "file_sha256_s": 0.17, "load_unchecked_s": 0.1,
                        "load_checked_s": 0.2},
         "metadata": {"refuse_claim_s": 6e-4, "check_honest_s": 7e-4,
                      "store_info_refuse_s": 6e-4, "claimed_rows": 1e9}}  # fmt: skip
    assert [r["passed"] for r in integrity.headline(i)] == [True, None, None, None, True]
    lines = printed(integrity.headline(i))
    assert lines[0] == ("data check, sha256 of every shard / one epoch", "0.010", "<= 0.02", "ok")
    assert [line[1] for line in lines] == ["0.010", "1.010", "1.500", "2.000", "0.600"]


def printed(rows: list[dict]) -> list[tuple[str, ...]]:
    """(figure, value, target, holds) of each line `headline_text` prints for `rows`, in order:
    what a part's command shows."""
    from satpipe.bench.base import headline_text

    lines = headline_text(rows).splitlines()
    assert len(lines) == len(rows)
    out = []
    for row, line in zip(rows, lines, strict=True):
        assert line.startswith(row["figure"])
        value, rest = line[len(row["figure"]) :].split(maxsplit=1)
        assert rest.startswith(row["target"])
        out.append((row["figure"], value, row["target"], rest[len(row["target"]) :].strip()))
    return out


def test_a_parts_text_prints_each_headline_figure():
    from satpipe.bench import dask, loader, saliency

    sal = {"methods": {"gradient": {"img_s": 1234.5, "efficiency": 0.98}},
           "peak_rss": {"growth": 1.02, "sizes": {"256": {}, "1024": {}}}}  # fmt: skip
    assert printed(saliency.headline(sal)) == [
        ("saliency efficiency, gradient", "0.980", ">= 0.9", "ok"),
        ("saliency runner peak RSS, large / small dataset", "1.020", "<= 1.1 (flat)", "ok"),
    ]
    d = {"workers": {"1": {"img_s": 30.0}, "2": {"img_s": 57.0}}, "ratio": 1.9, "passed": True}
    assert printed(dask.headline(d)) == [
        ("saliency img/s, dask 2 workers / 1 worker (CPU)", "1.900", ">= 1.8", "ok")
    ]
    ld = {
        "throughput": {"32x32": {"resident_pairs_per_s": 4e4, "streaming_pairs_per_s": 3e4,
                                 "streaming_over_resident": 0.75}},
        "train_step": {"streaming_over_resident": 0.9, "target": 0.95},
        "streaming_rss": {"1024": {"peak_rss_mb": 600.2}, "4096": {"peak_rss_mb": 610.7},
                          "large_over_small": 1.02},
    }  # fmt: skip
    assert printed(loader.headline(ld)) == [
        ("resnet10 step rate, streaming / resident", "0.900", ">= 0.95", "MISSED"),
        ("streaming peak RSS, large / small dataset", "1.020", "<= 1.1 (flat)", "ok"),
    ]


def test_yardstick_is_batch_over_the_median_and_fastest_call_and_scales(monkeypatch):
    import satpipe.reproduce.yardstick as ys
    from satpipe.bench.timing import Timings

    seen = {}

    def fake_alternate(sides, **kwargs):
        seen.update(kwargs)
        sides["yardstick"](0)  # the real forward+backward runs once
        return Timings({"yardstick": [0.4, 0.128, 0.2]}, {"yardstick": [None] * 3})

    monkeypatch.setattr(ys, "alternate", fake_alternate)
    assert ys.yardstick_rate("cpu") == pytest.approx((64 / 0.2, 64 / 0.128))
    assert seen["warmup"] >= 1 and seen["floor_seconds"] > 0
    # 10 min at 1000 img/s is 20 min at the reference's 500 img/s; at 250 img/s, 5 min.
    assert ys.scaled_minutes(600, 1000) == pytest.approx(20)
    assert ys.scaled_minutes(600, 250) == pytest.approx(5)


def test_a_part_command_parses_its_lists_pairs_and_switches(monkeypatch):
    import satpipe.bench as bench

    seen = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda name, out, **s: seen.update(s) or {})
    monkeypatch.setattr(BENCHMARKS.get("saliency"), "headline", lambda report: [])
    args = ["--methods", "gradient", "--methods", "ig,gbp", "-p", "ig.steps=4", "--rss-sizes", "",
            "--no-amp", "--out", "x"]  # fmt: skip
    result = CliRunner().invoke(app, ["bench", "saliency", *args])
    assert result.exit_code == 0, result.output
    assert seen == {"methods": ("gradient", "ig", "gbp"), "params": {"ig": {"steps": "4"}},
                    "rss_sizes": (), "amp": False}  # fmt: skip
    bad = CliRunner().invoke(app, ["bench", "saliency", "-p", "steps=4", "--out", "x"])
    assert bad.exit_code == 1 and "--param expects name.key=value" in bad.output


def test_bench_loader_runs_every_side_at_tiny_sizes(tmp_path):
    # Both loader modes, the drop_last step-rate loaders and the two RSS probes, in seconds.
    report = run_benchmark("loader", device="cpu", sizes=(8,), rows=64, rows_per_shard=16,
                           batch_size=16, epochs=1, train_steps=1, rss_rows=(64, 128),
                           train_batch_size=16, rounds=1, workdir=str(tmp_path))  # fmt: skip
    assert set(report["throughput"]) == {"8x8"}
    assert report["train_step"]["image_size"] == 8
    assert report["train_step"]["resident_steps_per_s"] > 0
    assert report["streaming_rss"]["128"]["rows"] == 128
    rows = BENCHMARKS.get("loader").headline(report)
    assert [r["value"] for r in rows] == [
        round(report["train_step"]["streaming_over_resident"], 3),
        round(report["streaming_rss"]["large_over_small"], 3),
    ]


def test_a_headline_row_holds_by_its_bound_or_as_given():
    from satpipe.bench.base import headline_row

    assert headline_row("f", 0.95, ">= 0.95", "x")["passed"] is True
    assert headline_row("f", 1.2, "<= 1.1 (flat)", "x")["passed"] is False
    assert headline_row("f", 7.0, "- (informative)", "x")["passed"] is None
    row = headline_row("f", 0.12345, "milliseconds", "x", passed=False)
    assert row == {"figure": "f", "value": 0.123, "target": "milliseconds", "passed": False,
                   "limited_by": "x"}  # fmt: skip
