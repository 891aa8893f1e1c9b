"""Importers: real dataset formats on local disk -> satpipe dataset stores.

Each format is one module that registers a function `fn(src, out, *, size, resize_policy,
overwrite, storage_options, ...format options) -> out` under its name, and every one of them
writes through `write_dataset` (writer.py), which is public for data in any other form:

    from satpipe.data.importers import IMPORTERS, import_dataset, write_dataset
    import_dataset("cifar10", "cifar-10-batches-py", "stores/cifar10.zarr")
    import_dataset("numpy", "mine.npz", "stores/mine.zarr")
    write_dataset("stores/x.zarr", {"train": SplitArrays(images, labels)}, name="x", classes=...)

Nothing is downloaded: point `src` at the unpacked official archive (or the file).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice, option, storage_options_field
from satpipe.core.registry import Registry
from satpipe.data.outputs import refuse_chained, refuse_inputs

# name -> fn(src, out, **options) -> out; the summary is the fn's first docstring line.
IMPORTERS: Registry[Callable[..., str]] = Registry("dataset format", plural="importers")


def register_importer(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Decorator: register `fn(src, out, **options) -> out` as the importer for `name`."""
    return IMPORTERS.register(name)


def importer_options(name: str) -> list[str]:
    """Keyword options importer `name` takes (besides src and out)."""
    params = inspect.signature(IMPORTERS.get(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


_POLICIES = "satpipe.data.importers.common:ResizePolicy"


@dataclass
class ImportConfig:
    """`satpipe data import`: a format, its source folder, the output and the options.

    Options left at None take the format's own default (see each format's module).
    """

    fmt: str = option(help="Dataset format (`satpipe list importers`).", argument=True,
                      choices="satpipe.data.importers:IMPORTERS")  # fmt: skip
    src: str = option(
        help="Unpacked dataset folder on local disk (numpy: the .npz file; hf: the "
        "save_to_disk folder).", argument=True,
    )  # fmt: skip
    out: str = option(help="Output store: path or URL (.zarr).", short="-o")
    size: int | None = option(
        None, "Resize to SIZE x SIZE (default: native, or the format's paper size)."
    )
    resize_policy: str | None = option(
        None, "stretch (default), center-crop (short side to SIZE, centre cut) or pad "
        "(long side to SIZE, black borders).", choices=_POLICIES,
    )  # fmt: skip
    test_fraction: float | None = option(
        None, "Seeded stratified test share where the format has no official split."
    )
    seed: int | None = option(None, "Seed of that split.")
    masks: str | None = option(
        None, "imagefolder: mask tree mirroring SRC (PNG, non-zero = object)."
    )
    masks_only: bool | None = option(
        None, "flowers17: import only the images with a trimap, with masks."
    )
    per_class: int | None = option(None, "flowers17: images per class, in file order.")
    channels: int | None = option(
        None, "imagefolder, hf: 1 (grey) or 3 (RGB); default: the first image's."
    )
    layout: str | None = option(
        None, "numpy: nhwc, nchw or auto (default: detected from the axis of 1 or 3)."
    )
    image_column: str | None = option(None, "hf: image column (default: the Image feature).")
    label_column: str | None = option(None, "hf: label column (default: the ClassLabel).")
    mask_column: str | None = option(None, "hf: optional mask column (non-zero = object).")
    overwrite: bool = option(False, "Replace an existing OUT.")
    storage_options: dict[str, Any] = storage_options_field()

    def __post_init__(self) -> None:
        self.fmt = IMPORTERS.entry(self.fmt).name
        if self.resize_policy is not None:
            self.resize_policy = check_choice(self.resize_policy, _POLICIES, "resize policy")

    def run(self) -> str:
        """Import: the options that were set go to the format's importer."""
        fixed = {"fmt", "src", "out", "overwrite", "storage_options"}
        options = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in fixed and getattr(self, f.name) is not None
        }
        return import_dataset(
            self.fmt, self.src, self.out, overwrite=self.overwrite,
            storage_options=self.storage_options, **options,
        )  # fmt: skip


def import_dataset(fmt: str, src: str | Path, out: str, **options: Any) -> str:
    """Import `src` (a local folder in format `fmt`) into the dataset store `out`.

    Common options: size (int, default native or per format), resize_policy ("stretch",
    "center-crop", "pad"), overwrite, storage_options; others per format (see each module).
    An option the format does not take is an error naming it. Returns `out`.
    """
    importer = IMPORTERS.get(fmt)
    takes = importer_options(fmt)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        valid = ", ".join("--" + k.replace("_", "-") for k in takes)
        raise SatpipeError(f"format '{fmt}' does not take {flags} (it takes {valid})")
    src = Path(src)
    if not src.exists():
        raise SatpipeError(f"{src}: source not found")
    refuse_chained(str(out))
    refuse_inputs(str(out), [str(src)])  # --overwrite must never remove the source
    return importer(src, str(out), **options)


# The built-in formats register themselves on import (they need the functions above).
from satpipe.data.importers import (  # noqa: E402
    cifar,
    flowers17,
    hf,
    imagefolder,
    numpy_npz,
    oxford_pet,
    tinyimagenet,
)
from satpipe.data.importers.writer import Sample, SplitArrays, write_dataset  # noqa: E402

__all__ = [
    "IMPORTERS",
    "ImportConfig",
    "Sample",
    "SplitArrays",
    "cifar",
    "flowers17",
    "hf",
    "imagefolder",
    "import_dataset",
    "importer_options",
    "numpy_npz",
    "oxford_pet",
    "register_importer",
    "tinyimagenet",
    "write_dataset",
]
