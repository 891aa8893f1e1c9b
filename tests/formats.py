"""Fixture writers: small data sets written in each real format's own layout (no download).

The importer tests write a few images to check pixels exactly; the paper presets' smoke runs
(tests/test_paper_presets.py) write a few hundred in the same layouts.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def jpg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90)
    return path


def rgb(h: int, w: int, rng: np.random.Generator = RNG) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def cifar_batch(
    path: Path,
    n: int,
    label_key: bytes,
    n_classes: int,
    rng: np.random.Generator = RNG,
    **extra,
) -> tuple:
    """One CIFAR python batch: a pickled dict with `data` uint8 (n, 3072) and labels."""
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, n_classes, n).tolist()
    batch = {b"batch_label": b"x", b"data": data, label_key: labels, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch))
    return data, labels


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> dict:
    """`cifar-100-python/` with train, test (fine and coarse labels) and meta."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    train = cifar_batch(d / "train", n_train, b"fine_labels", 100, rng,
                        coarse_labels=[0] * n_train)  # fmt: skip
    test = cifar_batch(d / "test", n_test, b"fine_labels", 100, rng, coarse_labels=[0] * n_test)
    names = [f"fine{i}".encode() for i in range(100)]
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}))
    return {"train": train, "test": test}


def write_tinyimagenet(
    root: Path,
    size: int = 16,
    wnids: Sequence[str] = ("n0003", "n0001", "n0002"),
    per_class: int = 2,
    val: Sequence[str] | None = None,
    seed: int | None = None,
) -> dict:
    """`tiny-imagenet-200/`: wnids.txt (in the given order, not sorted), words.txt, train
    images with WNID_boxes.txt and val images with val_annotations.txt; boxes inclusive as in
    the archive. `val`: the wnid of each validation image (default: one per class,
    wnids.txt reversed).
    Returns {file name: box}."""
    rng = RNG if seed is None else np.random.default_rng(seed)
    d = root / "tiny-imagenet-200"
    d.mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = {w: f"thing {w}" for w in wnids} | {"n0001": "goldfish, Carassius", "n9": "x"}
    (d / "words.txt").write_text("".join(f"{w}\t{text}\n" for w, text in words.items()))
    boxes = {}
    for w in wnids:
        lines = []
        for i in range(per_class):
            name = f"{w}_{i}.JPEG"
            jpg(d / "train" / w / "images" / name, rgb(size, size, rng))
            k = i % (size // 4)
            box = (k, 2 * k, size - 1 - k, size - 1)
            boxes[name] = box
            lines.append("\t".join([name, *map(str, box)]))
        (d / "train" / w / f"{w}_boxes.txt").write_text("\n".join(lines) + "\n")
    ann = []
    for i, w in enumerate(val if val is not None else list(reversed(wnids))):
        name = f"val_{i}.JPEG"
        jpg(d / "val" / "images" / name, rgb(size, size, rng))
        box = (1, 1, 3 + i % (size - 4), 5)
        boxes[name] = box
        ann.append("\t".join([name, w, *map(str, box)]))
    (d / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return boxes


def write_flowers17(
    root: Path,
    classes: int = 3,
    per_class: int = 4,
    trimaps: Sequence[int] = (1, 2, 6, 11),
    shape: tuple[int, int] = (12, 10),
    seed: int | None = None,
) -> dict:
    """17flowers `jpg/image_NNNN.jpg` (class order, `per_class` each) and, for the 1-based
    image numbers in `trimaps`, `trimaps/image_NNNN.png` with the flower in RGB (128, 0, 0)
    and an unsure border row. Returns {image number: trimap}."""
    rng = RNG if seed is None else np.random.default_rng(seed)
    h, w = shape
    regions = {}
    wanted = set(trimaps)
    for k in range(1, classes * per_class + 1):
        jpg(root / "jpg" / f"image_{k:04d}.jpg", rgb(h, w, rng))
        if k in wanted:
            t = np.zeros((h, w, 3), np.uint8)
            t[2 : h - 5, 3 : w - 1] = (128, 0, 0)  # flower
            t[1, :] = (128, 128, 128)  # unsure border: not flower
            regions[k] = t
            png(root / "trimaps" / f"image_{k:04d}.png", t)
    return regions
