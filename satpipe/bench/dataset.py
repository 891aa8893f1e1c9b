"""`satpipe bench dataset`: what the public Dataset costs against satpipe's own loader.

One random store pair (uint8 images, float16 one-channel maps), one shuffled epoch per call,
batches of `batch_size` on the CPU, every side timed with `alternate` in the same rounds:

- `dataset_workers`: `DataLoader(SaliencyDataset, shuffle=True, num_workers=W)`, as a user
  writes it (workers start afresh each epoch and fill their shard caches again);
- `dataset_persistent`: the same with `persistent_workers=True` (caches kept across epochs);
- `dataset_inline`: the same with no workers (per-item work only, no inter-process transfer);
- `pairloader`: the trainer's loader on the same store (resident: a gather per batch);
- `tensordataset`: `DataLoader(TensorDataset(x, s, y), shuffle=True)` of the same arrays,
  already decoded to float32 in memory: PyTorch's own per-item path without any store.

The ratios to `tensordataset` say what the store costs on top of PyTorch's per-item path; the
ratio to `pairloader` what the per-item path costs against batched gathers.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import DatasetBenchConfig
from satpipe.bench.stores import random_pair
from satpipe.bench.timing import alternate
from satpipe.core.progress import progress
from satpipe.data.dataset import SaliencyDataset
from satpipe.data.dataset_store import open_dataset
from satpipe.data.loader import make_loader
from satpipe.data.saliency_store import open_saliency
from satpipe.data.storage import now_iso

SIDES = ("dataset_workers", "dataset_persistent", "dataset_inline", "pairloader", "tensordataset")


def _epoch(loader) -> Any:
    def one(epoch: int) -> int:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        return sum(len(batch[-1]) for batch in loader)

    return one


def _loaders(data: str, sal: str, config: DatasetBenchConfig) -> dict[str, Any]:
    b, w = config.batch_size, config.workers
    ds = SaliencyDataset(data, sal)
    images = np.asarray(open_dataset(data).split("train").images[:])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    s = torch.from_numpy(np.asarray(open_saliency(sal).split("train")[:], np.float32))
    y = torch.from_numpy(np.asarray(open_dataset(data).split("train").labels[:]))
    tensors = TensorDataset(x, s.permute(0, 3, 1, 2).contiguous(), y)
    return {
        "dataset_workers": DataLoader(ds, b, shuffle=True, num_workers=w),
        "dataset_persistent": DataLoader(
            ds, b, shuffle=True, num_workers=w, persistent_workers=w > 0
        ),  # fmt: skip
        "dataset_inline": DataLoader(ds, b, shuffle=True),
        "pairloader": make_loader(data, "train", sal, batch_size=b, device="cpu"),
        "tensordataset": DataLoader(tensors, b, shuffle=True),
    }


def run(config: DatasetBenchConfig) -> dict[str, Any]:
    """img/s per side (best epoch), and the ratios of the dataset sides to the others."""
    tmp = tempfile.TemporaryDirectory(prefix="satpipe-bench-", dir=config.workdir)
    with tmp as root, progress("bench dataset", 2) as advance:
        data, sal = random_pair(root, "bench_dataset", config.rows, config.size,
                                rows_per_shard=config.rows_per_shard)  # fmt: skip
        advance()
        loaders = _loaders(data, sal, config)
        t = alternate({k: _epoch(v) for k, v in loaders.items()}, rounds=config.rounds,
                      warmup=1)  # fmt: skip
        advance()
        del loaders
    rates = {k: t.best(k) / t.min(k) for k in SIDES}
    return {
        "benchmark": "dataset", "created": now_iso(), "device": device_name("cpu"),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {"rows": config.rows, "size": config.size, "batch_size": config.batch_size,
                     "rows_per_shard": config.rows_per_shard, "workers": config.workers,
                     "rounds": config.rounds},
        "img_per_s": rates,
        "ratios": {
            "dataset_workers_over_tensordataset": rates["dataset_workers"] / rates["tensordataset"],
            "dataset_workers_over_pairloader": rates["dataset_workers"] / rates["pairloader"],
            "dataset_persistent_over_tensordataset":
                rates["dataset_persistent"] / rates["tensordataset"],
            "dataset_inline_over_tensordataset": rates["dataset_inline"] / rates["tensordataset"],
        },
        "timing": t.summary(),
    }  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """DataLoader(SaliencyDataset, W workers), fresh and persistent workers, against a
    TensorDataset of the same arrays (measurements: no target is set for them)."""
    r = report["ratios"]
    w = report["settings"]["workers"]
    return [
        headline_row(
            f"DataLoader(SaliencyDataset, {w} workers) / TensorDataset img/s",
            r["dataset_workers_over_tensordataset"], "-", None,
            "worker start and shard-cache fill every epoch, then batch transfer",
        ),
        headline_row(
            "the same, persistent workers / TensorDataset img/s",
            r["dataset_persistent_over_tensordataset"], "-", None,
            "batch transfer from the workers (shared memory), CPU cores",
        ),
    ]  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """img/s per side, then the ratios."""
    lines = [f"{k:20s} {v:10.0f} img/s" for k, v in report["img_per_s"].items()]
    lines += [f"{k:40s} {v:.3f}" for k, v in report["ratios"].items()]
    return "\n".join(lines)
