"""`satpipe bench ...`: one command per registered benchmark part, plus `bench all`.

Each part's options come from its typed config (satpipe/bench/config.py); the part, its
report and its text summary live in satpipe/bench. A new part needs nothing here.
"""

from __future__ import annotations

import functools
import inspect

import typer

from satpipe.bench import BENCHMARKS, bench_all_command, bench_command
from satpipe.bench.config import BenchAllConfig
from satpipe.cli._common import config_command, sub_app

bench_app = sub_app("bench", "Benchmarks (JSON out); every figure is a ratio within one run.")


def _out_option(name: str) -> inspect.Parameter:
    return inspect.Parameter(
        "out", inspect.Parameter.KEYWORD_ONLY, annotation=str,
        default=typer.Option(f"bench-{name}.json", "--out", help="JSON report to write."),
    )  # fmt: skip


def _quick_option() -> inspect.Parameter:
    return inspect.Parameter(
        "quick", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--quick", help="The part's small sizes (flags given win)."),
    )  # fmt: skip


def _run_part(given: dict, name: str) -> str:
    return bench_command(name, **given)


def _run_all(given: dict) -> str:
    return bench_all_command(**given)


for _entry in BENCHMARKS.entries():
    config_command(
        bench_app, _entry.name, _entry.value.config,
        functools.partial(_run_part, name=_entry.name), help=_entry.summary,
        extra=(_out_option(_entry.name), _quick_option()),
    )  # fmt: skip

config_command(
    bench_app, "all", BenchAllConfig, _run_all,
    help="Every benchmark in one run: headline ratios with their targets, JSON + markdown.",
)  # fmt: skip
