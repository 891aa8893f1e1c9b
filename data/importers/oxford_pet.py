"""Oxford-IIIT Pet (`images.tar.gz` + `annotations.tar.gz` unpacked side by side).

Layout: `images/<Breed_name>_<n>.jpg` and `annotations/trimaps/<Breed_name>_<n>.png`, with
`annotations/trainval.txt` and `annotations/test.txt` listing `<Breed_name>_<n> ...` per
line. The class is the file name up to its last `_`; classes are sorted case-insensitively,
which is the official class-id order (Abyssinian, american_bulldog, ...).

Splits: the official lists when both are present (images in neither are skipped and counted
in `source`); otherwise a seeded stratified split (`--test-fraction`, `--seed`).

Masks: when `annotations/trimaps/` exists every image must have its trimap (1 = pet,
2 = background, 3 = border); the stored mask is pet or border (1 or 3), so the object's
outline counts as object. Some images in the archive are greyscale or RGBA: they are
converted to RGB. Default size 32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import (
    ResizePolicy,
    check_output,
    decode_gray,
    read_text,
    require_dir,
    split_samples,
)
from satpipe.data.importers.writer import Sample, write_dataset


def trimap_mask(path: Path) -> np.ndarray:
    """uint8 (H, W): 1 where the trimap is pet (1) or border (3), 0 for background (2)."""
    t = decode_gray(path)
    bad = ~np.isin(t, (1, 2, 3))
    if bad.any():
        raise SatpipeError(f"{path}: trimap value {int(t[bad][0])} is not 1, 2 or 3")
    return ((t == 1) | (t == 3)).astype(np.uint8)


def _list(path: Path) -> list[str]:
    names = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split()[0])
    if not names:
        raise SatpipeError(f"{path}: lists no images")
    return names


def _samples(src: Path, images_dir: Path) -> tuple[list[str], dict[str, Sample], bool]:
    """(classes, the sample of each image by file stem, whether trimaps exist)."""
    files = sorted(p for p in images_dir.glob("*") if p.suffix.lower() == ".jpg")
    if not files:
        raise SatpipeError(f"{images_dir}: no .jpg images")
    breeds = {}
    for p in files:
        breed, sep, _ = p.stem.rpartition("_")
        if not sep or not breed:
            raise SatpipeError(f"{p}: name is not <Breed_name>_<n>.jpg")
        breeds[p] = breed
    classes = sorted(set(breeds.values()), key=lambda b: (b.lower(), b))
    index = {c: i for i, c in enumerate(classes)}
    trimaps = src / "annotations" / "trimaps"
    has_masks = trimaps.is_dir()
    by_stem = {}
    for p in files:
        mask = None
        if has_masks:
            mask = trimaps / (p.stem + ".png")
            if not mask.is_file():
                raise SatpipeError(f"{p}: missing mask {mask}")
        by_stem[p.stem] = Sample(p, index[breeds[p]], mask=mask)
    return classes, by_stem, has_masks


def _official_splits(
    lists: dict[str, Path], by_stem: dict[str, Sample], images_dir: Path
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """(the splits the official lists name, their record for `source`)."""
    splits: dict[str, list[Sample]] = {}
    for split, path in lists.items():
        rows = []
        for name in _list(path):
            if name not in by_stem:
                raise SatpipeError(f"{path}: lists {name}, which is not in {images_dir}")
            rows.append(by_stem[name])
        splits[split] = rows
    listed = {s.image.stem for rows in splits.values() for s in rows}
    return splits, {"kind": "official lists", "unlisted_skipped": len(by_stem) - len(listed)}


@register_importer("oxford-pet")
def import_oxford_pet(
    src: Path,
    out: str,
    *,
    size: int | None = 32,
    resize_policy: str = ResizePolicy.stretch.value,
    test_fraction: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Oxford-IIIT Pet: class from file name, trimap masks, official or seeded split."""
    check_output(out, overwrite, storage_options)
    src = Path(src)
    images_dir = require_dir(src / "images", "images")
    classes, by_stem, has_masks = _samples(src, images_dir)
    lists = {
        "train": src / "annotations" / "trainval.txt",
        "test": src / "annotations" / "test.txt",
    }
    if all(p.is_file() for p in lists.values()):
        splits, split_info = _official_splits(lists, by_stem, images_dir)
    else:
        splits, split_info = split_samples(list(by_stem.values()), test_fraction, seed)
    source = {
        "format": "oxford-pet",
        "path": str(src.resolve()),
        "split": split_info,
        "masks": "trimap pet (1) or border (3)" if has_masks else "none",
    }
    return write_dataset(
        out,
        splits,
        name="oxford-pet",
        classes=classes,
        size=size,
        policy=resize_policy,
        channels=3,
        source=source,
        read_mask=trimap_mask if has_masks else None,
        overwrite=overwrite,
        storage_options=storage_options,
    )
