"""`satpipe bench ...`: one command per registered benchmark part, plus `bench all`.

A part's options are its function's keyword arguments that have a help text in the part's
`options` (satpipe/bench), with the function's defaults; the command parses them and calls the
function. The commands are built when a `satpipe bench` command runs, not when the CLI is
imported: the parts import torch, which `satpipe --help` must not. A new part needs nothing here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping

import click
import typer
from typer.core import TyperGroup

from satpipe.cli._common import app, config_command
from satpipe.core.options import option


def _options_of(fn: Callable, helps: Mapping[str, str | tuple[str, ...]],
                choices: Mapping[str, str]) -> type:  # fmt: skip
    """A dataclass of `fn`'s keyword arguments named in `helps` (help, or ("--flag", ["-f",]
    help)), typed and defaulted as in `fn`: what `config_command` makes options of."""
    hints = typing.get_type_hints(fn)
    fields = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in helps:
            *decls, text = (helps[p.name],) if isinstance(helps[p.name], str) else helps[p.name]
            spec = option(p.default, text, flag=(decls or [None])[0],
                          short=(decls[1:] or [None])[0], choices=choices.get(p.name))  # fmt: skip
            fields.append((p.name, hints[p.name], spec))
    return dataclasses.make_dataclass(f"{fn.__name__}_options", fields)


def _extra(name: str) -> tuple[inspect.Parameter, ...]:
    """`--out` and `--quick`, which every part's command has beside its function's options."""
    out = typer.Option(f"bench-{name}.json", "--out", help="JSON report to write.")
    quick = typer.Option(False, "--quick", help="The part's small sizes (flags given win).")
    return tuple(
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=info)
        for key, kind, info in (("out", str, out), ("quick", bool, quick))
    )


@functools.cache
def _commands() -> dict[str, click.Command]:
    """Every part's command and `all`, in registry order (built once, on first use)."""
    import satpipe.bench as bench

    group = typer.Typer()
    for entry in bench.BENCHMARKS.entries():
        part = entry.value
        config_command(
            group, entry.name, _options_of(part.run, part.options, part.choices),
            lambda given, name=entry.name: bench.bench_command(name, **given), help=entry.summary,
            extra=_extra(entry.name),
        )  # fmt: skip
    config_command(
        group, "all", _options_of(bench.bench_all, bench.ALL_OPTIONS, bench.ALL_CHOICES),
        lambda given: bench.bench_all_command(**given),
        help="Every benchmark in one run: headline ratios with their targets, JSON + markdown.",
    )  # fmt: skip
    return dict(typer.main.get_command(group).commands)


class _Parts(TyperGroup):
    """`satpipe bench`: its commands come from `_commands()` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _commands().get(name)


bench_app = typer.Typer(
    cls=_Parts, no_args_is_help=True,
    help="Benchmarks (JSON out); every figure is a ratio within one run.",
)  # fmt: skip
app.add_typer(bench_app, name="bench")
