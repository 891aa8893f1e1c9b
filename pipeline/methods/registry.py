"""Name -> method class, timm-style: `@register_method("smoothgrad")` on each method's class."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry
from satpipe.pipeline.methods.base import Method

METHODS: Registry[type[Method]] = Registry("saliency method", plural="methods")


def register_method(name: str):
    """Class decorator: register a Method dataclass under `name` (sets `cls.name`)."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name, cls)

    return add


def method_params(name: str) -> dict[str, Any]:
    """Parameter names of method `name` with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(METHODS.get(name))}


def model_methods() -> list[str]:
    """The methods that run a model (the ones a benchmark can time)."""
    return [name for name, cls in METHODS.items() if cls.needs_model]


def get_method(name: str, **params: Any) -> Method:
    """Build method `name` with `params` (strings, as from the CLI, are converted to the
    parameter's type). Unknown names or parameters are a one-line SatpipeError."""
    cls = METHODS.get(name)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise SatpipeError(
            f"method '{name}' has no parameter {', '.join(map(repr, unknown))} "
            f"(its parameters: {valid})"
        )
    values = {k: _coerce(name, k, v, hints[k]) for k, v in params.items()}
    return cls(**values)


def _coerce(method: str, key: str, value: Any, hint: Any) -> Any:
    """Turn CLI strings into the parameter's declared type (int, float, bool, str, Optional)."""
    types_ = [hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        types_ = [t for t in typing.get_args(hint) if t is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
    target = types_[0]
    if not isinstance(value, str) or target is str:
        if target is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if target is bool:
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return low in ("true", "1", "yes")
        return target(value)
    except ValueError:
        raise SatpipeError(
            f"method '{method}': parameter {key} expects {target.__name__}, got '{value}'"
        ) from None
