"""Tiny-ImageNet-200 (`tiny-imagenet-200/`), with its bounding boxes.

Layout: `wnids.txt` (one WordNet id per class), optional `words.txt` (`wnid<TAB>names`),
`train/<wnid>/images/*.JPEG` with `train/<wnid>/<wnid>_boxes.txt`
(`file<TAB>x0<TAB>y0<TAB>x1<TAB>y1`), and `val/images/*.JPEG` with `val/val_annotations.txt`
(`file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1`). The official test images have no labels, so the
store's `test` split is the official validation set.

Classes are the sorted wnids (as torchvision's ImageFolder orders them); their words go into
the `source` attribute. The archive's boxes include their last pixel (x1 = 63 reaches the
right edge of a 64-pixel image); stored boxes end exclusive, so x1 + 1 and y1 + 1. Native size
is 64x64; `--size 32` is the paper's setting.
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
    image_files,
    read_text,
    require_dir,
)
from satpipe.data.importers.writer import Sample, write_dataset


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            out.append((n, line.split("\t") if "\t" in line else line.split()))
    return out


def _box(path: Path, n: int, fields: list[str]) -> tuple[int, int, int, int]:
    """Inclusive (x0, y0, x1, y1) text -> end-exclusive ints; malformed ones name the line."""
    try:
        x0, y0, x1, y1 = (int(v) for v in fields)
    except ValueError:
        raise SatpipeError(f"{path}:{n}: box {fields} is not four integers") from None
    if x0 < 0 or y0 < 0 or x1 < x0 or y1 < y0:
        raise SatpipeError(f"{path}:{n}: box {[x0, y0, x1, y1]} is not a valid box")
    return x0, y0, x1 + 1, y1 + 1


def _root(src: Path) -> Path:
    if (src / "tiny-imagenet-200").is_dir() and not (src / "wnids.txt").exists():
        return src / "tiny-imagenet-200"
    return src


def _train_samples(root: Path, wnids: list[str], wnids_path: Path) -> list[Sample]:
    """train/<wnid>/images/* of every class, each with its box from <wnid>_boxes.txt."""
    train: list[Sample] = []
    for label, wnid in enumerate(wnids):
        folder = require_dir(
            root / "train" / wnid / "images", f"class {wnid!r} (listed in {wnids_path.name}) images"
        )
        files = image_files(folder)
        if not files:
            raise SatpipeError(f"{folder}: empty class folder (no images)")
        boxes_path = root / "train" / wnid / f"{wnid}_boxes.txt"
        boxes = {}
        for n, fields in _lines(boxes_path):
            if len(fields) != 5:
                raise SatpipeError(f"{boxes_path}:{n}: expected 5 fields, got {len(fields)}")
            boxes[fields[0]] = _box(boxes_path, n, fields[1:])
        for f in files:
            if f.name not in boxes:
                raise SatpipeError(f"{f}: no box for this image in {boxes_path.name}")
            train.append(Sample(f, label, box=boxes[f.name]))
    return train


def _val_samples(root: Path, index: dict[str, int], wnids_path: Path) -> list[Sample]:
    """The official validation images (the test split), labels and boxes from
    val_annotations.txt."""
    val_dir = require_dir(root / "val" / "images", "validation images")
    ann = root / "val" / "val_annotations.txt"
    test: list[Sample] = []
    for n, fields in _lines(ann):
        if len(fields) != 6:
            raise SatpipeError(f"{ann}:{n}: expected 6 fields, got {len(fields)}")
        if fields[1] not in index:
            raise SatpipeError(f"{ann}:{n}: class {fields[1]} is not in {wnids_path.name}")
        path = val_dir / fields[0]
        if not path.is_file():
            raise SatpipeError(f"{path}: listed in {ann.name} line {n} but not found")
        test.append(Sample(path, index[fields[1]], box=_box(ann, n, fields[2:])))
    return test


@register_importer("tinyimagenet")
def import_tinyimagenet(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Tiny-ImageNet-200 with boxes; test split = official val; native 64x64."""
    check_output(out, overwrite, storage_options)
    root = _root(Path(src))
    wnids_path = root / "wnids.txt"
    wnids = sorted({fields[0] for _, fields in _lines(wnids_path)})
    if not wnids:
        raise SatpipeError(f"{wnids_path}: lists no classes")
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for _, fields in _lines(root / "words.txt"):
            if fields[0] in index and len(fields) > 1:
                words[fields[0]] = " ".join(fields[1:])
    train = _train_samples(root, wnids, wnids_path)
    test = _val_samples(root, index, wnids_path)
    source = {
        "format": "tinyimagenet",
        "path": str(root.resolve()),
        "split": "official (test = val)",
        "boxes": "archive boxes include x1, y1; stored end exclusive (x1 + 1, y1 + 1)",
        "class_words": words,
    }
    return write_dataset(
        out,
        {"train": train, "test": test},
        name="tinyimagenet",
        classes=wnids,
        size=size,
        policy=resize_policy,
        channels=3,
        source=source,
        overwrite=overwrite,
        storage_options=storage_options,
    )
