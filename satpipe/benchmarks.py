"""`satpipe bench all`: every benchmark in one run, one JSON, one markdown summary.

The figures that matter are ratios measured within this run (machines here are noisy): they
are collected as "headline" rows, each with its target and what limits it, so a reader sees at
once which targets hold on this device. The benchmarks themselves live beside the code they
measure (pipeline/bench.py, train/bench.py, train/bench_loader.py); this module only runs them
and summarises.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from satpipe import __version__

PARTS = ("saliency", "dask", "loader", "train")

# Sizes for `--quick`: every code path in about a minute on a CPU (figures are then rough).
QUICK = {
    "saliency": {"n_images": 64, "rss_sizes": (256, 1024)},
    "dask": {"n_images": 256, "rows_per_shard": 32},
    "loader": {"rows": 1024, "rows_per_shard": 256, "train_steps": 5, "rss_rows": (1024, 4096)},
    "train": {"n_train": 128, "epochs": 1, "model": "smallcnn", "teacher": "smallcnn"},
}

# Full sizes on a CPU: the train part at its GPU size (1024 rows, 2 timed epochs, resnet34
# SmoothGrad-10 on the fly) runs for more than 20 minutes on 2 cores. Its figures are per-epoch
# ratios, so fewer rows keep them meaningful; batches of 32 give 16 coin flips per epoch, so
# the mixed variants attack about p_mix of the batches (with 3 batches all three came up
# "attack" and PGD-SAT timed like PGD).
CPU = {"train": {"n_train": 512, "batch_size": 32, "epochs": 2}}


# What bounds each method's efficiency (img/s x passes / forward+backward img/s), as profiled.
EFFICIENCY_LIMITS = {
    "gradient": "one forward+backward; captum's wrapper is the only extra",
    "smoothgrad": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "ig": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "gbp": "captum's backward hook on every ReLU, registered on each call",
    "gradcam++": "backward stops at the CAM layer, so it beats a full pass",
    "guided-gradcam++": "GBP (hooks) plus a Grad-CAM++ pass",
}


def _device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def part_sizes(part: str, device: str, quick: bool) -> dict[str, Any]:
    """The size overrides `part` runs with on `device` (empty: the benchmark's defaults)."""
    if quick:
        return dict(QUICK[part])
    from satpipe.device import resolve_device

    return dict(CPU.get(part, {})) if resolve_device(device).type == "cpu" else {}


def run_part(part: str, device: str, quick: bool) -> dict[str, Any]:
    """One benchmark's report (the same functions `satpipe bench PART` calls)."""
    opts = part_sizes(part, device, quick)
    if part == "saliency":
        from satpipe.pipeline.bench import bench_saliency

        return bench_saliency(device=device, **opts)
    if part == "dask":
        from satpipe.pipeline.bench import bench_dask_scaling

        return bench_dask_scaling(**opts)
    if part == "loader":
        from satpipe.train.bench_loader import bench_loader

        return bench_loader(device=device, **opts)
    if part == "train":
        from satpipe.train.bench import bench_train

        return bench_train(device=device, **opts)
    raise ValueError(f"unknown benchmark part {part!r}; choose from {', '.join(PARTS)}")


def bench_all(
    out: str | Path,
    parts: Sequence[str] = PARTS,
    device: str = "auto",
    quick: bool = False,
) -> dict[str, Any]:
    """Run `parts` in order; write `out` (JSON) and `out` with suffix .md (summary)."""
    report: dict[str, Any] = {
        "benchmark": "all",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": _device_name(device),
        "quick": quick,
    }
    # The dask figure is about CPU workers; on a GPU machine it still measures the CPU path.
    report["sizes"] = {part: part_sizes(part, device, quick) for part in parts}
    for part in parts:
        report[part] = run_part(part, device, quick)
    report["headline"] = headline(report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(summary_markdown(report))
    return report


def _row(figure: str, value: float, target: str, passed: bool | None, limit: str) -> dict:
    return {"figure": figure, "value": round(float(value), 3), "target": target,
            "passed": passed, "limited_by": limit}  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures the issues set targets for, from whichever parts are in `report`."""
    rows: list[dict[str, Any]] = []
    sal = report.get("saliency")
    if sal:
        for name, m in sal["methods"].items():
            rows.append(_row(
                f"saliency efficiency, {name}", m["efficiency"], ">= 0.9", m["efficiency"] >= 0.9,
                EFFICIENCY_LIMITS.get(name, "forward+backward passes of the model"),
            ))  # fmt: skip
        if "peak_rss" in sal:
            g = sal["peak_rss"]["growth"]
            rows.append(_row(
                "saliency runner peak RSS, large / small dataset", g, "<= 1.1 (flat)", g <= 1.1,
                "one shard in memory at a time",
            ))  # fmt: skip
    dask = report.get("dask")
    if dask:
        rows.append(_row(
            "saliency img/s, dask 2 workers / 1 worker (CPU)", dask["ratio"], ">= 1.8",
            dask["passed"], "cores: one torch thread per worker; shards are independent",
        ))  # fmt: skip
    loader = report.get("loader")
    if loader:
        step = loader["train_step"]["streaming_over_resident"]
        rows.append(_row(
            "resnet10 step rate, streaming / resident", step, ">= 0.95", step >= 0.95,
            "reader threads decode while the model computes; compute-bound when it holds",
        ))  # fmt: skip
        rss = loader["streaming_rss"]["large_over_small"]
        rows.append(_row(
            "streaming peak RSS, large / small dataset", rss, "<= 1.1 (flat)", rss <= 1.1,
            "bounded prefetch and shuffle window",
        ))  # fmt: skip
    train = report.get("train")
    if train:
        checks = train["checks"]
        if "sat_vs_original" in checks:
            c = checks["sat_vs_original"]
            rows.append(_row(
                "epoch time, SAT / Original", c["ratio"], "<= 1.05", c["passed"],
                "maps are read, not computed: only the perturbation is added",
            ))  # fmt: skip
        for fast, slow in (("pgd-sat", "pgd"), ("trades-sat", "trades")):
            c = checks.get(f"{fast}_vs_{slow}")
            if c:
                ok = abs(c["relative_error"]) <= 0.15
                rows.append(_row(
                    f"epoch time, {fast} / {slow}", c["ratio"],
                    f"~ {c['predicted']:.2f} predicted by pass counts (within 15%)", ok,
                    "attack passes: SAT batches skip the K-step attack",
                ))  # fmt: skip
        c = checks.get("precomputed_vs_smoothgrad_on_the_fly")
        if c:
            rows.append(_row(
                "SAT epoch speed-up, precomputed / on-the-fly SmoothGrad", c["speedup"], ">= 8",
                c["passed"], "teacher passes per step on the fly (samples x teacher cost)",
            ))  # fmt: skip
    return rows


def summary_markdown(report: dict[str, Any]) -> str:
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
