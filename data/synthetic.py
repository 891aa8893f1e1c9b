"""Random stores for benchmarks: noise images and noise maps, written block by block.

Benchmarks time the machinery, not learning, so their data only needs the right shapes,
dtypes and layout. Both writers keep memory bounded by one shard whatever `n` is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from satpipe.data.dataset_store import DatasetWriter, open_dataset
from satpipe.data.integrity import EVERY_CHUNK
from satpipe.data.storage import (
    create_group,
    create_rows_array,
    now_iso,
    shard_rows,
    shard_slices,
    write_attrs,
)


def write_random_dataset(
    uri: str,
    n_train: int,
    size: int = 32,
    *,
    n_test: int = 0,
    num_classes: int = 10,
    rows_per_shard: int | None = None,
    seed: int = 0,
    generator: str = "satpipe.data.synthetic",
) -> str:
    """A dataset store of uniform-noise uint8 images (size x size x 3) and random labels."""
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "test": n_test}
    sizes = {k: v for k, v in sizes.items() if v > 0}
    with DatasetWriter(
        uri,
        name=f"random{size}",
        classes=[f"c{k}" for k in range(num_classes)],
        image_shape=(size, size, 3),
        split_sizes=sizes,
        source={"generator": generator, "seed": seed},
        rows_per_shard=rows_per_shard,
        overwrite=True,
    ) as writer:
        for split, n in sizes.items():
            block = rows_per_shard or n
            for a in range(0, n, block):
                b = min(a + block, n) - a
                images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
                writer.write(split, images, rng.integers(0, num_classes, b))
    return uri


def write_random_saliency(
    uri: str,
    dataset_uri: str,
    channels: int = 1,
    *,
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """A complete saliency store of uniform maps in [-1, 1] for the train split of
    `dataset_uri`, sharded like the dataset (method "random", no source model)."""
    rng = np.random.default_rng(seed)
    view = open_dataset(dataset_uri, storage_options)
    images = view.split("train").images
    n, (h, w, _) = int(images.shape[0]), images.shape[1:]
    group = create_group(uri, overwrite=True, storage_options=storage_options)
    maps = create_rows_array(
        group, "train/saliency", n, (h, w, channels), "float16", shard_rows(images)
    )
    slices = shard_slices(n, shard_rows(maps))
    for sl in slices:
        maps[sl] = rng.uniform(-1, 1, (sl.stop - sl.start, h, w, channels)).astype(np.float16)
    done = group.create_array("train/done", shape=(len(slices),), dtype="uint8", chunks=(1,))
    done[:] = 1
    write_attrs(
        group,
        {
            "kind": "saliency",
            "format": 1,
            "features": [EVERY_CHUNK],  # create_rows_array stores every chunk; no sizes here
            "method": "random",
            "params": {},
            "normalization": "signed-maxabs",
            "seed": seed,
            "source_model": {"arch": None, "checkpoint_sha256": None, "variant": None},
            "dataset": {"uri": dataset_uri, "fingerprint": view.fingerprint},
            "splits": {"train": [n, h, w, channels]},
            "complete": True,
            "created": now_iso(),
            "satpipe_version": "bench",
        },
    )
    return uri
