"""What every command module shares: the Typer apps, one-line errors, and the builder that
turns a typed config dataclass (`satpipe.core.options`) into a command's options.

A config-built command has one option per field, default and help taken from the field, so a
default is written once (in the config) and a flag the user did not give never overrides what
a config derives from elsewhere (a resumed run's saved settings, say). Closed sets show their
choices in `--help` from their registry, looked up only when help is drawn: `satpipe --help`
imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand

from satpipe.core.errors import SatpipeError
from satpipe.core.options import (
    field_default,
    field_kind,
    flag_name,
    parse_json_value,
    parse_list,
    parse_pairs,
    resolve_choices,
)

app = typer.Typer(
    name="satpipe",
    help="Saliency-based Adversarial Training: saliency stores, SAT variants, robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def sub_app(name: str, help: str, parent: typer.Typer | None = None) -> typer.Typer:
    """A command group `satpipe [parent] name ...`."""
    group = typer.Typer(help=help, no_args_is_help=True)
    (parent or app).add_typer(group, name=name)
    return group


def friendly_errors(fn: Callable) -> Callable:
    """Turn SatpipeError into one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SatpipeError as exc:
            typer.echo(f"satpipe: error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


StorageOption = typer.Option(
    None,
    "--storage-option",
    "-S",
    help="fsspec storage option key=value for URL stores (repeatable), e.g. endpoint_url=http://...",
)


def storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """`-S key=value` (repeatable): values that read as JSON become that (anon=true,
    client_kwargs={"region_name": "x"}); anything else stays a string (endpoint_url=http://...)."""
    return parse_pairs(pairs, "--storage-option")


class _ChoicesCommand(TyperCommand):
    """Fills each closed-set option's metavar with its names when help is drawn."""

    lazy_choices: dict[str, Any] = {}

    def _fill(self) -> None:
        for param in self.params:
            spec = self.lazy_choices.get(param.name)
            if spec is not None and param.metavar is None:
                param.metavar = "[" + "|".join(resolve_choices(spec)) + "]"

    def format_help(self, ctx, formatter) -> None:
        self._fill()
        return super().format_help(ctx, formatter)


def _show(value: Any) -> str | bool:
    if value is dataclasses.MISSING:
        return False
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return False if not value else ",".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return False
    return str(value)


def _joined_list(values: list[str], kind: type, flag: str) -> tuple:
    """Every value of a repeated list option, in order (each may hold commas)."""
    return parse_list(",".join(values), kind=kind, flag=flag)


def config_options(
    config_cls: type, exclude: tuple[str, ...] = ()
) -> tuple[list[inspect.Parameter], dict[str, Any], dict[str, Callable[[Any], Any]]]:
    """(signature parameters, their choice specs, converters) for the CLI fields of a config."""
    hints = typing.get_type_hints(config_cls)
    params, choices, convert = [], {}, {}
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("cli", False) or f.name in exclude:
            continue
        kind, elem = field_kind(hints[f.name])
        flag = flag_name(f)
        default = field_default(f)
        helptext = f.metadata.get("help", "")
        if f.metadata.get("argument"):
            info = typer.Argument(... if default is dataclasses.MISSING else default, help=helptext)
            annotation: Any = str
        else:
            decls = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
            if kind == "bool":
                decls = [f"{flag}/--no-{flag[2:]}"] + decls[1:]
            info = typer.Option(None, *decls, help=helptext, show_default=_show(default))
            if kind == "bool":
                annotation = bool | None
            elif kind == "pairs":
                annotation = list[str] | None
                convert[f.name] = functools.partial(parse_pairs, flag=flag, value=parse_json_value)
            elif kind == "nested-pairs":  # the method converts the text to its parameter's type
                annotation = list[str] | None
                convert[f.name] = functools.partial(parse_pairs, flag=flag, value=str, key_sep=".")
            elif kind == "list":
                # Repeatable, and each value may itself be comma-separated: `-a autoattack -a
                # pgd` and `-a autoattack,pgd` are the same list (none is silently dropped).
                annotation = list[str] | None
                convert[f.name] = functools.partial(_joined_list, kind=elem, flag=flag)
            else:
                annotation = (elem if elem in (int, float) else str) | None
        if f.metadata.get("choices") is not None:
            choices[f.name] = f.metadata["choices"]
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                              annotation=annotation)
        )  # fmt: skip
    return params, choices, convert


def config_command(
    group: typer.Typer,
    name: str,
    config_cls: type,
    run: Callable[[dict[str, Any]], Any],
    *,
    help: str,
    exclude: tuple[str, ...] = (),
    extra: tuple[inspect.Parameter, ...] = (),
) -> None:
    """Register command `name` on `group` with one option per CLI field of `config_cls`.

    `run(given)` gets the flags the user gave, parsed to their field types (plus any `extra`
    parameters, passed through as given); what it returns, if not None, is printed.
    """
    params, choices, convert = config_options(config_cls, exclude)
    params = [*params, *extra]

    def command(**kwargs: Any) -> None:
        given = {
            key: convert[key](value) if key in convert else value
            for key, value in kwargs.items()
            if value is not None
        }
        result = run(given)
        if result is not None:
            typer.echo(result)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_") + "_cmd"
    cls = type(f"{name.title()}Command", (_ChoicesCommand,), {"lazy_choices": choices})
    group.command(name, cls=cls)(friendly_errors(command))


def require(given: dict[str, Any], *names: str) -> None:
    """One line naming the first of `names` (field names) the user did not give."""
    missing = [n for n in names if n not in given]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise SatpipeError(f"missing {flags}")
