"""`satpipe list`: every registry's names, from the registries themselves."""

from __future__ import annotations

import dataclasses
import importlib

import typer

from satpipe.cli._common import app, friendly_errors
from satpipe.core.errors import SatpipeError
from satpipe.core.registry import CATALOG, Registry

# Where each catalogued registry lives, so `satpipe list` imports exactly these modules. Module
# paths only: the names themselves live in the registries. The shell knows every layer; the
# registry type in satpipe.core knows none of them.
REGISTRY_MODULES: dict[str, str] = {
    "models": "satpipe.train.models",
    "model-sources": "satpipe.train.model_sources",
    "methods": "satpipe.pipeline.methods",
    "scores": "satpipe.pipeline.quality",
    "variants": "satpipe.train.variants",
    "schedules": "satpipe.train.schedules",
    "alpha-schedules": "satpipe.train.alpha_schedules",
    "attacks": "satpipe.train.eval.attacks",
    "distortions": "satpipe.train.eval.distortions",
    "importers": "satpipe.data.importers",
    "presets": "satpipe.reproduce.presets",
    "benchmarks": "satpipe.bench",
}


def load_registry(plural: str) -> Registry:
    """The catalogued registry `plural`, importing the module that fills it."""
    if plural not in REGISTRY_MODULES:
        valid = ", ".join(REGISTRY_MODULES)
        raise SatpipeError(f"unknown listing '{plural}'; choose one of all, {valid}")
    importlib.import_module(REGISTRY_MODULES[plural])
    return CATALOG[plural]


def load_all() -> dict[str, Registry]:
    """Every catalogued registry, filled, in REGISTRY_MODULES order."""
    return {plural: load_registry(plural) for plural in REGISTRY_MODULES}


def registry_markdown() -> str:
    """Every registry as a markdown table (name | what it is): the docs' reference tables."""
    out = []
    for plural, registry in load_all().items():
        out += [f"### {plural}", "", "| name | what it is |", "|---|---|"]
        out += [f"| `{e.name}` | {e.summary} |" for e in registry.entries()]
        out.append("")
    return "\n".join(out)


@app.command("list")
@friendly_errors
def list_cmd(
    what: str = typer.Argument("all", help=f"all, or one of: {', '.join(REGISTRY_MODULES)}."),
    long: bool = typer.Option(False, "--long", "-l", help="One line per entry with its summary."),
    markdown: bool = typer.Option(False, "--markdown", help="Markdown tables (the docs' ones)."),
) -> None:
    """List the registered models, saliency methods, variants, importers, presets, ..."""
    if markdown:
        typer.echo(registry_markdown())
        return
    registries = load_all() if what == "all" else {what: load_registry(what)}
    for plural, registry in registries.items():
        if not long:
            typer.echo(f"{plural}: {', '.join(registry.names())}")
            continue
        typer.echo(f"{plural}:")
        width = max((len(n) for n in registry.names()), default=0)
        for entry in registry.entries():
            typer.echo(f"  {entry.name:<{width}}  {entry.summary}")
            params = _parameters(entry.value)
            if params:
                typer.echo(f"  {'':<{width}}  parameters: {params}")


def _parameters(value) -> str:
    """`key=default, ...` of an entry that is a dataclass type (a saliency method, say)."""
    if not (isinstance(value, type) and dataclasses.is_dataclass(value)):
        return ""
    return ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(value))
