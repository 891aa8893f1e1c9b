"""The `satpipe` command line: parses arguments and calls one library function per command.

No logic lives here: every command calls the same function a user would import, so the CLI
and the tests exercise one code path. A SatpipeError becomes one line on stderr and exit 1.
"""

from __future__ import annotations

import functools

import typer

from satpipe.errors import SatpipeError

app = typer.Typer(
    name="satpipe",
    help="Saliency-based Adversarial Training: saliency stores, SAT variants, robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build or import dataset stores.", no_args_is_help=True)
store_app = typer.Typer(help="Inspect, verify and publish stores.", no_args_is_help=True)
show_app = typer.Typer(help="Pictures for a person to look at.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (JSON out); every figure is a ratio within one run.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")
app.add_typer(show_app, name="show")
app.add_typer(bench_app, name="bench")


def friendly_errors(fn):
    """Turn SatpipeError into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SatpipeError as exc:
            typer.echo(f"satpipe: error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_storage_options(pairs: list[str] | None) -> dict[str, str]:
    """`--storage-option key=value` (repeatable) into fsspec storage_options."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SatpipeError(f"--storage-option expects key=value, got '{pair}'")
        options[key] = value
    return options


StorageOption = typer.Option(
    None, "--storage-option", "-S",
    help="fsspec storage option key=value for URL stores (repeatable), e.g. endpoint_url=http://...",
)


@app.command("list")
@friendly_errors
def list_cmd(
    what: str = typer.Argument("all", help="models, methods, variants or all"),
) -> None:
    """List the registered models, saliency methods and training variants."""
    from satpipe.train.models import list_models

    listing: dict[str, list[str]] = {"models": list_models()}
    try:
        from satpipe.pipeline.methods import list_methods

        listing["methods"] = list_methods()
    except ImportError:
        pass
    try:
        from satpipe.train.variants import list_variants

        listing["variants"] = list_variants()
    except ImportError:
        pass
    if what != "all":
        if what not in listing:
            raise SatpipeError(f"unknown listing '{what}'; choose one of all, {', '.join(listing)}")
        listing = {what: listing[what]}
    for key, names in listing.items():
        typer.echo(f"{key}: {', '.join(names)}")


# ---- data and store commands (satpipe.data) -------------------------------------------------


# ---- saliency stage (satpipe.pipeline) -------------------------------------------------------


# ---- trainer and evaluation (satpipe.train) --------------------------------------------------


# ---- reproduce (satpipe.reproduce) -------------------------------------------------------------


# ---- benchmarks ---------------------------------------------------------------------------------

