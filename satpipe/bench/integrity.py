"""`satpipe bench integrity`: what checking data and checkpoints costs, as ratios within one
run: the sha256 of every shard over one training epoch (<= 0.02: the first epoch's check, if it
ran on the training thread), a streaming first epoch and a resident load with the check over
without (alternated in mirrored rounds, loaders made outside the timer); a checkpoint's digest
(`load_checkpoint` against `torch.load` alone and one sha256 read of the file) and a store's
metadata check (as written, and claiming 10^9 rows: refused). `epochs=False`: only the last two.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.stores import epoch_runner, untrained_model
from satpipe.bench.timing import alternate, time_once
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice
from satpipe.data.dataset_store import open_dataset
from satpipe.data.inspect import store_info
from satpipe.data.integrity import shard_digest
from satpipe.data.loader import LoaderOptions, make_loader
from satpipe.data.metadata import check_metadata
from satpipe.data.storage import shard_rows, shard_slices
from satpipe.data.synthetic import write_random_dataset
from satpipe.train.checkpoint import file_sha256, load_checkpoint, save_checkpoint, state_digest
from satpipe.train.config import TrainConfig, check_model_options

TARGET = 0.02  # the check may cost at most 2% of an epoch
SIDES = {"checked": True, "unchecked": False}  # the timed sides: verify on / off
CLAIMED_ROWS = 10**9
_VARIANTS = "satpipe.train.variants:VARIANTS"


def bench_integrity(
    *, data: str | None = None, n_train: int = 4096, size: int = 32,
    rows_per_shard: int | None = 512, model: str = "resnet10", variant: str = "original",
    batch_size: int = 128, rounds: int = 3, device: str = "auto",
    checkpoint_mb: float = 102.2, epochs: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The report (see the module docstring): on `data`, or on `n_train` random size x size
    rows in a temporary store; epochs of an untrained `model` trained as `variant`; every
    figure the best of `rounds`. checkpoint_mb: MB of the timed checkpoint."""
    if checkpoint_mb <= 0:
        raise SatpipeError(f"--checkpoint-mb must be positive, got {checkpoint_mb}")
    variant = check_choice(variant, _VARIANTS, "variant")
    check_model_options(model, None, None)
    at_least(1, rows=n_train, rounds=rounds, batch_size=batch_size)
    dev = resolve_device(device)
    head = {**report_head("integrity", dev),
            "satpipe": {"kind": "bench", "bench": "integrity", "format": 1}}  # fmt: skip
    trust = {"checkpoint": checkpoint_costs(checkpoint_mb, rounds),
             "metadata": metadata_costs(max(rounds, 5))}  # fmt: skip
    if not epochs:
        return {**head, "sizes": {"rounds": rounds}, **trust}
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = write_random_dataset(f"{tmp}/bench.zarr", n_train, size,
                                        rows_per_shard=rows_per_shard)  # fmt: skip
        split = open_dataset(data).split("train")
        rows, image, shard = len(split), list(split.images.shape[1:]), shard_rows(split.images)
        blocks = [(np.asarray(split.images[sl]), np.asarray(split.labels[sl]))
                  for sl in shard_slices(rows, shard)]  # fmt: skip
        digest_all = lambda: [shard_digest(a) for block in blocks for a in block]  # noqa: E731
        hash_s = time_once(digest_all, rounds=rounds)
        first, load = _checked_epochs(data, model, variant, batch_size, dev, rounds)
    hashed = sum(x.nbytes + y.nbytes for x, y in blocks)
    first_with, first_without = first.min("checked"), first.min("unchecked")
    load_with, load_without = load.min("checked"), load.min("unchecked")
    return {
        **head,
        "sizes": {"rows": rows, "image": image, "rows_per_shard": shard, "model": model,
                  "variant": variant, "batch_size": batch_size, "rounds": rounds},
        "hash_seconds": hash_s, "hash_gb_per_s": hashed / max(hash_s, 1e-12) / 1e9,
        "epoch_seconds": first_without, "hash_ratio": hash_s / first_without,
        "first_epoch_seconds": {"checked": first_with, "unchecked": first_without},
        "first_epoch_ratio": first_with / first_without,
        "resident_load_seconds": {"checked": load_with, "unchecked": load_without},
        "resident_load_ratio": load_with / load_without,
        "target": TARGET, "meets_target": hash_s / first_without <= TARGET,
        "timing": {"first_epoch": first.summary(), "resident_load": load.summary()},
        **trust,
    }  # fmt: skip


