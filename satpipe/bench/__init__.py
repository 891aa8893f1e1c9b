"""`satpipe bench`: every benchmark is a plain function, registered with its sizes.

Each part (one module each: saliency, dask, loader, train, models, eval, integrity, dataset) is
a function `bench_NAME(**sizes) -> report` whose keyword arguments' defaults are the full size,
registered in BENCHMARKS (satpipe/bench/base.py) as a `Part` with its headline rows, its text,
its command-line help and its `--quick` / CPU sizes; every part times with `alternate`
(satpipe/bench/timing.py). `bench_all` runs parts in registry order into one JSON and a markdown
table of the headline rows, the figures with targets: ratios measured within one run (machines
here are noisy). A part registered with `in_all=False` runs there only when `parts` names it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Imported to register the parts: their import order is the registry's (and `bench all`'s).
# isort: off
from satpipe.bench import saliency, dask, loader, train  # noqa: F401
from satpipe.bench import models, eval, integrity, dataset  # noqa: F401

# isort: on
from satpipe.bench.base import BENCHMARKS, Part, headline_row, headline_text, report_head
from satpipe.core.device import DEVICE_HELP, resolve_device
from satpipe.core.options import check_choice

__all__ = ["BENCHMARKS", "Part", "bench_all", "headline", "headline_row", "run_benchmark"]

ALL_OPTIONS = {
    "out": "JSON report; a .md summary beside it.",
    "parts": "Comma-separated benchmarks to run (default: every one but eval, which is slow).",
    "device": DEVICE_HELP,
    "quick": "Small sizes: every path, rough figures.",
}
ALL_CHOICES = {"parts": "satpipe.bench:BENCHMARKS"}


def part_sizes(name: str, device: str, quick: bool) -> dict[str, Any]:
    """The argument overrides of part `name` in a `bench all` run on `device` (empty: the
    defaults): its quick sizes, else its CPU sizes on a CPU."""
    part = BENCHMARKS.get(name)
    if quick:
        return dict(part.quick)
    return dict(part.cpu) if part.cpu and resolve_device(device).type == "cpu" else {}


def write_report(report: Mapping[str, Any], out: str | Path) -> Path:
    """`report` as indented JSON at `out` (parent folders made)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def run_benchmark(name: str, out: str | Path | None = None, **sizes: Any) -> dict[str, Any]:
    """Run part `name` with `sizes` (its function's keyword arguments); write JSON to `out`."""
    report = BENCHMARKS.get(name).run(**sizes)
    if out is not None:
        write_report(report, out)
    return report


def bench_command(name: str, out: str | Path, quick: bool = False, **sizes: Any) -> str:
    """What `satpipe bench NAME` does: run (`quick`: the part's quick sizes under the given
    ones), write `out`, return its headline rows as text (`headline_text`) and the path."""
    part = BENCHMARKS.get(name)
    report = run_benchmark(name, out, **({**part.quick, **sizes} if quick else sizes))
    return f"{headline_text(part.headline(report))}\n{out}"


def bench_all(
    *, out: str = "bench.json", parts: tuple[str, ...] | None = None, device: str = "auto",
    quick: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run `parts` (default: every part in `all`) in registry order on `device`; write `out`
    (JSON) and the same path with suffix .md (the headline table)."""
    names = [n for n, part in BENCHMARKS.items() if part.in_all] if parts is None else [
        check_choice(p, BENCHMARKS, "benchmark") for p in parts
    ]  # fmt: skip
    report: dict[str, Any] = {
        **report_head("all", resolve_device(device)), "quick": quick,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }  # fmt: skip
    # The dask figure is about CPU workers; on a GPU machine it still measures the CPU path.
    report["sizes"] = {name: part_sizes(name, device, quick) for name in names}
    for name in names:
        run = BENCHMARKS.get(name).run
        given = dict(report["sizes"][name])
        if "device" in inspect.signature(run).parameters:
            given["device"] = device
        report[name] = run(**given)
    report["headline"] = headline(report)
    write_report(report, out).with_suffix(".md").write_text(summary_markdown(report))
    return report


def headline(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figures the issues set targets for, from whichever parts are in `report`."""
    return [row for name, part in BENCHMARKS.items() if report.get(name)
            for row in part.headline(report[name])]  # fmt: skip


def summary_markdown(report: Mapping[str, Any]) -> str:
    """A short markdown table of the headline figures, with the device and date."""
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
    for r in report.get("headline") or headline(report):
        lines.append(f"| {r['figure']} | {r['value']:.3f} | {r['target']} "
                     f"| {mark[r['passed']]} | {r['limited_by']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def bench_all_command(**settings: Any) -> str:
    """What `satpipe bench all` does: run, write the JSON and .md, return one line per headline
    figure (value, target, whether it holds) and the two paths."""
    report, out = bench_all(**settings), Path(settings.get("out", "bench.json"))
    return f"{headline_text(report['headline'])}\n{out} and {out.with_suffix('.md')}"
