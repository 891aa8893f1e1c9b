"""One registry type for every closed set satpipe has: models, saliency methods, variants,
importers, presets, attacks, quality scores, ... (timm's `register_model` / `create_model`).

    MODELS = Registry("model")

    @MODELS.register("smallcnn")
    def smallcnn(num_classes, in_channels=3): ...        # the decorator returns the entry

    MODELS.register("resnet10", factory)                  # or register an object directly
    MODELS.get("resnet10")                                # unknown: a line naming the valid ones
    MODELS.names()                                        # registration order
    MODELS.summary("resnet10")                            # first docstring line, or the given one

Every registry made here is listed in `CATALOG` under its plural, which is what `satpipe list`
prints and what the CLI's choices and the docs' tables are made from, so no name is ever kept in
a second, hand-synced list. The module imports nothing heavy (no torch), so a registry can be
declared anywhere. Which module fills which registry is the shell's knowledge
(`satpipe.cli.listing.REGISTRY_MODULES`): this layer names nothing above it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from satpipe.core.errors import SatpipeError

T = TypeVar("T")

# plural ("models") -> the registry; filled as registries are created (modules imported).
CATALOG: dict[str, Registry] = {}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: the object and its one-line summary."""

    name: str
    value: T
    summary: str


class Registry(Generic[T]):
    """Name -> entry for one closed set; names are unique and kept in registration order.

    kind: the singular noun used in messages ("saliency method"); plural: the key in CATALOG
    and in `satpipe list` (default kind + "s", spaces -> dashes).
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind.split()[-1] + "s"
        self._entries: dict[str, Entry[T]] = {}
        if self.plural in CATALOG:
            raise ValueError(f"a registry of {self.plural} exists already")
        CATALOG[self.plural] = self

    def register(self, name: str, value: Any = None, *, summary: str | None = None) -> Any:
        """Register `value` under `name` and return it; without `value`, a decorator.

        The summary defaults to the first line of the value's docstring. A name registered
        twice is a ValueError: two entries must never answer to one name.
        """
        if value is None:
            return lambda obj: self.register(name, obj, summary=summary)
        if not name or name != name.strip():
            raise ValueError(f"{self.kind} name {name!r} must be non-empty, without spaces")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        line = summary if summary is not None else _first_line(value)
        self._entries[name] = Entry(name, value, line)
        return value

    def get(self, name: str) -> T:
        """The entry registered as `name`; an unknown name is a one-line SatpipeError that
        lists the valid ones."""
        return self.entry(name).value

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[str(name)]
        except KeyError:
            raise SatpipeError(
                f"unknown {self.kind} '{name}'; choose one of {', '.join(self._entries)}"
            ) from None

    def summary(self, name: str) -> str:
        return self.entry(name).summary

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(e.name, e.value) for e in self._entries.values()]

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _first_line(value: Any) -> str:
    """The summary of an entry: its `summary` attribute, else the first sentence of the first
    paragraph of its docstring (joined across line breaks)."""
    doc = getattr(value, "summary", None)
    if not (isinstance(doc, str) and doc):
        doc = inspect.getdoc(value) if callable(value) or inspect.isclass(value) else None
    paragraph = " ".join((doc or "").strip().split("\n\n", 1)[0].split())
    sentence = re.match(r"(.+?[.!?])(?:\s|$)", paragraph)
    return sentence.group(1) if sentence else paragraph
