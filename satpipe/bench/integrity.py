"""`satpipe bench integrity`: what checking the data in flight costs (issue 16), the shard
digests of the first epoch.

The trainer checks each shard of images and labels against the sha256 recorded when the
dataset store was written, as the first epoch reads it (satpipe.data.integrity). This measures
that cost three ways, each a ratio within one run:

- `hash_ratio`: the sha256 of every shard (the check's whole computation, on rows already in
  memory) over one training epoch of `variant` on the same data: the cost if it were paid on
  the training thread, which it is not (`target` 0.02);
- `first_epoch_ratio`: a streaming first epoch with the check over one without, alternated
  `rounds` times, best of each: what a run pays (reader threads hash while the device trains,
  so it is near 1 unless reading is the bottleneck; noisy on a loaded machine; loaders are made
  outside the timer);
- `resident_load_ratio`: loading the split onto the device with the check over without (the
  check happens there in resident mode, before the first epoch).

Both with/without pairs are timed with `alternate` in mirrored rounds (checked, unchecked, then
unchecked, checked), best of each. Without `data`, a store of random pixels is written to a
temporary directory (hashing does not depend on content).

It also times what readers check before trusting a file (satpipe.bench.trust): a checkpoint's
digest (a ResNet-50-size checkpoint of random tensors, loaded with and without the check) and
a store's metadata (as written, and a store claiming 10^9 rows, refused). `--no-epochs` times
only those.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import IntegrityBenchConfig
from satpipe.bench.timing import alternate
from satpipe.bench.trust import checkpoint_costs, metadata_costs
from satpipe.core.device import resolve_device
from satpipe.core.version import __version__
from satpipe.data.dataset_store import open_dataset
from satpipe.data.integrity import shard_digest
from satpipe.data.loader import make_loader
from satpipe.data.storage import shard_rows, shard_slices
from satpipe.data.synthetic import write_random_dataset
from satpipe.train.config import TrainConfig
from satpipe.train.models import create_model
from satpipe.train.trainer import build_optimizer, train_one_epoch
from satpipe.train.variants import VARIANTS

TARGET = 0.02  # the check may cost at most 2% of an epoch
SIDES = {"checked": True, "unchecked": False}  # the timed sides: verify on / off


def _hash_seconds(data: str, rounds: int) -> tuple[float, int]:
    """(best seconds to digest every train shard's images and labels, bytes digested)."""
    split = open_dataset(data).split("train")
    blocks = [
        (np.asarray(split.images[sl]), np.asarray(split.labels[sl]))
        for sl in shard_slices(len(split), shard_rows(split.images))
    ]

    def digest(_i: int) -> None:
        for images, labels in blocks:
            shard_digest(images)
            shard_digest(labels)

    best = alternate({"hash": digest}, rounds=rounds).min("hash")
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

    def epoch(self, loader) -> None:
        """One training epoch on `loader` (a fresh one: its first epoch), check finished."""
        train_one_epoch(self.model, loader, self.optimizer, self.variant, self.vcfg, 0,
                        amp=self.device.type == "cuda", show_progress=False)  # fmt: skip
        loader.finish_check()

    def first_epochs(self, rounds: int):
        """Timings of "checked" and "unchecked" first epochs, loaders made outside the timer."""
        loaders: dict[str, Any] = {}

        def prepare(side: str, verify: bool):
            return lambda _i: loaders.__setitem__(side, self.loader("streaming", verify))

        return alternate(
            {side: lambda _i, side=side: self.epoch(loaders.pop(side)) for side in SIDES},
            device=self.device, rounds=rounds, mirror=True,
            prepare={side: prepare(side, verify) for side, verify in SIDES.items()},
        )  # fmt: skip

    def resident_loads(self, rounds: int):
        """Timings of "checked" and "unchecked" resident loads (the check runs there)."""

        def load(verify: bool):
            return lambda _i: self.loader("resident", verify).finish_check()

        sides = {side: load(verify) for side, verify in SIDES.items()}
        return alternate(sides, device=self.device, rounds=rounds, mirror=True)


def run(config: IntegrityBenchConfig) -> dict[str, Any]:
    """Measure the in-flight data check (see the module docstring); returns the report."""
    dev = resolve_device(config.device)
    rounds = config.rounds
    trust = {
        "checkpoint": checkpoint_costs(config.checkpoint_mb, rounds),
        "metadata": metadata_costs(max(rounds, 5)),
    }
    if not config.epochs:
        return {
            "satpipe": {"kind": "bench", "bench": "integrity", "format": 1},
            "benchmark": "integrity", "satpipe_version": __version__, "torch": torch.__version__,
            "device": device_name(dev), "sizes": {"rounds": rounds}, **trust,
        }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = config.data
        if data is None:
            data = write_random_dataset(
                str(Path(tmp) / "bench.zarr"), config.n_train, config.size,
                rows_per_shard=config.rows_per_shard, seed=0,
            )  # fmt: skip
        hash_s, hashed = _hash_seconds(data, rounds)
        epochs = _Epochs(data, config.model, config.variant, config.batch_size, dev)
        epochs.epoch(epochs.loader("streaming", False))  # warm-up: kernels, allocator, cache
        first = epochs.first_epochs(rounds)
        load = epochs.resident_loads(rounds)
        split = open_dataset(data).split("train")
        rows, image, shard = len(split), list(split.images.shape[1:]), shard_rows(split.images)
    first_with, first_without = first.min("checked"), first.min("unchecked")
    load_with, load_without = load.min("checked"), load.min("unchecked")
    return {
        "satpipe": {"kind": "bench", "bench": "integrity", "format": 1},
        "benchmark": "integrity",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "device": device_name(dev),
        "sizes": {
            "rows": rows,
            "image": image,
            "rows_per_shard": shard,
            "model": config.model,
            "variant": config.variant,
            "batch_size": config.batch_size,
            "rounds": rounds,
        },
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
        "timing": {"first_epoch": first.summary(), "resident_load": load.summary()},
        **trust,
    }


def _trust_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    ckpt, meta = report["checkpoint"], report["metadata"]
    mb = ckpt["bytes"] / 1e6
    return [
        headline_row(
            f"checkpoint load ({mb:.0f} MB), digest checked / unchecked",
            ckpt["checked_over_unchecked"], "- (informative)", None,
            f"digest {ckpt['digest_s']:.3f} s; one read of the file (sha256) "
            f"{ckpt['file_sha256_s']:.3f} s",
        ),
        headline_row(
            "metadata check, store claiming 10^9 rows (ms)", 1e3 * meta["refuse_claim_s"],
            "milliseconds", meta["refuse_claim_s"] < 0.1,
            f"honest store {1e3 * meta['check_honest_s']:.1f} ms; `store info` refusal "
            f"{1e3 * meta['store_info_refuse_s']:.1f} ms",
        ),
    ]  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The check's computation over an epoch (target 2%), what a first epoch and a resident
    load pay for it; the checkpoint digest and metadata checks."""
    if "first_epoch_ratio" not in report:
        return _trust_rows(report)
    first, load = report["first_epoch_ratio"], report["resident_load_ratio"]
    return [
        headline_row(
            "data check, sha256 of every shard / one epoch", report["hash_ratio"],
            f"<= {TARGET}", report["meets_target"],
            "sha256 throughput against the epoch's compute (hashed off the training thread)",
        ),
        headline_row(
            "first epoch time, data checked / unchecked", first, "~ 1 (informative)", None,
            "reader threads hash while the model trains; 1 unless reading is the bottleneck",
        ),
        headline_row(
            "resident load time, data checked / unchecked", load, "- (informative)", None,
            "sha256 of every shard, paid once before the first epoch",
        ),
        *_trust_rows(report),
    ]  # fmt: skip


def _format_trust(report: dict[str, Any]) -> list[str]:
    ckpt, meta = report["checkpoint"], report["metadata"]
    return [
        f"checkpoint {ckpt['bytes'] / 1e6:.1f} MB ({ckpt['tensors']} tensors): load "
        f"{ckpt['load_unchecked_s']:.3f} s unchecked, {ckpt['load_checked_s']:.3f} s checked "
        f"(= {ckpt['checked_over_unchecked']:.2f}x); digest {ckpt['digest_s']:.3f} s, "
        f"file sha256 {ckpt['file_sha256_s']:.3f} s",
        f"metadata: store as written {1e3 * meta['check_honest_s']:.2f} ms, claiming "
        f"{meta['claimed_rows']:.0e} rows refused in {1e3 * meta['refuse_claim_s']:.2f} ms "
        f"(store info {1e3 * meta['store_info_refuse_s']:.2f} ms)",
    ]


def format_report(report: dict[str, Any]) -> str:
    """The hash cost against an epoch, then the two checked / unchecked ratios, then the
    checkpoint digest and metadata checks."""
    if "first_epoch_seconds" not in report:
        return "\n".join(_format_trust(report))
    sizes, first = report["sizes"], report["first_epoch_seconds"]
    load = report["resident_load_seconds"]
    return "\n".join([
        f"{sizes['rows']} rows {'x'.join(map(str, sizes['image']))}, {sizes['model']} "
        f"{sizes['variant']}: sha256 {report['hash_seconds']:.3f} s "
        f"({report['hash_gb_per_s']:.2f} GB/s) / epoch {report['epoch_seconds']:.2f} s = "
        f"{report['hash_ratio']:.4f} (target <= {report['target']})",
        f"first epoch checked {first['checked']:.2f} s / unchecked {first['unchecked']:.2f} s "
        f"= {report['first_epoch_ratio']:.3f}",
        f"resident load checked {load['checked']:.3f} s / unchecked {load['unchecked']:.3f} s "
        f"= {report['resident_load_ratio']:.3f}",
        *_format_trust(report),
    ])  # fmt: skip
