"""The shard runner: dataset store + source model -> saliency store, resumable, on dask or not.

`compute_saliency(SaliencyConfig(...))` plans the shards of the output store, skips those
already marked done, computes the rest (one task per shard), and marks the store complete.

Trust: the dataset's inventory is checked when the run opens it, and each task checks the
rows it reads against the shard digests recorded when the dataset store was written, before
it computes anything, so a shard is never marked done from data that differs. Shards marked
done whose maps were lost (deleted, or missing from a copy) are computed again. A write that
fails (disk full, read-only target) stops the run with one line naming the store and the
shard; that shard is not marked done, and a rerun resumes.

Determinism: each shard draws its randomness from a generator seeded by (seed, split, shard),
never from a stream shared across shards, so on a CPU the bytes of a shard do not depend on
which worker ran it, in which order, or how many runs it took to finish the store. On a GPU
that holds only with `deterministic` (deterministic cuDNN/cuBLAS kernels, no autotuning) and
workers on GPUs of one model; without it the last bits vary from run to run (see docs/gpu.md).
What does change the bytes is recorded in the store and checked on resume: method, params
(device-dependent sizes filled in), normalisation, seed, source checkpoint, dataset, batch size,
bf16 autocast and `deterministic` when set (CPU and GPU results also differ in the last bits,
and their noise generators draw different numbers).

Executors: in-process (default), or dask.distributed with `workers=N` (a LocalCluster of N
single-threaded processes, or one worker per GPU; dask-cuda's LocalCUDACluster when it is
installed, each worker on its own GPU: see `satpipe.core.cluster.worker_device`) or
`scheduler="tcp://..."` (an existing cluster whose workers see the same files).
Each worker process loads the model once and keeps it in `_MODEL_CACHE` for later tasks.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.core.cluster import dask_client, run_tasks, worker_device
from satpipe.core.defaults import batch_size as default_batch_size
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.precision import configure
from satpipe.core.progress import progress
from satpipe.core.seeding import MASK63, seed_words
from satpipe.data.dataset_store import open_dataset
from satpipe.data.loader import to_float_batch
from satpipe.data.outputs import refuse_chained, refuse_inputs, store_lock
from satpipe.data.saliency_store import (
    done_shards,
    mark_complete,
    open_saliency_for_write,
    saliency_attrs,
    shard_plan,
    unmark_lost_shards,
    write_shard,
)
from satpipe.data.storage import ATTR, SPLITS, open_group, shard_rows, store_exists
from satpipe.data.streaming import read_checked
from satpipe.pipeline.config import SaliencyConfig
from satpipe.pipeline.methods import Method, get_method
from satpipe.pipeline.normalize import normalize
from satpipe.train.models import load_model, probe_model

__all__ = ["SaliencyConfig", "compute_saliency", "run_shard", "shard_seed", "state_dict_sha256"]


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to compute one shard (plain data, pickles cheaply)."""

    data: str
    out: str
    storage_options: dict[str, Any]
    split: str
    shard: int
    start: int
    stop: int
    method: str
    params: dict[str, Any]
    normalization: str
    seed: int
    checkpoint: str | None
    checkpoint_sha256: str | None
    device: str
    batch_size: int
    amp: bool
    torch_threads: int | None = None
    deterministic: bool = False


# --------------------------------------------------------------------------------------------
# Worker side


# (checkpoint sha256, device) -> model; lives as long as the worker process.
_MODEL_CACHE: dict[tuple[str, str], nn.Module] = {}
_MODEL_CACHE_SIZE = 2
# Tasks sharing a process (a joined cluster may run several threads per worker) take turns:
# the cached model is shared, and Guided Backprop hooks and `frozen` flags are per model.
_COMPUTE_LOCK = threading.Lock()


def shard_seed(seed: int, split: str, shard: int) -> int:
    """A 63-bit seed for (seed, split, shard), independent across shards (SeedSequence).

    Combined as (hi << 32 | lo), unlike `derive_seed`: stores made since the first release
    carry these bytes, and a rerun must add shards that belong with them."""
    hi, lo = seed_words(int(seed), spawn_key=(SPLITS.index(split), int(shard)))
    return ((hi << 32) | lo) & MASK63


