"""Oxford Flowers-17 (`17flowers.tgz` unpacked: `jpg/image_0001.jpg` .. `image_1360.jpg`).

Images come in class order, `--per-class` (80) per class: image k (1-based) has class
(k - 1) // 80, named Daffodil, Snowdrop, LilyValley, Bluebell, Crocus, Iris, Tigerlily,
Tulip, Fritillary, Sunflower, Daisy, ColtsFoot, Dandelion, Cowslip, Buttercup, Windflower,
Pansy.

Splits: the official `datasplits.mat` is a MATLAB file (reading it would need scipy), so the
split is a seeded, stratified one: `--test-fraction` (0.25, i.e. 20 of 80, the size of the
official test sets) of each class, picked with `--seed`.

Masks: `trimaps/image_XXXX.png` (`trimaps.tgz`) exist for 848 of the images. With
`--masks-only` only those images are imported, each with its mask; otherwise no masks are
stored. In the trimaps the flower is the dark red class, RGB (128, 0, 0) (palette index 1 of
the VOC palette); every other colour (background, unsure border) is 0 in the stored mask.
Default size 32 (the paper resizes Flowers-17 to 32x32).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import (
    ResizePolicy,
    check_output,
    decode_rgb_raw,
    require_dir,
    split_samples,
)
from satpipe.data.importers.writer import Sample, write_dataset

FLOWER_CLASSES = (
    "Daffodil",
    "Snowdrop",
    "LilyValley",
    "Bluebell",
    "Crocus",
    "Iris",
    "Tigerlily",
    "Tulip",
    "Fritillary",
    "Sunflower",
    "Daisy",
    "ColtsFoot",
    "Dandelion",
    "Cowslip",
    "Buttercup",
    "Windflower",
    "Pansy",
)
FLOWER_RGB = (128, 0, 0)


def trimap_mask(path: Path) -> np.ndarray:
    """uint8 (H, W): 1 where the trimap is the flower colour RGB (128, 0, 0), else 0."""
    rgb = decode_rgb_raw(path)
    return np.all(rgb == np.array(FLOWER_RGB, dtype=np.uint8), axis=-1).astype(np.uint8)


def _numbered_images(folder: Path) -> list[Path]:
    """image_0001.jpg, image_0002.jpg, ... of `folder` in number order; a gap is an error."""
    numbered = []
    for p in folder.iterdir():
        m = re.fullmatch(r"image_(\d+)\.jpg", p.name, flags=re.IGNORECASE)
        if m:
            numbered.append((int(m.group(1)), p))
    numbered.sort()
    if not numbered:
        raise SatpipeError(f"{folder}: no image_NNNN.jpg files (is this the 17flowers jpg/?)")
    for want, (got, p) in enumerate(numbered, start=1):
        if got != want:
            raise SatpipeError(f"{p.with_name(f'image_{want:04d}.jpg')}: missing (numbering gap)")
    return [p for _, p in numbered]


def _with_trimaps(samples: list[Sample], trimaps: Path) -> list[Sample]:
    """The samples that have a trimap in `trimaps`, with it as their mask."""
    with_mask = []
    for s in samples:
        t = trimaps / (s.image.stem + ".png")
        if t.is_file():
            with_mask.append(Sample(s.image, s.label, mask=t))
    if not with_mask:
        raise SatpipeError(f"{trimaps}: no trimap matches any image")
    return with_mask


@register_importer("flowers17")
def import_flowers17(
    src: Path,
    out: str,
    *,
    size: int | None = 32,
    resize_policy: str = ResizePolicy.stretch.value,
    test_fraction: float = 0.25,
    seed: int = 0,
    per_class: int = 80,
    masks_only: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Oxford Flowers-17 (jpg/image_NNNN.jpg, 80 per class), seeded split, trimap masks."""
    check_output(out, overwrite, storage_options)
    src = Path(src)
    folder = src / "jpg" if (src / "jpg").is_dir() else src
    numbered = _numbered_images(folder)
    if per_class < 1 or len(numbered) % per_class:
        raise SatpipeError(
            f"{folder}: {len(numbered)} images do not split into classes of {per_class} "
            "(--per-class)"
        )
    n_classes = len(numbered) // per_class
    if n_classes > len(FLOWER_CLASSES):
        raise SatpipeError(
            f"{folder}: {len(numbered)} images at {per_class} per class make {n_classes} "
            f"classes; Flowers-17 has {len(FLOWER_CLASSES)}"
        )
    samples = [Sample(p, k // per_class) for k, p in enumerate(numbered)]
    if masks_only:
        samples = _with_trimaps(samples, require_dir(src / "trimaps", "trimaps"))
    splits, split_info = split_samples(samples, test_fraction, seed)
    split_info["kind"] = "seeded stratified (datasplits.mat is not read)"
    masks = f"trimaps: flower = RGB {list(FLOWER_RGB)}; only images with a trimap"
    source = {
        "format": "flowers17",
        "path": str(src.resolve()),
        "split": split_info,
        "per_class": per_class,
        "masks": masks if masks_only else "none",
    }
    return write_dataset(
        out,
        splits,
        name="flowers17",
        classes=list(FLOWER_CLASSES[:n_classes]),
        size=size,
        policy=resize_policy,
        channels=3,
        source=source,
        read_mask=trimap_mask if masks_only else None,
        overwrite=overwrite,
        storage_options=storage_options,
    )
