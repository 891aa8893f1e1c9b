"""The stores and checkpoints the benchmarks time against: random pixels, random maps and
untrained weights (speed does not depend on content), written with `satpipe.data.synthetic`."""

from __future__ import annotations

from pathlib import Path

import torch

from satpipe.data.synthetic import write_random_dataset, write_random_saliency
from satpipe.train.checkpoint import model_record, save_checkpoint
from satpipe.train.models import create_model

GENERATOR = "satpipe.bench"  # recorded as the stores' source


def random_dataset(
    root: str | Path, name: str, n: int, size: int, *, rows_per_shard: int | None = None,
    n_test: int = 0, seed: int = 0,
) -> str:  # fmt: skip
    """A dataset store `root/name.zarr`: n train rows of size x size x 3 noise, 10 classes."""
    return write_random_dataset(
        str(Path(root) / f"{name}.zarr"), n, size, n_test=n_test, rows_per_shard=rows_per_shard,
        seed=seed, generator=GENERATOR,
    )  # fmt: skip


def random_pair(
    root: str | Path, name: str, n: int, size: int, *, channels: int = 1,
    rows_per_shard: int | None = None, n_test: int = 0, seed: int = 0,
) -> tuple[str, str]:  # fmt: skip
    """(dataset_uri, saliency_uri): `random_dataset` and a complete saliency store for it of
    uniform maps in [-1, 1] with `channels` channels, paired row for row."""
    data = random_dataset(root, name, n, size, rows_per_shard=rows_per_shard, n_test=n_test,
                          seed=seed)  # fmt: skip
    sal = write_random_saliency(str(Path(root) / f"{name}_sal.zarr"), data, channels, seed=seed)
    return data, sal


def untrained_checkpoint(root: str | Path, model: str, num_classes: int = 10) -> str:
    """A satpipe checkpoint `root/model.pt` of an untrained `model` (seed 0, 3 channels)."""
    path = str(Path(root) / "model.pt")
    torch.manual_seed(0)
    net = create_model(model, num_classes)
    save_checkpoint(path, {"model": model_record(net, num_classes, 3)})
    return path
