"""Importers: real dataset formats on local disk -> satpipe dataset stores.

Each format is one module that registers a function `fn(src, out, *, size, resize_policy,
overwrite, storage_options, ...format options) -> out` under its name:

    from satpipe.data.importers import import_dataset, list_importers
    import_dataset("cifar10", "cifar-10-batches-py", "stores/cifar10.zarr")

Nothing is downloaded: point `src` at the unpacked official archive.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satpipe.errors import SatpipeError


@dataclass(frozen=True)
class Importer:
    name: str
    fn: Callable[..., str]
    summary: str

    @property
    def options(self) -> list[str]:
        """Keyword options the importer takes (besides src and out)."""
        params = inspect.signature(self.fn).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Decorator: register `fn(src, out, **options) -> out` as the importer for `name`."""

    def decorate(fn: Callable[..., str]) -> Callable[..., str]:
        if name in _IMPORTERS:
            raise ValueError(f"importer '{name}' is registered twice")
        summary = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        _IMPORTERS[name] = Importer(name, fn, summary)
        return fn

    return decorate


def list_importers() -> list[str]:
    return sorted(_IMPORTERS)


def get_importer(name: str) -> Importer:
    """The importer registered as `name`; an unknown name lists the valid ones."""
    try:
        return _IMPORTERS[name]
    except KeyError:
        valid = ", ".join(list_importers())
        raise SatpipeError(f"unknown dataset format '{name}'; choose one of {valid}") from None


def import_dataset(fmt: str, src: str | Path, out: str, **options: Any) -> str:
    """Import `src` (a local folder in format `fmt`) into the dataset store `out`.

    Common options: size (int, default native or per format), resize_policy ("stretch",
    "center-crop", "pad"), overwrite, storage_options; others per format (see each module).
    An option the format does not take is an error naming it. Returns `out`.
    """
    importer = get_importer(fmt)
    unknown = sorted(set(options) - set(importer.options))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        takes = ", ".join("--" + k.replace("_", "-") for k in importer.options)
        raise SatpipeError(f"format '{fmt}' does not take {flags} (it takes {takes})")
    src = Path(src)
    if not src.exists():
        raise SatpipeError(f"{src}: source not found")
    return importer.fn(src, str(out), **options)


# The built-in formats register themselves on import (they need the functions above).
from satpipe.data.importers import (  # noqa: E402
    cifar,
    flowers17,
    imagefolder,
    oxford_pet,
    tinyimagenet,
)

__all__ = [
    "Importer",
    "cifar",
    "flowers17",
    "get_importer",
    "imagefolder",
    "import_dataset",
    "list_importers",
    "oxford_pet",
    "register_importer",
    "tinyimagenet",
]