def cached_model(path: str | None, sha256: str, device: str) -> nn.Module:
    """The checkpoint's model on `device`, loaded once per process (checked against sha256)."""
    key = (sha256, device)
    if key not in _MODEL_CACHE:
        if path is None:
            raise SatpipeError("the model in memory is no longer cached; run again")
        model, state = load_model(path, device)
        if state["checkpoint_sha256"] != sha256:
            found = state["checkpoint_sha256"][:12]
            raise SatpipeError(f"{path}: checkpoint changed during the run (sha256 {found})")
        if torch.device(device).type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def _module_copy(module: nn.Module, device: str) -> nn.Module:
    """A copy of a caller's model in eval mode on `device` (the caller's keeps its device,
    mode and hooks state)."""
    model = copy.deepcopy(module).to(device).eval()
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _worker_device(device: str) -> str:
    """This worker's device (see `satpipe.core.cluster.worker_device`: dask-cuda's workers use
    cuda:0, their own GPU; a plain LocalCluster's worker k uses cuda:k mod the GPU count)."""
    return worker_device(device)


def images_to_tensor(images: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1] on `device` (channels_last on GPU).

    The uint8 copy travels to the device, not the 4x larger float one; from pinned memory
    (see `pinned_rows`) it is an asynchronous copy. One float-sized copy is made on the device,
    divided as on a CPU (`unit_range_`), so maps do not depend on the device's rounding."""
    host = (
        images
        if isinstance(images, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(images))
    )
    x = host.to(device, non_blocking=True)
    return to_float_batch(x, None, x.device.type == "cuda")[0]


def pinned_rows(array: np.ndarray, device: str) -> torch.Tensor | np.ndarray:
    """The shard's rows in page-locked memory when they go to a GPU (so each batch's copy
    is asynchronous, not staged through a pageable buffer); as they are otherwise."""
    if torch.device(device).type != "cuda":
        return array
    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory()


def run_shard(task: ShardTask) -> tuple[str, int]:
    """Compute, normalise and write the maps of one shard, then mark it done: (split, shard)."""
    if task.torch_threads and torch.get_num_threads() != task.torch_threads:
        torch.set_num_threads(task.torch_threads)
    with _COMPUTE_LOCK:
        return _run_shard_locked(task)


def _run_shard_locked(task: ShardTask) -> tuple[str, int]:
    device = _worker_device(task.device)
    configure(device, task.deterministic)
    method = get_method(task.method, **task.params)
    model = None
    if method.needs_model:
        model = cached_model(task.checkpoint, task.checkpoint_sha256, device)
    images, labels, extras = _read_task_rows(task, method)
    n, h, w, c = images.shape
    generator = torch.Generator(device=device).manual_seed(
        shard_seed(task.seed, task.split, task.shard)
    )
    cuda = torch.device(device).type == "cuda"
    # On a GPU the maps come back into page-locked memory asynchronously, waited for once.
    out = torch.empty((n, h, w, method.out_channels(c)), dtype=torch.float16, pin_memory=cuda)
    images = pinned_rows(images, device)
    # Non-finite maps are flagged on the device and read back once per shard, not per batch.
    bad_rows = []
    for a in range(0, n, task.batch_size):
        b = min(a + task.batch_size, n)
        if method.requires:
            raw = method.from_rows(
                **{k: v[a:b] for k, v in extras.items()}, size=(h, w), device=device
            )
        else:
            x = images_to_tensor(images[a:b], device)
            y = torch.from_numpy(labels[a:b]).to(device, non_blocking=True)
            raw = method(model, x, y, generator=generator, amp=task.amp)
        bad_rows.append(~torch.isfinite(raw).flatten(1).all(dim=1))
        maps = normalize(raw, task.normalization)
        # fp16 on the device, then one copy (stream order keeps the source alive until read).
        out[a:b].copy_(maps.permute(0, 2, 3, 1).to(torch.float16), non_blocking=cuda)
    if cuda:
        torch.cuda.synchronize(device)
    _refuse_bad_maps(task, torch.cat(bad_rows) if bad_rows else None)
    group = open_group(task.out, "r+", task.storage_options)
    write_shard(group, task.split, task.shard, out.numpy(), uri=task.out)
    return task.split, task.shard


