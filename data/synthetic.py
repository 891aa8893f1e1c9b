"""Random stores for benchmarks and tests: noise images and noise maps, written block by block
through the stores' own writers (`DatasetWriter`, the saliency runner's `write_shard`), so they
record every feature a reader requires.

Benchmarks time the machinery, not learning, so their data only needs the right shapes,
dtypes and layout. Both random writers keep memory bounded by one shard whatever `n` is.
`write_saliency_maps` writes given maps (tests build their saliency stores with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from satpipe.data.dataset_store import DatasetWriter, open_dataset
from satpipe.data.saliency_store import (
    create_saliency_store,
    saliency_attrs,
    shard_plan,
    write_shard,
)
from satpipe.data.storage import shard_rows, write_attrs


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
    images = open_dataset(dataset_uri, storage_options).split("train").images
    n, (h, w, _) = int(images.shape[0]), images.shape[1:]
    maps = _RandomMaps((n, h, w, channels), np.random.default_rng(seed))
    return write_saliency_maps(
        uri, dataset_uri, maps, seed=seed, storage_options=storage_options,
        satpipe_version="bench",
    )  # fmt: skip


def write_random_pair(
    root: str, name: str, n_train: int, size: int = 32, *, channels: int = 1, n_test: int = 0,
    rows_per_shard: int | None = None, seed: int = 0,
) -> tuple[str, str]:  # fmt: skip
    """(dataset_uri, saliency_uri): `write_random_dataset` at `root/name.zarr` (10 classes) and
    `write_random_saliency` for it at `root/name_sal.zarr`, paired row for row."""
    data = write_random_dataset(f"{root}/{name}.zarr", n_train, size, n_test=n_test,
                                rows_per_shard=rows_per_shard, seed=seed)  # fmt: skip
    return data, write_random_saliency(f"{root}/{name}_sal.zarr", data, channels, seed=seed)


class _RandomMaps:
    """Uniform maps in [-1, 1] of `shape`, drawn shard by shard as they are read (in order)."""

    def __init__(self, shape: tuple[int, ...], rng: np.random.Generator) -> None:
        self.shape, self.rng = shape, rng

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.rng.uniform(-1, 1, (rows.stop - rows.start, *self.shape[1:]))


def write_saliency_maps(
    uri: str,
    dataset_uri: str,
    maps: Any,
    *,
    split: str = "train",
    rows_per_shard: int | None = None,
    done: Sequence[int] | None = None,
    complete: bool = True,
    overwrite: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    **provenance: Any,
) -> str:
    """A saliency store of `maps` ((N, H, W, Cs), or anything with that `shape` whose slices
    of rows are arrays) for `split` of `dataset_uri`, written by the runner's own writer
    (`create_saliency_store`, `write_shard`), so it records every feature a reader requires.

    Sharded like the dataset unless `rows_per_shard`; every shard is written, then `done`
    (0/1 per shard, default all 1) and `complete` are recorded as given, so tests can build a
    store that is half done or wrongly marked. `provenance` replaces `satpipe` attributes
    (method "random", signed-maxabs, seed 0, no source model, this dataset by default)."""
    view = open_dataset(dataset_uri, storage_options)
    if rows_per_shard is None:
        rows_per_shard = shard_rows(view.split(split).images)
    attrs = saliency_attrs(
        method="random", params={}, normalization="signed-maxabs", seed=0,
        source_model={"arch": None, "checkpoint_sha256": None, "variant": None},
        dataset={"uri": str(dataset_uri), "fingerprint": view.fingerprint},
        splits={split: maps.shape},
    )  # fmt: skip
    attrs.update(provenance)
    group = create_saliency_store(
        str(uri), attrs, {split: rows_per_shard}, overwrite, storage_options, (dataset_uri,)
    )
    for k, rows in enumerate(shard_plan(group, split)):
        write_shard(group, split, k, np.asarray(maps[rows], dtype=np.float16), str(uri))
    if done is not None:
        group[f"{split}/done"][:] = np.asarray(done, dtype=np.uint8)
    write_attrs(group, {**attrs, "complete": bool(complete)})
    return str(uri)
