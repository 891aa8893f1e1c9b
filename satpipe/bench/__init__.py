"""`satpipe bench`: every benchmark, one module per part, one timing helper.

    satpipe/bench/timing.py    alternate(): sides timed in rounds, min/median; peak_rss()
    satpipe/bench/config.py    one typed config per part (torch-free: the CLI's options)
    satpipe/bench/saliency.py  methods vs forward+backward, runner peak RSS
    satpipe/bench/dask.py      saliency img/s on 1 vs 2 dask workers
    satpipe/bench/loader.py    resident vs streaming loader
    satpipe/bench/train.py     epoch time per variant, precomputed vs on-the-fly SAT
    satpipe/bench/models.py    a library model wrapped by satpipe vs bare, per saliency method
    satpipe/bench/eval.py      PGD-5 vs AutoAttack img/s, model passes and their floor, syncs
    satpipe/bench/integrity.py cost of the in-flight data check (shard sha256), as ratios
    satpipe/bench/dataset.py   DataLoader(SaliencyDataset) vs PairLoader vs TensorDataset img/s

Each part is a `BENCHMARKS` entry: its config class, its sizes for `--quick` (and on a CPU,
where the full size is too slow), and its module, which provides `run(config) -> report`
(a JSON-ready dict), `headline(report) -> rows` (the figures with targets) and
`format_report(report) -> str` (what `satpipe bench PART` prints). `bench_all` runs parts in
registry order into one JSON and a markdown summary; a part registered with `in_all=False`
(minutes even at quick sizes) runs there only when `--parts` names it. The figures that
matter are ratios measured within one run (machines here are noisy), collected as headline
rows, each with its target and what limits it. This module imports no torch until a benchmark runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from satpipe.bench.config import (
    BenchAllConfig,
    DaskBenchConfig,
    DatasetBenchConfig,
    EvalBenchConfig,
    IntegrityBenchConfig,
    LoaderBenchConfig,
    ModelsBenchConfig,
    SaliencyBenchConfig,
    TrainBenchConfig,
)
from satpipe.core.registry import Registry
from satpipe.core.version import __version__


@dataclass(frozen=True)
class Benchmark:
    """One part of `satpipe bench`: how to run it and how to read its report.

    module: provides run(config), headline(report) and format_report(report). quick: config
    overrides for `--quick` (every code path in about a minute on a CPU, rough figures). cpu:
    overrides for a full-size run on a CPU. summary: the line `satpipe list` shows. in_all:
    whether `bench all` runs it when no --parts are given.
    """

    summary: str
    config: type
    module: str
    quick: Mapping[str, Any] = field(default_factory=dict)
    cpu: Mapping[str, Any] = field(default_factory=dict)
    in_all: bool = True

    def _module(self):
        return importlib.import_module(self.module)

    def run(self, config: Any) -> dict[str, Any]:
        return self._module().run(config)

    def headline(self, report: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._module().headline(report)

    def format_report(self, report: Mapping[str, Any]) -> str:
        return self._module().format_report(report)

    def sizes(self, device: str, quick: bool) -> dict[str, Any]:
        """The config overrides for a `bench all` run on `device` (empty: the defaults)."""
        if quick:
            return dict(self.quick)
        if not self.cpu:
            return {}
        from satpipe.core.device import resolve_device

        return dict(self.cpu) if resolve_device(device).type == "cpu" else {}


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")

BENCHMARKS.register("saliency", Benchmark(
    "img/s per saliency method vs forward+backward, and the runner's peak RSS at two sizes",
    SaliencyBenchConfig, "satpipe.bench.saliency",
    quick={"n_images": 64, "rss_sizes": (256, 1024)},
))  # fmt: skip
BENCHMARKS.register("dask", Benchmark(
    "saliency img/s on a CPU dask cluster of 2 workers vs 1",
    DaskBenchConfig, "satpipe.bench.dask",
    quick={"n_images": 256, "rows_per_shard": 32},
))  # fmt: skip
BENCHMARKS.register("loader", Benchmark(
    "resident vs streaming loader: pairs/s, resnet10 step rate, streaming peak RSS",
    LoaderBenchConfig, "satpipe.bench.loader",
    quick={"rows": 1024, "rows_per_shard": 256, "train_steps": 5, "rss_rows": (1024, 4096)},
))  # fmt: skip
BENCHMARKS.register("train", Benchmark(
    "epoch time per variant as ratios to original; precomputed vs on-the-fly SmoothGrad SAT",
    TrainBenchConfig, "satpipe.bench.train",
    quick={"n_train": 128, "epochs": 1, "model": "smallcnn", "teacher": "smallcnn"},
    # The GPU size (1024 rows, 2 timed epochs, resnet34 SmoothGrad-10 on the fly) runs for
    # more than 20 minutes on 2 cores. The figures are per-epoch ratios, so fewer rows keep
    # them meaningful; batches of 32 give 16 coin flips per epoch, so the mixed variants
    # attack about p_mix of the batches (with 3 batches all three came up "attack" and PGD-SAT
    # timed like PGD).
    cpu={"n_train": 512, "batch_size": 32, "epochs": 2},
))  # fmt: skip
BENCHMARKS.register("models", Benchmark(
    "img/s of a library model wrapped by satpipe (normalisation hook) / bare, per method",
    ModelsBenchConfig, "satpipe.bench.models",
    quick={"batch_size": 8, "n_batches": 1, "rounds": 2, "floor_seconds": 1.0, "threads": 1},
))  # fmt: skip
BENCHMARKS.register("eval", Benchmark(
    "PGD-5 vs AutoAttack img/s, time share in model passes, syncs/step (`all`: only by name)",
    EvalBenchConfig, "satpipe.bench.eval",
    # 10 classes: at 8/255 the untrained model's own labels survive APGD-CE, so every stage
    # runs on every point (~2900 small model calls, ~30 s on one CPU thread even at quick
    # sizes, far more at full size), hence not part of the default `all`. One thread: on 2
    # loaded cores, 2 threads made the same quick run take 10 minutes.
    quick={"n": 16, "batch_size": 16, "size": 16, "square_queries": 50, "threads": 1},
    in_all=False,
))  # fmt: skip
BENCHMARKS.register("integrity", Benchmark(
    "cost of the in-flight data check: shard sha256 / epoch, first epoch checked / unchecked",
    IntegrityBenchConfig, "satpipe.bench.integrity",
    quick={"n_train": 512, "rows_per_shard": 128, "model": "smallcnn", "rounds": 1,
           "checkpoint_mb": 10},  # fmt: skip
    # 7 resnet10 epochs of 4096 rows are minutes on 2 cores; the figures are ratios to an
    # epoch, and hashing and an epoch both scale with the rows.
    cpu={"n_train": 1024, "rows_per_shard": 256},
))  # fmt: skip

BENCHMARKS.register("dataset", Benchmark(
    "img/s of DataLoader(SaliencyDataset, 2 workers) vs the PairLoader vs a TensorDataset",
    DatasetBenchConfig, "satpipe.bench.dataset",
    quick={"rows": 2048, "rows_per_shard": 512, "rounds": 1},
))  # fmt: skip


def headline_row(figure: str, value: float, target: str, passed: bool | None, limit: str) -> dict:
    """One headline figure: its value, target, whether it holds and what bounds it."""
    return {"figure": figure, "value": round(float(value), 3), "target": target,
            "passed": passed, "limited_by": limit}  # fmt: skip


def device_name(device: Any) -> str:
    """The device a report was measured on: the GPU's name, or the CPU and its torch threads."""
    import platform

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_report(report: Mapping[str, Any], out: str | Path) -> Path:
    """`report` as indented JSON at `out` (parent folders made)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def run_benchmark(name: str, out: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Run part `name` with its config built from `settings`; write JSON to `out` if given."""
    entry = BENCHMARKS.get(name)
    report = entry.run(entry.config(**settings))
    if out is not None:
        write_report(report, out)
    return report