def _refuse_bad_maps(task: ShardTask, bad: torch.Tensor | None) -> None:
    """One line naming the shard's rows (up to 10) whose maps were NaN/Inf, if any."""
    if bad is None:
        return
    which = (np.flatnonzero(bad.cpu().numpy()) + task.start).tolist()
    if which:
        shown = ", ".join(map(str, which[:10])) + (" ..." if len(which) > 10 else "")
        raise SatpipeError(
            f"{task.out}: method {task.method} gave NaN/Inf maps for {task.split} rows "
            f"{shown} of {task.data}; nothing written for that shard"
        )


def _read_task_rows(task: ShardTask, method: Method):
    """(images, labels, {mask/box arrays the method needs}) of the task's rows, each dataset
    shard checked against the digest recorded when the dataset was written (the driver
    checked the inventory when it opened the dataset)."""
    view = open_dataset(task.data, task.storage_options, check_inventory=False)
    split = view.split(task.split)
    check = view.shard_check(task.split)
    if check is not None:
        check.restrict(check.shards(task.start, task.stop))
    arrays = {"images": split.images, "labels": split.labels}
    arrays.update({name: getattr(split, name) for name in method.requires})
    rows = read_checked(arrays, task.start, task.stop, task.data, check)
    extras = {name: rows[name] for name in method.requires}
    return rows["images"], rows["labels"], extras


# --------------------------------------------------------------------------------------------
# Driver side


def _source_model(
    config: SaliencyConfig, method: Method, module: nn.Module | None = None
) -> tuple[dict, nn.Module | None]:
    """(source_model provenance, the model for checks) from the checkpoint, or from `module`,
    a model in memory: its class and the sha256 of its weights (`state_dict_sha256`) name it."""
    if not method.needs_model:
        return {"arch": None, "checkpoint_sha256": None, "variant": None}, None
    if module is not None:
        cls = type(module)
        source = {
            "arch": getattr(module, "arch", None) or f"{cls.__module__}.{cls.__qualname__}",
            "checkpoint_sha256": None,
            "variant": None,
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "state_dict_sha256": state_dict_sha256(module),
        }
        return source, module
    if not config.model:
        raise SatpipeError(f"method '{method.name}' needs a source model (pass --model CKPT)")
    model, state = load_model(config.model)
    record = state["model"]
    source = {
        "arch": record["arch"],
        "checkpoint_sha256": state["checkpoint_sha256"],
        "variant": state.get("variant"),
    }
    # Teachers imported with `satpipe model import`: the original weights file's identity.
    if record.get("weights_sha256"):
        source["weights_sha256"] = record["weights_sha256"]
    return source, model


def state_dict_sha256(module: nn.Module) -> str:
    """Hex sha256 of a module's state_dict: every entry's name, dtype, shape and values
    (little-endian, C order), in key order; equal weights give equal digests on any device."""
    h = hashlib.sha256(b"satpipe-state-dict-v1\n")
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_inputs(
    config: SaliencyConfig, dataset, method: Method, model, what: str | None = None
) -> None:
    unknown = [s for s in config.splits if s not in SPLITS]
    if unknown or not config.splits:
        raise SatpipeError(f"--splits must name some of {', '.join(SPLITS)}, got {unknown}")
    for split in config.splits:
        view = dataset.split(split)
        for name in method.requires:
            if getattr(view, name) is None:
                raise SatpipeError(
                    f"{config.data}: method '{method.name}' needs {split}/{name}, "
                    "which this dataset does not have"
                )
    if model is not None:
        # One probe forward at the data's size checks channels and classes for any model.
        h, w, c = dataset.image_shape
        what = what or f"{config.model}: the model"
        n_out = probe_model(model, (c, h, w), what)
        if n_out < dataset.num_classes:
            raise SatpipeError(
                f"{what} has {n_out} classes, {config.data} has {dataset.num_classes}"
            )


