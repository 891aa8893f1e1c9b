"""Shared fixtures: tiny stores the tests make themselves (no download anywhere)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from satpipe.data.dataset_store import DatasetWriter

from .s3server import s3, s3_server  # noqa: F401

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


def write_tiny_saliency(
    uri,
    dataset_uri: str,
    channels: int = 1,
    source: str = "masks",
    seed: int = 0,
    complete: bool = True,
    shards_done: int | None = None,
    fingerprint: str | None = None,
) -> str:
    """A saliency store for the train split of `dataset_uri`, written with the store helpers.

    source="masks": weak saliency, +1 inside the object mask and -1 outside (DESIGN), recorded
    as method "mask" as the pipeline's weak method records it; "random": uniform in [-1, 1].
    `complete=False` leaves the store unfinished; `shards_done=k` marks only the first k
    shards done; `fingerprint` overrides the recorded dataset fingerprint.
    """
    from satpipe.data.dataset_store import open_dataset
    from satpipe.data.storage import shard_rows, shard_slices
    from satpipe.data.synthetic import write_saliency_maps

    view = open_dataset(dataset_uri)
    train = view.split("train")
    n, h, w, _ = train.images.shape
    if source == "masks":
        maps = np.asarray(train.masks[:], dtype=np.float32) * 2 - 1
        maps = np.repeat(maps[..., None], channels, axis=3)
    else:
        maps = np.random.default_rng(seed).uniform(-1, 1, (n, h, w, channels))
    n_shards = len(shard_slices(n, shard_rows(train.images)))
    return write_saliency_maps(
        uri, dataset_uri, maps,
        done=(np.arange(n_shards) < (n_shards if shards_done is None else shards_done)),
        complete=complete,
        method={"masks": "mask"}.get(source, source),  # the pipeline's weak method
        normalization="sign",
        seed=seed,
        dataset={"uri": str(dataset_uri), "fingerprint": fingerprint or view.fingerprint},
        satpipe_version="test",
    )  # fmt: skip


def write_colour_dataset(
    uri, n_train: int = 64, n_test: int = 64, size: int = 16, seed: int = 0
) -> str:
    """A learnable dataset: a square of the class colour (4 classes) on a noisy grey
    background; masks mark the square. A small CNN learns it in a few epochs."""
    rng = np.random.default_rng(seed)
    palette = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 230], [220, 210, 40]])
    with DatasetWriter(
        str(uri),
        name="colour",
        classes=["red", "green", "blue", "yellow"],
        image_shape=(size, size, 3),
        split_sizes={"train": n_train, "test": n_test},
        has_masks=True,
        source={"generator": "tests.write_colour_dataset", "seed": seed},
        rows_per_shard=16,
    ) as writer:
        for split, n in (("train", n_train), ("test", n_test)):
            labels = rng.integers(0, 4, n)
            images = rng.normal(128, 30, (n, size, size, 3))
            masks = np.zeros((n, size, size), np.uint8)
            side = size // 2
            for i in range(n):
                y0, x0 = rng.integers(0, size - side + 1, 2)
                images[i, y0 : y0 + side, x0 : x0 + side] = palette[labels[i]]
                masks[i, y0 : y0 + side, x0 : x0 + side] = 1
            writer.write(split, np.clip(images, 0, 255).astype(np.uint8), labels, masks)
    return str(uri)
