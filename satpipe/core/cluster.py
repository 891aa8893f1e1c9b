"""dask.distributed set-up shared by the saliency runner, `reproduce` and the benchmarks.

`dask_client(workers=N)` starts a LocalCluster of N single-threaded worker processes (one per
GPU when asked for GPUs, with dask-cuda's LocalCUDACluster when it is installed, so each worker
is pinned to its own device); `dask_client(scheduler=ADDRESS)` joins an existing cluster.
Either way the client, and a cluster started here, are closed when the block ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from satpipe.core.errors import SatpipeError

# For processes that share the cores: one BLAS/OpenMP thread each, instead of fighting.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Set in the workers of a cluster that gave each worker its own GPU as cuda:0 (dask-cuda).
PINNED_ENV = "SATPIPE_WORKER_GPU_PINNED"


@contextmanager
def dask_client(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    gpus: int = 0,
    env: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """A dask Client on `scheduler`, or on a new LocalCluster of `workers` processes.

    gpus > 0: at most one worker per GPU (LocalCUDACluster when dask-cuda is installed).
    env: environment variables of the local workers. Unreachable scheduler or workers < 1:
    one-line SatpipeError.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise SatpipeError(f"cannot reach dask scheduler {scheduler} ({exc})") from exc
    else:
        if workers is None or workers < 1:
            raise SatpipeError(f"--workers must be >= 1, got {workers}")
        n = max(1, min(workers, gpus)) if gpus else workers
        cluster = _cuda_cluster(n, env) if gpus else None
        if cluster is None:
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                env=dict(env or {}),
            )  # fmt: skip
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _cuda_cluster(n: int, env: Mapping[str, str] | None = None):
    """dask-cuda's LocalCUDACluster of n workers (None without dask-cuda), each worker with
    `env` and PINNED_ENV besides the CUDA_VISIBLE_DEVICES that dask-cuda rotates per worker
    (its own `env` option replaces the whole environment mapping, so it is merged here)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return None
    extra = {**dict(env or {}), PINNED_ENV: "1"}

    class _Cluster(LocalCUDACluster):
        def new_worker_spec(self):
            specs = super().new_worker_spec()
            for spec in specs.values():
                options = spec.setdefault("options", {})
                options["env"] = {**extra, **dict(options.get("env") or {})}
            return specs

    return _Cluster(n_workers=n, threads_per_worker=1, dashboard_address=None)


def worker_device(device: str) -> str:
    """The device a dask worker process computes on, given the run's `device` string.

    Only a bare "cuda" is mapped (cpu and an explicit cuda:N are kept). A worker whose GPU was
    chosen by its launcher uses cuda:0: dask-cuda rotates CUDA_VISIBLE_DEVICES so that each
    worker's first visible device is its own (satpipe's LocalCUDACluster marks its workers
    with PINNED_ENV; a joined dask-cuda worker is named by its GPU, the first entry of its
    CUDA_VISIBLE_DEVICES). Workers of a plain LocalCluster (named 0, 1, ...) all see every
    GPU: worker k takes cuda:(k mod the GPU count). Outside a worker: `device` unchanged.
    """
    if device != "cuda":
        return device
    if os.environ.get(PINNED_ENV) == "1":
        return "cuda:0"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.split(",")[0].strip() == name:
        return "cuda:0"
    import torch

    count = torch.cuda.device_count()
    if count < 2 or not name.isdigit():
        return device
    return f"cuda:{int(name) % count}"


def run_tasks(
    client: Any,
    fn: Callable[..., Any],
    tasks: Sequence[Any],
    *,
    key: Callable[[Any], str] | None = None,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """Run `fn(task)` for every task on the cluster; `on_done(index, result)` is called here as
    each finishes (in completion order); returns the results in task order. The first task
    that fails raises its error here."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(fn, t, key=f"{key(t)}-{token}" if key else None, pure=False) for t in tasks
    ]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(tasks)
    for future in as_completed(futures):
        i = index[future.key]
        results[i] = future.result()
        if on_done is not None:
            on_done(i, results[i])
    return results