def compute_saliency(
    config: SaliencyConfig,
    on_shard_done: Callable[[str, int], None] | None = None,
    *,
    module: nn.Module | None = None,
) -> str:
    """Fill the saliency store `config.out`; returns its URI once it is marked complete.

    on_shard_done(split, shard) is called in this process after each shard is written and
    marked done (tests use it to interrupt a run). module: a model in memory to use instead
    of the checkpoint `config.model` (in-process only; a copy runs, the module is untouched).
    """
    so = dict(config.storage_options or {})
    # Before anything is read: an output that is an input, a chain or a link is refused, and
    # one writer per store (a second run on the same --out waits for none: it is refused).
    inputs = (config.data, config.model)
    refuse_chained(config.out)
    refuse_inputs(config.out, inputs)
    with store_lock(str(config.out), "saliency store"):
        return _compute_locked(config, so, inputs, on_shard_done, module)


def _compute_locked(
    config: SaliencyConfig, so: dict, inputs, on_shard_done, module: nn.Module | None
) -> str:
    method = get_method(config.method, **dict(config.params or {}))
    if module is not None and (config.workers or config.scheduler):
        raise SatpipeError(
            "a model in memory runs in this process only; save it as a checkpoint to run "
            "on dask workers"
        )
    dataset = open_dataset(config.data, so)
    source, model = _source_model(config, method, module)
    what = None if module is None else f"model {type(module).__name__}"
    _check_inputs(config, dataset, method, model, what)
    h, w, c = dataset.image_shape
    method = method.resolve(model, (c, h, w))
    if "layer" in method.params and method.needs_model:
        source["cam_layer"] = method.params["layer"]  # the Grad-CAM layer actually used
    del model  # workers load their own copy on their device
    device = _task_device(config.device)
    # bf16 autocast only on CUDA and only for methods shown to agree with fp32.
    on_cuda = torch.device(device).type == "cuda"
    amp = bool(config.amp and on_cuda and method.amp_safe and method.needs_model)
    if module is not None and method.needs_model:
        _cache_module(module, source["state_dict_sha256"], device)
    # Sizes left to the device: the store's own when it is resumed, else the device's default.
    recorded = {} if config.overwrite else _recorded_attrs(str(config.out), so)
    batch_size = config.batch_size or int(
        (recorded.get("compute") or {}).get("batch_size") or default_batch_size(device, h, w)
    )
    same = recorded.get("method") == method.name
    method = method.for_device(
        device, batch_size, (c, h, w), recorded.get("params") if same else None
    )
    attrs, rows_per_shard = _store_attrs(config, dataset, method, source, batch_size, amp)
    group, found = open_saliency_for_write(
        config.out, attrs, rows_per_shard, config.overwrite, so, inputs
    )
    if unmark_lost_shards(group, str(config.out)):
        found = dict(found, complete=False)
    if found.get("complete"):
        return str(config.out)
    common = dict(
        data=str(config.data), out=str(config.out), storage_options=so, method=method.name,
        params=method.params, normalization=attrs["normalization"], seed=config.seed,
        checkpoint=str(config.model) if method.needs_model else None,
        checkpoint_sha256=source.get("state_dict_sha256") or source["checkpoint_sha256"],
        device=device, batch_size=batch_size, amp=amp, deterministic=config.deterministic,
    )  # fmt: skip
    tasks, total = _pending_tasks(group, config.splits, common)
    _run_pending(tasks, total, method.name, config, device, on_shard_done)
    mark_complete(group, str(config.out))
    return str(config.out)


