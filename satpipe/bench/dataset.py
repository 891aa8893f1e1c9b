"""`satpipe bench dataset`: what the public Dataset costs against satpipe's own loader. One
shuffled epoch per call on one random store pair, every side in the same rounds:
`DataLoader(SaliencyDataset)` with fresh workers (as users write it), persistent workers and no
workers; the trainer's PairLoader (resident); `DataLoader(TensorDataset)` of the same arrays
decoded in memory (PyTorch's own per-item path without a store).
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.stores import one_epoch
from satpipe.bench.timing import alternate
from satpipe.core.progress import progress
from satpipe.data.dataset import SaliencyDataset
from satpipe.data.dataset_store import open_dataset
from satpipe.data.loader import make_loader
from satpipe.data.saliency_store import open_saliency
from satpipe.data.storage import now_iso
from satpipe.data.synthetic import write_random_pair

SIDES = ("dataset_workers", "dataset_persistent", "dataset_inline", "pairloader", "tensordataset")


def bench_dataset(
    *, rows: int = 8192, size: int = 32, rows_per_shard: int = 1024, batch_size: int = 128,
    workers: int = 2, rounds: int = 2, workdir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """img/s per side (best of `rounds` epochs after a warm-up) on `rows` random size x size
    rows, and the ratios of the dataset sides to the others. Temporary stores go under
    `workdir` (default: a temp dir)."""
    at_least(1, rows=rows, rounds=rounds, batch_size=batch_size, size=size)
    at_least(0, workers=workers)
    tmp = tempfile.TemporaryDirectory(prefix="satpipe-bench-", dir=workdir)
    with tmp as root, progress("bench dataset", 2) as advance:
        data, sal = write_random_pair(root, "bench_dataset", rows, size,
                                      rows_per_shard=rows_per_shard)  # fmt: skip
        advance()
        loaders = _loaders(data, sal, batch_size, workers)
        t = alternate({k: one_epoch(v) for k, v in loaders.items()}, rounds=rounds, warmup=1)
        advance()
        del loaders
    r = {k: t.best(k) / t.min(k) for k in SIDES}
    return {
        **report_head("dataset"), "created": now_iso(), "threads": torch.get_num_threads(),
        "settings": {"rows": rows, "size": size, "batch_size": batch_size,
                     "rows_per_shard": rows_per_shard, "workers": workers, "rounds": rounds},
        "img_per_s": r,
        "ratios": {
            "dataset_workers_over_tensordataset": r["dataset_workers"] / r["tensordataset"],
            "dataset_workers_over_pairloader": r["dataset_workers"] / r["pairloader"],
            "dataset_persistent_over_tensordataset": r["dataset_persistent"] / r["tensordataset"],
            "dataset_inline_over_tensordataset": r["dataset_inline"] / r["tensordataset"],
        },
        "timing": t.summary(),
    }  # fmt: skip


def _loaders(data: str, sal: str, b: int, w: int) -> dict[str, Any]:
    ds = SaliencyDataset(data, sal)
    split = open_dataset(data).split("train")
    x = torch.from_numpy(np.asarray(split.images[:])).permute(0, 3, 1, 2).float().div_(255)
    s = torch.from_numpy(np.asarray(open_saliency(sal).split("train")[:], np.float32))
    y = torch.from_numpy(np.asarray(split.labels[:]))
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


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """DataLoader(SaliencyDataset, W workers), fresh and persistent workers, against a
    TensorDataset of the same arrays (measurements: no target is set for them)."""
    r, w = report["ratios"], report["settings"]["workers"]
    return [
        headline_row(
            f"DataLoader(SaliencyDataset, {w} workers) / TensorDataset img/s",
            r["dataset_workers_over_tensordataset"], "-",
            "worker start and shard-cache fill every epoch, then batch transfer",
        ),
        headline_row(
            "the same, persistent workers / TensorDataset img/s",
            r["dataset_persistent_over_tensordataset"], "-",
            "batch transfer from the workers (shared memory), CPU cores",
        ),
    ]  # fmt: skip


BENCHMARKS.register("dataset", Part(
    bench_dataset, headline,
    "img/s of DataLoader(SaliencyDataset, 2 workers) vs the PairLoader vs a TensorDataset",
    shared=("size", "rows_per_shard", "batch_size"),
    options={
        "rows": "Rows of the random store.",
        "workers": "DataLoader workers of the SaliencyDataset sides.",
        "rounds": "Timed epochs per side (after a warm-up), alternated.",
    },
    quick={"rows": 2048, "rows_per_shard": 512, "rounds": 1},
))  # fmt: skip
