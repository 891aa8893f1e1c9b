"""Shared fixtures: tiny stores the tests make themselves (no download anywhere)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from satpipe.data.store import DatasetWriter

# Tests must not depend on how many cores the machine has.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("SATPIPE_NO_PROGRESS", "1")


def write_tiny_dataset(
    uri,
    n_train: int = 32,
    n_test: int = 16,
    size: int = 16,
    num_classes: int = 4,
    masks: bool = True,
    boxes: bool = True,
    seed: int = 0,
    rows_per_shard: int | None = 8,
) -> str:
    """A random dataset store with square objects: mask and box mark the same square."""
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(num_classes)]
    with DatasetWriter(
        str(uri),
        name="tiny",
        classes=classes,
        image_shape=(size, size, 3),
        split_sizes={"train": n_train, "test": n_test},
        has_masks=masks,
        has_boxes=boxes,
        source={"generator": "tests.write_tiny_dataset", "seed": seed},
        rows_per_shard=rows_per_shard,
    ) as writer:
        for split, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            labels = rng.integers(0, num_classes, n)
            x0 = rng.integers(0, size // 2, n)
            y0 = rng.integers(0, size // 2, n)
            side = size // 3
            box = np.stack([x0, y0, x0 + side, y0 + side], 1)
            mask = np.zeros((n, size, size), np.uint8)
            for i in range(n):
                mask[i, y0[i] : y0[i] + side, x0[i] : x0[i] + side] = 1
            writer.write(split, images, labels, mask if masks else None, box if boxes else None)
    return str(uri)


@pytest.fixture
def tiny_dataset(tmp_path) -> str:
    return write_tiny_dataset(tmp_path / "tiny.zarr")
