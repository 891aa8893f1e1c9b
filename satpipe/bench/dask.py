"""`satpipe bench dask`: saliency img/s on dask clusters of 1 and 2 CPU workers (target
2/1 >= 1.8 on 2 cores). Both clusters are started and warmed (imports, model in the worker
cache) before the timed runs, which alternate between them: the figure is the executor's
scaling, not process start-up.
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.stores import untrained_checkpoint
from satpipe.bench.timing import alternate
from satpipe.core.cluster import dask_client
from satpipe.core.errors import SatpipeError
from satpipe.data.synthetic import write_random_dataset
from satpipe.train.config import check_model_options

TARGET = 1.8


def bench_dask(
    *, method: str = "smoothgrad", model: str = "smallcnn", n_images: int = 2048,
    rows_per_shard: int = 128, threads_per_worker: int = 1, workers: tuple[int, ...] = (1, 2),
    params: dict[str, Any] | None = None, image_size: int = 32, batch_size: int = 64,
    rounds: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """img/s of `method` (params None: SmoothGrad at 10 samples) on `n_images` random images
    per cluster size in `workers` (the first and last compared), `rounds` timed runs each."""
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    if len(workers) < 2:
        raise SatpipeError(f"dask bench: two worker counts to compare, got {workers}")
    at_least(1, workers=min(workers), n_images=n_images)
    check_model_options(model, None, None)
    params = dict(params or ({"samples": 10} if method == "smoothgrad" else {}))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as clusters:
        ckpt = untrained_checkpoint(tmp, model)
        data = write_random_dataset(f"{tmp}/data.zarr", n_images, image_size,
                                    rows_per_shard=rows_per_shard)  # fmt: skip
        warm = write_random_dataset(f"{tmp}/warm.zarr", rows_per_shard, image_size,
                                    rows_per_shard=rows_per_shard)  # fmt: skip
        sides = {}
        for n in workers:
            with warnings.catch_warnings():
                # Each scheduler serves its HTTP routes on :8787 by default; the second cluster
                # alive at once takes another port, which distributed warns about.
                warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
                client = clusters.enter_context(dask_client(workers=n))
            client.run(torch.set_num_threads, threads_per_worker)

            def saliency(source: str, out: str, address=client.scheduler.address) -> None:
                compute_saliency(SaliencyConfig(
                    method=method, params=params, data=source, out=str(Path(tmp) / out),
                    model=ckpt, batch_size=batch_size, device="cpu", scheduler=address,
                ))  # fmt: skip

            for k in range(n):  # one warm-up shard per worker (dask may pick any)
                saliency(warm, f"warm-{n}-{k}.zarr")
            sides[str(n)] = lambda i, n=n, fn=saliency: fn(data, f"sal-{n}-{i}.zarr")
        timings = alternate(sides, rounds=rounds)
    best = {n: timings.min(n) for n in sides}
    results = {n: {"seconds": round(s, 3), "img_s": round(n_images / s, 2)}
               for n, s in best.items()}  # fmt: skip
    ratio = results[str(workers[-1])]["img_s"] / results[str(workers[0])]["img_s"]
    return {
        **report_head("dask"), "method": method, "params": params, "model": model,
        "n_images": n_images, "image_size": image_size, "rows_per_shard": rows_per_shard,
        "threads_per_worker": threads_per_worker, "workers": results, "ratio": round(ratio, 3),
        "target": f">= {TARGET} (2 workers vs 1 on 2 cores)", "passed": ratio >= TARGET,
        "timing": timings.summary(),
    }  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The 2-worker / 1-worker img/s ratio."""
    return [headline_row(
        "saliency img/s, dask 2 workers / 1 worker (CPU)", report["ratio"], f">= {TARGET}",
        "cores: one torch thread per worker; shards are independent", report["passed"],
    )]  # fmt: skip


BENCHMARKS.register("dask", Part(
    bench_dask, headline,
    "saliency img/s on a CPU dask cluster of 2 workers vs 1",
    shared=("model",),
    options={
        "method": "Saliency method to run.",
        "n_images": "Images per timed run.",
        "rows_per_shard": "Shard rows (dask tasks).",
        "threads_per_worker": "torch threads per worker.",
    },
    choices={"method": "satpipe.pipeline.methods:METHODS"},
    quick={"n_images": 256, "rows_per_shard": 32},
))  # fmt: skip
