"""`satpipe bench dask`: saliency throughput on a dask cluster of 1 and of 2 CPU workers, torch
threads pinned to `threads_per_worker` in each, and the ratio (target >= 1.8 on 2 cores).

Both clusters are started and warmed (imports, model loaded into the worker cache) by one-shard
runs before the timed runs join them by address, so the figure is the executor's scaling, not
process start-up; the timed runs alternate between the clusters.
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from satpipe.bench import headline_row
from satpipe.bench.config import DaskBenchConfig
from satpipe.bench.stores import random_dataset, untrained_checkpoint
from satpipe.bench.timing import alternate
from satpipe.core.cluster import dask_client

TARGET = 1.8


def _params(config: DaskBenchConfig) -> dict[str, Any]:
    if config.params:
        return dict(config.params)
    return {"samples": 10} if config.method == "smoothgrad" else {}


def run(config: DaskBenchConfig) -> dict[str, Any]:
    """img/s per cluster size (`config.workers`, the first and last compared) as a report."""
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    params = _params(config)
    size, shard = config.image_size, config.rows_per_shard
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as clusters:
        ckpt = untrained_checkpoint(tmp, config.model)
        data = random_dataset(tmp, "data", config.n_images, size, rows_per_shard=shard)
        warm = random_dataset(tmp, "warm", shard, size, rows_per_shard=shard)
        sides = {}
        for n in config.workers:
            with warnings.catch_warnings():
                # Each scheduler serves its HTTP routes on :8787 by default; the second cluster
                # alive at once takes another port, which distributed warns about.
                warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
                client = clusters.enter_context(dask_client(workers=n))
            client.run(torch.set_num_threads, config.threads_per_worker)

            def saliency(source: str, out: str, address=client.scheduler.address) -> None:
                compute_saliency(SaliencyConfig(
                    method=config.method, params=params, data=source, out=str(Path(tmp) / out),
                    model=ckpt, batch_size=config.batch_size, device="cpu", scheduler=address,
                ))  # fmt: skip

            for k in range(n):  # one warm-up shard per worker (dask may pick any)
                saliency(warm, f"warm-{n}-{k}.zarr")
            sides[str(n)] = lambda i, n=n, fn=saliency: fn(data, f"sal-{n}-{i}.zarr")
        timings = alternate(sides, rounds=config.rounds)
    best = {n: timings.min(n) for n in sides}
    results = {n: {"seconds": round(s, 3), "img_s": round(config.n_images / s, 2)}
               for n, s in best.items()}  # fmt: skip
    lo, hi = str(config.workers[0]), str(config.workers[-1])
    ratio = results[hi]["img_s"] / results[lo]["img_s"]
    return {
        "method": config.method,
        "params": params,
        "model": config.model,
        "n_images": config.n_images,
        "image_size": size,
        "rows_per_shard": shard,
        "threads_per_worker": config.threads_per_worker,
        "workers": results,
        "ratio": round(ratio, 3),
        "target": f">= {TARGET} (2 workers vs 1 on 2 cores)",
        "passed": ratio >= TARGET,
        "timing": timings.summary(),
    }


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The 2-worker / 1-worker img/s ratio."""
    return [headline_row(
        "saliency img/s, dask 2 workers / 1 worker (CPU)", report["ratio"], f">= {TARGET}",
        report["passed"], "cores: one torch thread per worker; shards are independent",
    )]  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """img/s per cluster size, then the ratio and its target."""
    lines = [f"{n} worker(s): {row['img_s']:.1f} img/s" for n, row in report["workers"].items()]
    lines.append(f"ratio 2/1 {report['ratio']:.2f} (target {report['target']})")
    return "\n".join(lines)