def bench_command(name: str, out: str | Path, quick: bool = False, **settings: Any) -> str:
    """What `satpipe bench NAME` does: run (`quick`: the part's quick sizes under the given
    settings), write `out`, return the text summary and path."""
    if quick:
        settings = {**BENCHMARKS.get(name).quick, **settings}
    report = run_benchmark(name, out, **settings)
    return f"{BENCHMARKS.get(name).format_report(report)}\n{out}"


def bench_all(config: BenchAllConfig) -> dict[str, Any]:
    """Run the chosen parts in registry order; write `config.out` (JSON) and the same path with
    suffix .md (the headline table)."""
    import torch

    from satpipe.core.device import resolve_device

    parts = list(config.parts or [name for name, e in BENCHMARKS.items() if e.in_all])
    report: dict[str, Any] = {
        "benchmark": "all",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(resolve_device(config.device)),
        "quick": config.quick,
    }
    # The dask figure is about CPU workers; on a GPU machine it still measures the CPU path.
    report["sizes"] = {p: BENCHMARKS.get(p).sizes(config.device, config.quick) for p in parts}
    for part in parts:
        entry = BENCHMARKS.get(part)
        given = dict(report["sizes"][part])
        if "device" in {f.name for f in dataclasses.fields(entry.config)}:
            given["device"] = config.device
        report[part] = entry.run(entry.config(**given))
    report["headline"] = headline(report)
    out = write_report(report, config.out)
    out.with_suffix(".md").write_text(summary_markdown(report))
    return report


def headline(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figures the issues set targets for, from whichever parts are in `report`."""
    rows: list[dict[str, Any]] = []
    for name, entry in BENCHMARKS.items():
        if report.get(name):
            rows += entry.headline(report[name])
    return rows


def summary_markdown(report: Mapping[str, Any]) -> str:
    """A short markdown table of the headline figures, with the device and date."""
    rows = report.get("headline") or headline(report)
    lines = [
        f"# satpipe benchmarks — {report.get('device', '?')}, {report.get('date', '?')}",
        "",
        f"satpipe {report.get('satpipe_version', '?')}, torch {report.get('torch', '?')}"
        + (" (quick sizes: rough figures)" if report.get("quick") else ""),
        "",
        "| figure | value | target | holds | limited by |",
        "|---|---:|---|:---:|---|",
    ]
    mark = {True: "yes", False: "**no**", None: "-"}
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['value']:.3f} | {r['target']} | {mark[r['passed']]} "
            f"| {r['limited_by']} |"
        )
    return "\n".join(lines) + "\n"


def format_headline(report: Mapping[str, Any]) -> str:
    """One line per headline figure: value, target, and whether it holds."""
    holds = {True: "ok", False: "MISSED", None: "-"}
    return "\n".join(
        f"{r['figure']:58s} {r['value']:8.3f}  {r['target']:14s} {holds[r['passed']]}"
        for r in report["headline"]
    )


def bench_all_command(**settings: Any) -> str:
    """What `satpipe bench all` does: run, write the JSON and .md, return the headline lines
    and the two paths."""
    config = BenchAllConfig(**settings)
    report = bench_all(config)
    return f"{format_headline(report)}\n{config.out} and {Path(config.out).with_suffix('.md')}"
