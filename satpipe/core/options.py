"""Typed command configs: their fields, help texts, choices and the one parser of list and
key=value values. Torch-free, so the CLI can build its options without importing torch.

A config is a dataclass whose fields are declared with `option(...)`: the default lives there
and nowhere else (the CLI shows it, library callers get it), the help text sits next to it, and
closed sets name where their choices come from (a registry, an Enum or a tuple, given as
"module:attribute" so nothing heavy is imported until the names are needed)::

    @dataclass
    class EvalConfig:
        eps: tuple[float, ...] = option((0, 1, 2), "eps grid, /255 units")
        device: str = option("auto", DEVICE_HELP)
        attack: str = option("pgd", "attack", choices="satpipe.train.eval.attacks:ATTACKS")

`satpipe.cli` turns such a dataclass into Typer options (kebab-case flags); `parse_list` and
`parse_pairs` turn the command line's strings into the field types with one-line errors.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from satpipe.core.errors import SatpipeError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    short: str | None = None,
    choices: str | Iterable[str] | None = None,
    cli: bool = True,
    argument: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    default: the one default (lists/dicts: pass a tuple or dict; dicts are copied per instance).
    flag: the long flag (default: --field-name). short: e.g. "-o". choices: "module:attribute"
    of a Registry, an Enum or a sequence of names, or the names themselves. cli=False keeps a
    field out of the command line (set by code only). argument=True makes it positional.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "short": short,
        "choices": choices,
        "cli": cli,
        "argument": argument,
    }
    if isinstance(default, dict):
        value = dict(default)
        return dataclasses.field(default_factory=lambda: dict(value), metadata=metadata)
    if isinstance(default, list):
        raise TypeError("option defaults must be immutable: use a tuple, not a list")
    return dataclasses.field(default=default, metadata=metadata)


def storage_options_field() -> Any:
    """The `-S/--storage-option key=value` field every config that opens stores has: fsspec
    options for URL stores (credentials, endpoints), never written to disk."""
    return option(
        {}, "fsspec option key=value for URL stores (repeatable), e.g. endpoint_url=http://...",
        flag="--storage-option", short="-S",
    )  # fmt: skip


def field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field (factory called), or dataclasses.MISSING."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# --------------------------------------------------------------------------------------------
# Choices


def resolve_choices(spec: str | Iterable[str] | Callable[[], Iterable[str]] | None) -> list[str]:
    """The names of a closed set: `spec` is "module:attribute" (a Registry, an Enum or a
    sequence), a callable returning names, or the names."""
    if spec is None:
        return []
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module), attr)
    if callable(spec) and not isinstance(spec, type):
        spec = spec()
    if isinstance(spec, type) and issubclass(spec, enum.Enum):
        return [str(m.value) for m in spec]
    names = getattr(spec, "names", None)
    if callable(names):  # a satpipe Registry
        return list(names())
    return [str(s) for s in spec]


def check_choice(value: Any, spec: Any, what: str) -> str:
    """`value` as a plain string if it is one of the names of `spec`, else a one-line error."""
    value = str(getattr(value, "value", value))
    names = resolve_choices(spec)
    if value not in names:
        raise SatpipeError(f"unknown {what} '{value}'; choose one of {', '.join(names)}")
    return value


# --------------------------------------------------------------------------------------------
# Parsing command-line strings


_KIND_WORDS = {int: "integers", float: "numbers", str: "names"}


def parse_list(text: str | Sequence[Any], kind: type, flag: str) -> tuple:
    """ "1,2,3" (or a sequence) -> tuple of `kind`; `--seeds 0.5` is an error, never 0.

    Empty items are skipped ("1,,2" -> (1, 2)); an int list refuses "0.5" and "1e3".
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        try:
            out.append(_convert(item, kind))
        except (TypeError, ValueError):
            shown = text if isinstance(text, str) else ",".join(map(str, text))
            raise SatpipeError(
                f"{flag} expects comma-separated {_KIND_WORDS.get(kind, kind.__name__)}, "
                f"got '{shown}'"
            ) from None
    return tuple(out)


def _convert(item: Any, kind: type) -> Any:
    if kind is int:
        if isinstance(item, bool):
            raise ValueError(item)
        if isinstance(item, int):
            return item
        if isinstance(item, float):
            if not item.is_integer():
                raise ValueError(item)
            return int(item)
        return int(str(item), 10)
    if kind is float:
        return float(item)
    return kind(item)


def parse_json_value(text: str) -> Any:
    """A value that reads as JSON becomes that (true, 3, {"a": 1}); anything else stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(
    pairs: Iterable[str] | None,
    flag: str,
    value: Callable[[str], Any] = parse_json_value,
    key_sep: str | None = None,
) -> dict[str, Any]:
    """Repeated `key=value` strings -> dict (`value` converts each value; JSON by default).

    key_sep: when given, keys must have that separator ("method.key=value") and the result is
    nested: {"method": {"key": value}}.
    """
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SatpipeError(f"{flag} expects key=value, got '{pair}'")
        if key_sep is None:
            out[key] = value(raw)
            continue
        outer, dot, inner = key.rpartition(key_sep)
        if not dot or not outer or not inner:
            raise SatpipeError(f"{flag} expects name{key_sep}key=value, got '{pair}'")
        out.setdefault(outer, {})[inner] = value(raw)
    return out


# --------------------------------------------------------------------------------------------
# Field types


def field_kind(hint: Any) -> tuple[str, type | None]:
    """How a field's type reads from the command line: ("scalar", T), ("list", T) for
    tuple[T, ...], ("pairs", None) for dict, ("nested-pairs", None) for a dict of dicts
    ("name.key=value", values kept as text), ("bool", bool); Optional unwrapped."""
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "list", (args[0] if args else str)
    if hint is dict or origin is dict:
        inner = (typing.get_args(hint) or (None, None))[1]
        return ("nested-pairs" if typing.get_origin(inner) is dict else "pairs"), None
    if hint is bool:
        return "bool", bool
    return "scalar", hint if isinstance(hint, type) else str


def _unwrap_optional(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def coerce_fields(config: Any) -> None:
    """Convert the values of a config's list fields given as strings or lists ("1,2", [1, 2])
    into tuples of their element type, in place; a bad value is a one-line error naming the
    flag. Called from configs' __post_init__ so library callers and the CLI agree."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind, elem = field_kind(hints[f.name])
        value = getattr(config, f.name)
        if kind == "list" and value is not None:
            setattr(config, f.name, parse_list(value, elem, flag_name(f)))