def _checked_epochs(data: str, model: str, variant: str, batch_size: int, dev, rounds: int):
    """(Timings of "checked" and "unchecked" streaming first epochs, Timings of resident loads
    with and without the check), after an untimed warm-up epoch; every epoch runs on a fresh
    loader, so each is a first epoch."""
    view = open_dataset(data)
    net = untrained_model(model, dev, view.num_classes, view.image_shape[2])
    config = TrainConfig(variant=variant, data=data, out="-", model=model, device=str(dev))
    train = epoch_runner(net, config, variant, dev, show_progress=False)

    def loader(mode: str, verify: bool):
        options = LoaderOptions(batch_size=batch_size, mode=mode, device=dev, verify=verify)
        return make_loader(data, "train", options=options)

    def epoch(ld) -> None:  # one training epoch on a fresh loader, its check finished
        train(ld, 0)
        ld.finish_check()

    epoch(loader("streaming", False))  # warm-up: kernels, allocator, page cache
    made: dict[str, Any] = {}
    first = alternate(
        {side: lambda _i, side=side: epoch(made.pop(side)) for side in SIDES}, device=dev,
        rounds=rounds, mirror=True,
        prepare={side: lambda _i, s=side, ok=ok: made.__setitem__(s, loader("streaming", ok))
                 for side, ok in SIDES.items()},
    )  # fmt: skip
    loads = {side: lambda _i, ok=ok: loader("resident", ok).finish_check()
             for side, ok in SIDES.items()}  # fmt: skip
    return first, alternate(loads, device=dev, rounds=rounds, mirror=True)


def _random_state(mb: float) -> dict[str, Any]:
    """A checkpoint body of random float32 tensors totalling `mb` MB, in ResNet-like pieces
    (many small tensors and a few large ones: per-tensor costs count too)."""
    gen = torch.Generator().manual_seed(0)
    left, tensors, i = int(mb * 1e6 / 4), {}, 0
    sizes = [64 * 64 * 9, 128 * 128 * 9, 256 * 256 * 9, 512 * 512 * 9, 2048 * 512, 256, 512]
    while left > 0:
        n = min(left, sizes[i % len(sizes)])
        tensors[f"layer{i}.weight"] = torch.randn(n, generator=gen)
        left, i = left - n, i + 1
    return {"model": {"arch": "bench", "num_classes": 1000, "in_channels": 3,
                      "state_dict": tensors}}  # fmt: skip