def _task_device(asked: str) -> str:
    """The device string tasks run on: "cuda" (no index) lets dask workers spread over the
    GPUs; an explicit cuda:N pins them."""
    resolved = resolve_device(asked)
    explicit = ":" in str(asked)
    return str(resolved) if resolved.type == "cpu" or explicit else "cuda"


def _cache_module(module: nn.Module, key: str, device: str) -> None:
    """A copy of `module` on `device` where tasks find it: under its weights' digest `key`,
    as a checkpoint's model is found under its sha256."""
    _MODEL_CACHE.pop((key, device), None)
    copy = _module_copy(module, device)
    while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    _MODEL_CACHE[(key, device)] = copy


def _store_attrs(
    config: SaliencyConfig, dataset, method: Method, source: dict, batch_size: int, amp: bool
) -> tuple[dict[str, Any], dict[str, int]]:
    """(the store's satpipe attrs, rows per shard of each split) for this run."""
    shapes, rows_per_shard = {}, {}
    for split in config.splits:
        images = dataset.split(split).images
        n, h, w, c = images.shape
        shapes[split] = (n, h, w, method.out_channels(c))
        rows_per_shard[split] = config.rows_per_shard or shard_rows(images)
    attrs = saliency_attrs(
        method=method.name,
        params=method.params,
        normalization=config.normalization,
        seed=config.seed,
        source_model=source,
        dataset={"uri": str(config.data), "fingerprint": dataset.fingerprint},
        splits=shapes,
        # deterministic only when set: stores made before the flag resume as they were.
        compute={"batch_size": batch_size, "amp": amp}
        | ({"deterministic": True} if config.deterministic else {}),
    )
    return attrs, rows_per_shard


def _pending_tasks(group, splits, common: dict[str, Any]) -> tuple[list[ShardTask], int]:
    """(a ShardTask for every shard not marked done, shards in all); `common`: the fields
    every task shares."""
    tasks, total = [], 0
    for split in splits:
        plan, done = shard_plan(group, split), done_shards(group, split)
        total += len(plan)
        for k, rows in enumerate(plan):
            if not done[k]:
                tasks.append(
                    ShardTask(split=split, shard=k, start=rows.start, stop=rows.stop, **common)
                )
    return tasks, total


def _run_pending(
    tasks: list[ShardTask], total: int, name: str, config: SaliencyConfig, device: str,
    on_shard_done: Callable[[str, int], None] | None,
) -> None:  # fmt: skip
    """Run `tasks` here or on dask, the progress bar counting the shards already done."""
    with progress(f"saliency {name}", total) as advance:
        advance(total - len(tasks))

        def finished(result: tuple[str, int]) -> None:
            advance(1)
            if on_shard_done is not None:
                on_shard_done(*result)

        if config.scheduler or config.workers:
            _run_dask(tasks, finished, config, device)
        else:
            for task in tasks:
                finished(run_shard(task))


def _recorded_attrs(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The satpipe attrs of an existing store at `uri` ({} when there is none yet)."""
    if not store_exists(uri, storage_options):
        return {}
    try:
        return dict(open_group(uri, "r", storage_options).attrs.get(ATTR) or {})
    except SatpipeError:
        return {}  # being created by another process: open_saliency_for_write waits for it


def _run_dask(
    tasks: list[ShardTask],
    finished: Callable[[tuple[str, int]], None],
    config: SaliencyConfig,
    device: str,
) -> None:
    """One dask task per shard; results are handled here as they complete. On a local CPU
    cluster each worker gets its share of the cores as torch threads."""
    gpus = torch.cuda.device_count() if torch.device(device).type == "cuda" else 0
    if not config.scheduler and not gpus and config.workers:
        threads = config.threads_per_worker or max(1, (os.cpu_count() or 1) // config.workers)
        tasks = [dataclasses.replace(t, torch_threads=threads) for t in tasks]
    with dask_client(config.workers, config.scheduler, gpus=gpus) as client:
        run_tasks(
            client, run_shard, tasks, key=lambda t: f"saliency-{t.split}-{t.shard}",
            on_done=lambda _, result: finished(result),
        )  # fmt: skip
