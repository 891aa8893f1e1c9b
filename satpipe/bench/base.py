"""What every part of `satpipe bench` shares: the registry of parts, a report's opening
fields, the headline row and its text, and the checks of a part's sizes."""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from satpipe.core.device import DEVICE_HELP
from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry
from satpipe.core.version import __version__
from satpipe.train.config import MODEL_HELP

Report = dict[str, Any]


# The --help of options several parts share, by argument name (`shared_options`).
SHARED_HELP: dict[str, str | tuple[str, ...]] = {
    "device": DEVICE_HELP,
    "model": f"Architecture (untrained weights). {MODEL_HELP}",
    "data": "Dataset store (default: random pixels in a temp dir).",
    "n_train": ("--rows", "Rows of the random dataset."),
    "size": "Image side of the random images, in pixels.",
    "rows_per_shard": "Shard rows of the random store.",
    "batch_size": "Images per batch.",
}


@dataclass
class Part:
    """One part of `satpipe bench`, registered in BENCHMARKS under its name.

    run(**sizes) -> report: a plain function whose keyword arguments are the part's sizes
    (defaults: the full size) and whose report is a JSON-ready dict. headline(report) -> rows
    (`headline_row`s, each with its target): what `satpipe bench NAME` prints (`headline_text`),
    `bench all`'s table and the figures with targets.
    options: {argument: help} of the arguments that are command-line options (a tuple
    ("--flag", ["-f",] help) names the flag); the others are set by code only. choices:
    {argument: "module:attribute"} of a closed set, shown in --help. quick: argument overrides
    for `--quick` (every code path in about a minute on a CPU, rough figures); cpu: overrides
    for a full-size `bench all` on a CPU; in_all: whether `bench all` runs it by default.
    shared: arguments whose help is SHARED_HELP's (the same in every part), joined to options.
    """

    run: Callable[..., Report]
    headline: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    summary: str  # the line `satpipe list benchmarks` shows
    options: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    choices: Mapping[str, str] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    cpu: Mapping[str, Any] = field(default_factory=dict)
    in_all: bool = True
    shared: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.options = {**{name: SHARED_HELP[name] for name in self.shared}, **self.options}


BENCHMARKS: Registry[Part] = Registry("benchmark")


def headline_row(
    figure: str, value: float, target: str, limit: str, passed: bool | None = None
) -> dict[str, Any]:
    """One headline figure: its value, its target, what bounds it and whether it holds:
    `passed` if given, else, for a target ">= x" or "<= x" (a note may follow: "<= 1.1
    (flat)"), whether `value` meets it, else None (informative: no target)."""
    if passed is None and target[:2] in (">=", "<="):
        bound = float(target.split()[1])
        passed = value >= bound if target[0] == ">" else value <= bound
    return {"figure": figure, "value": round(float(value), 3), "target": target,
            "passed": passed, "limited_by": limit}  # fmt: skip


def headline_text(rows: list[dict[str, Any]]) -> str:
    """One line per headline row: figure, value, target and whether it holds (ok / MISSED / -,
    no target): the text of `satpipe bench NAME` and of `bench all`."""
    holds = {True: "ok", False: "MISSED", None: "-"}
    return "\n".join(f"{r['figure']:58s} {r['value']:8.3f}  {r['target']:14s} {holds[r['passed']]}"
                     for r in rows)  # fmt: skip


def device_name(device: Any) -> str:
    """The device a report was measured on: the GPU's name, or the CPU and its torch threads."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report_head(name: str, device: Any = "cpu") -> Report:
    """The fields every report opens with: the part, satpipe's and torch's versions, the device
    it ran on (`device_name`) and torch's intra-op threads."""
    import torch

    return {"benchmark": name, "satpipe_version": __version__, "torch": torch.__version__,
            "device": device_name(device), "torch_threads": torch.get_num_threads()}  # fmt: skip


def at_least(low: int, **values: int | None) -> None:
    """One line naming the first flag (`n_images` -> --n-images) whose value is below `low`."""
    for name, value in values.items():
        if value is not None and value < low:
            raise SatpipeError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
