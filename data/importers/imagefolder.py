"""ImageFolder trees: `root/train/<class>/*` and `root/test/<class>/*`, or `root/<class>/*`.

Classes are the sorted folder names of the training tree; a test folder must use only those
classes. Files with an image extension (png, jpg, jpeg, bmp, gif, webp, tif, tiff; any case)
are read recursively inside each class folder, sorted by path; other files are ignored. A
class folder with no images is an error. Without `train/`, or with `train/` but no `test/`,
the test split is a seeded stratified one (`--test-fraction`, `--seed`).

Masks (`--masks DIR`): a tree that mirrors the images, `DIR/<same relative path>.png`, where
any non-zero pixel is object. Every image needs its mask. Size: `None` keeps the images as
they are (they must then all have one size); `--size N` resizes by `--resize-policy`.
Channels: `--channels 1` or `3`; by default the first image's (a greyscale first image makes a
1-channel store, and a colour image after it is refused; see writer.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import (
    ResizePolicy,
    check_output,
    class_folders,
    image_files,
    nonzero_mask,
    require_dir,
    split_samples,
)
from satpipe.data.importers.writer import Sample, write_dataset


def _scan(tree: Path, root: Path, classes: list[str], masks: Path | None) -> list[Sample]:
    """Samples of one split tree; labels index `classes`."""
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for folder in class_folders(tree):
        if masks is not None and folder.resolve() == masks.resolve():
            continue  # a mask tree kept inside the image root is not a class
        if folder.name not in index:
            raise SatpipeError(f"{folder}: class '{folder.name}' is not among the training classes")
        files = image_files(folder)
        if not files:
            raise SatpipeError(f"{folder}: empty class folder (no images)")
        for f in files:
            mask = None
            if masks is not None:
                mask = (masks / f.relative_to(root)).with_suffix(".png")
                if not mask.is_file():
                    raise SatpipeError(f"{f}: missing mask {mask}")
            samples.append(Sample(f, index[folder.name], mask=mask))
    return samples


@register_importer("imagefolder")
def import_imagefolder(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    masks: str | Path | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """ImageFolder tree (train/ and test/ or class folders), optional mirrored mask tree."""
    check_output(out, overwrite, storage_options)
    root = require_dir(Path(src), "image")
    mask_root = require_dir(Path(masks), "mask") if masks is not None else None
    train_tree = root / "train" if (root / "train").is_dir() else root
    classes = [
        p.name
        for p in class_folders(train_tree)
        if mask_root is None or p.resolve() != mask_root.resolve()
    ]
    if not classes:
        raise SatpipeError(f"{train_tree}: no class folders")
    train = _scan(train_tree, root, classes, mask_root)
    if train_tree != root and (root / "test").is_dir():
        splits = {"train": train, "test": _scan(root / "test", root, classes, mask_root)}
        split_info: Any = "train/ and test/ folders"
    else:
        splits, split_info = split_samples(train, test_fraction, seed)
    source = {
        "format": "imagefolder",
        "path": str(root.resolve()),
        "split": split_info,
        "masks": f"{mask_root.resolve()} (non-zero = object)" if mask_root else "none",
    }
    return write_dataset(
        out,
        splits,
        name=root.resolve().name,
        classes=classes,
        size=size,
        policy=resize_policy,
        channels=channels,
        source=source,
        read_mask=nonzero_mask if mask_root else None,
        overwrite=overwrite,
        storage_options=storage_options,
    )