def checkpoint_costs(mb: float, rounds: int) -> dict[str, Any]:
    """Best-of-`rounds` seconds to load a checkpoint of `mb` MB with `torch.load` alone, the
    digest of what it loaded, `load_checkpoint` (load + digest + finite weights) and one sha256
    read of the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        save_checkpoint(path, _random_state(mb))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        unchecked = time_once(lambda: torch.load(path, map_location="cpu", weights_only=True),
                              rounds=rounds)  # fmt: skip
        digest = time_once(lambda: state_digest(loaded), rounds=rounds)
        checked = time_once(lambda: load_checkpoint(path), rounds=rounds)
        read = time_once(lambda: file_sha256(path), rounds=rounds)
        size, tensors = path.stat().st_size, len(loaded["model"]["state_dict"])
    return {
        "bytes": size, "tensors": tensors, "load_unchecked_s": unchecked, "digest_s": digest,
        "load_checked_s": checked, "file_sha256_s": read,
        "checked_over_unchecked": checked / unchecked, "digest_over_file_read": digest / read,
    }  # fmt: skip


def metadata_costs(rounds: int) -> dict[str, Any]:
    """Seconds to check a store's metadata as written, and to refuse (check_metadata, `store
    info`) the same store whose images and labels claim 10^9 rows."""

    def refused(fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            try:
                fn()
            except SatpipeError:
                return
            raise RuntimeError("a store claiming 10^9 rows was not refused")

        return call

    with tempfile.TemporaryDirectory() as tmp:
        store = write_random_dataset(f"{tmp}/d.zarr", 256, 16, rows_per_shard=64)
        honest = time_once(lambda: check_metadata(store), rounds=rounds)
        for node in ("train/images", "train/labels"):
            meta_path = Path(store) / node / "zarr.json"
            meta = json.loads(meta_path.read_text())
            meta["shape"][0] = CLAIMED_ROWS
            meta_path.write_text(json.dumps(meta))
        crafted = time_once(refused(lambda: check_metadata(store)), rounds=rounds)
        info = time_once(refused(lambda: store_info(store)), rounds=rounds)
    return {"claimed_rows": CLAIMED_ROWS, "check_honest_s": honest, "refuse_claim_s": crafted,
            "store_info_refuse_s": info}  # fmt: skip


def _trust_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    ckpt, meta = report["checkpoint"], report["metadata"]
    return [
        headline_row(
            f"checkpoint load ({ckpt['bytes'] / 1e6:.0f} MB), digest checked / unchecked",
            ckpt["checked_over_unchecked"], "- (informative)",
            f"digest {ckpt['digest_s']:.3f} s; one read of the file (sha256) "
            f"{ckpt['file_sha256_s']:.3f} s",
        ),
        headline_row(
            "metadata check, store claiming 10^9 rows (ms)", 1e3 * meta["refuse_claim_s"],
            "milliseconds",
            f"honest store {1e3 * meta['check_honest_s']:.1f} ms; `store info` refusal "
            f"{1e3 * meta['store_info_refuse_s']:.1f} ms", meta["refuse_claim_s"] < 0.1,
        ),
    ]  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The check's computation over an epoch (target 2%), what a first epoch and a resident
    load pay for it; the checkpoint digest and metadata checks."""
    if "first_epoch_ratio" not in report:
        return _trust_rows(report)
    return [
        headline_row(
            "data check, sha256 of every shard / one epoch", report["hash_ratio"],
            f"<= {TARGET}",
            "sha256 throughput against the epoch's compute (hashed off the training thread)",
            report["meets_target"],
        ),
        headline_row(
            "first epoch time, data checked / unchecked", report["first_epoch_ratio"],
            "~ 1 (informative)",
            "reader threads hash while the model trains; 1 unless reading is the bottleneck",
        ),
        headline_row(
            "resident load time, data checked / unchecked", report["resident_load_ratio"],
            "- (informative)", "sha256 of every shard, paid once before the first epoch",
        ),
        *_trust_rows(report),
    ]  # fmt: skip


BENCHMARKS.register("integrity", Part(
    bench_integrity, headline,
    "cost of the in-flight data check: shard sha256 / epoch, first epoch checked / unchecked",
    shared=("data", "n_train", "size", "rows_per_shard", "model", "batch_size", "device"),
    options={
        "variant": "Variant of the timed epochs.",
        "rounds": "Timed rounds, with and without the check alternated.",
        "checkpoint_mb": "MB of random float32 tensors in the checkpoint whose digest check is "
                         "timed (102.2: a ResNet-50's 25.6M parameters).",
        "epochs": "Time the data check against epochs (--no-epochs: only the checkpoint digest "
                  "and the metadata checks).",
    },
    choices={"variant": _VARIANTS},
    quick={"n_train": 512, "rows_per_shard": 128, "model": "smallcnn", "rounds": 1,
           "checkpoint_mb": 10},
    # 7 resnet10 epochs of 4096 rows are minutes on 2 cores; the figures are ratios to an
    # epoch, and hashing and an epoch both scale with the rows.
    cpu={"n_train": 1024, "rows_per_shard": 256},
))  # fmt: skip
