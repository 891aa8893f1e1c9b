"""What checking the data in flight costs (issue 16): the shard digests of the first epoch.

The trainer checks each shard of images and labels against the sha256 recorded when the
dataset store was written, as the first epoch reads it (satpipe.data.integrity). This measures
that cost three ways, each a ratio within one run:

- `hash_ratio`: the sha256 of every shard (the check's whole computation, on rows already in
  memory) over one training epoch of `variant` on the same data: the cost if it were paid on
  the training thread, which it is not (`target` 0.02);
- `first_epoch_ratio`: a streaming first epoch with the check over one without, alternated
  `rounds` times, best of each: what a run pays (reader threads hash while the device trains,
  so it is near 1 unless reading is the bottleneck; noisy on a loaded machine);
- `resident_load_ratio`: loading the split onto the device with the check over without (the
  check happens there in resident mode, before the first epoch).

Without `data`, a store of random pixels is written to a temporary directory (hashing does not
depend on content). Returns a JSON-able dict; `out` also writes it.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satpipe.data.integrity import shard_digest
from satpipe.data.loader import make_loader
from satpipe.data.store import open_dataset, shard_rows, shard_slices
from satpipe.data.synthetic import write_random_dataset
from satpipe.device import resolve_device
from satpipe.train.config import TrainConfig
from satpipe.train.models import create_model
from satpipe.train.trainer import build_optimizer, train_one_epoch
from satpipe.train.variants import VARIANTS

TARGET = 0.02  # the check may cost at most 2% of an epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hash_seconds(data: str, rounds: int) -> tuple[float, int]:
    """(best seconds to digest every train shard's images and labels, bytes digested)."""
    split = open_dataset(data).split("train")
    blocks = [
        (np.asarray(split.images[sl]), np.asarray(split.labels[sl]))
        for sl in shard_slices(len(split), shard_rows(split.images))
    ]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for images, labels in blocks:
            shard_digest(images)
            shard_digest(labels)
        best = min(best, time.perf_counter() - t0)
    return best, sum(x.nbytes + y.nbytes for x, y in blocks)


class _Epochs:
    """Times epochs of one model on fresh loaders (so every epoch is a first epoch)."""

    def __init__(self, data: str, model: str, variant: str, batch_size: int, device) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.variant = VARIANTS.get(variant)
        view = open_dataset(data)
        torch.manual_seed(0)
        self.model = create_model(model, view.num_classes, view.image_shape[2]).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        config = TrainConfig(variant=variant, data=data, out="-", model=model, device=str(device))
        self.optimizer = build_optimizer(config, self.model)
        self.vcfg = config.variant_config()

    def loader(self, mode: str, verify: bool):
        return make_loader(self.data, "train", batch_size=self.batch_size, mode=mode,
                           device=self.device, verify=verify)  # fmt: skip

    def epoch(self, verify: bool) -> float:
        loader = self.loader("streaming", verify)
        _sync(self.device)
        t0 = time.perf_counter()
        train_one_epoch(self.model, loader, self.optimizer, self.variant, self.vcfg, 0,
                        amp=self.device.type == "cuda", show_progress=False)  # fmt: skip
        loader.finish_check()
        _sync(self.device)
        return time.perf_counter() - t0

    def resident_load(self, verify: bool) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        loader = self.loader("resident", verify)
        loader.finish_check()
        _sync(self.device)
        return time.perf_counter() - t0


def _alternate(fn, rounds: int) -> tuple[float, float]:
    """(best with the check, best without), measured in alternation (load drifts)."""
    with_check, without = [], []
    for r in range(rounds):
        for verify in (r % 2 == 0, r % 2 == 1):
            (with_check if verify else without).append(fn(verify))
    return min(with_check), min(without)


def bench_integrity(
    *,
    data: str | None = None,
    n_train: int = 4096,
    size: int = 32,
    rows_per_shard: int | None = 512,
    model: str = "resnet10",
    variant: str = "original",
    batch_size: int = 128,
    rounds: int = 3,
    device: str = "auto",
    out: str | None = None,
) -> dict[str, Any]:
    """Measure the in-flight data check (see the module docstring); returns the report."""
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = write_random_dataset(str(Path(tmp) / "bench.zarr"), n_train, size,
                                        rows_per_shard=rows_per_shard, seed=0)  # fmt: skip
        hash_s, hashed = _hash_seconds(data, rounds)
        epochs = _Epochs(data, model, variant, batch_size, dev)
        epochs.epoch(False)  # warm-up: kernels, allocator, page cache
        first_with, first_without = _alternate(epochs.epoch, rounds)
        load_with, load_without = _alternate(epochs.resident_load, rounds)
        split = open_dataset(data).split("train")
        rows, image, shard = len(split), list(split.images.shape[1:]), shard_rows(split.images)
    report = {
        "satpipe": {"kind": "bench", "bench": "integrity", "format": 1},
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"),
        "sizes": {
            "rows": rows,
            "image": image,
            "rows_per_shard": shard,
            "model": model,
            "variant": variant,
            "batch_size": batch_size,
            "rounds": rounds,
        },  # fmt: skip
        "hash_seconds": hash_s,
        "hash_gb_per_s": hashed / max(hash_s, 1e-12) / 1e9,
        "epoch_seconds": first_without,
        "hash_ratio": hash_s / first_without,
        "first_epoch_seconds": {"checked": first_with, "unchecked": first_without},
        "first_epoch_ratio": first_with / first_without,
        "resident_load_seconds": {"checked": load_with, "unchecked": load_without},
        "resident_load_ratio": load_with / load_without,
        "target": TARGET,
        "meets_target": hash_s / first_without <= TARGET,
    }
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
