"""The CUDA code paths, checked on a CPU: torch.cuda's functions are replaced by stand-ins that
behave as a machine with N GPUs would (device counts, RNG states, worker environments), so a
wrong device, a restored state for a GPU that is not there, or a dropped environment fails
here without a GPU."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
from torch import nn

import satpipe.core.cluster as cluster
import satpipe.reproduce.run as rp
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.train import distributed, rng
from satpipe.train.models import create_model


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA devices: `gpus(n)`."""

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


# --------------------------------------------------------------------------------------------
# Device resolution under torchrun


@pytest.mark.parametrize(
    ("choice", "local_rank", "expected"),
    [("cuda", "0", "cuda:0"), ("cuda", "3", "cuda:3"), ("auto", "2", "cuda:2"),
     ("cuda:2", "0", "cuda:2"), ("cuda:2", "1", "cuda:3"), ("cuda:0", "3", "cuda:3"),
     ("cpu", "3", "cpu")],
)  # fmt: skip
def test_each_torchrun_rank_gets_its_own_gpu(gpus, monkeypatch, choice, local_rank, expected):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_device(choice) == torch.device(expected)


def test_ranks_asking_for_one_gpu_get_distinct_gpus(gpus, monkeypatch):
    gpus(8)
    devices = []
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        devices.append(resolve_device("cuda:4"))
    assert devices == [torch.device("cuda", 4 + r) for r in range(4)]


def test_a_rank_past_the_last_gpu_is_one_line(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SatpipeError, match=r"cuda:3, but there are only 2 CUDA devices"):
        resolve_device("cuda:2")
    gpus(1)  # a launcher that gives each process one GPU: it is the process's own
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_init_distributed_pins_each_rank_to_its_gpu(gpus, monkeypatch):
    gpus(2)
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, _, local_rank, device = distributed.init_distributed("cuda:0")
    assert (local_rank, device, pinned) == (1, torch.device("cuda", 1), [torch.device("cuda", 1)])


# --------------------------------------------------------------------------------------------
# Resume with CUDA RNG states saved on more GPUs than this machine has


def test_resume_restores_only_this_process_gpu_rng_state(gpus, monkeypatch):
    gpus(1)
    restored = []

    def set_state(state, device="cuda"):
        index = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if (index.index or 0) >= torch.cuda.device_count():
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append((index.index or 0, int(state[0])))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)
    state = rng.rng_state()
    state["cuda"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]  # 8 GPUs
    rng.set_rng_state(state, torch.device("cuda", 0))
    assert restored == [(0, 0)]
    gpus(4)
    restored.clear()
    rng.set_rng_state(state, torch.device("cuda", 3))
    assert restored == [(3, 3)]
    restored.clear()
    rng.set_rng_state(state, torch.device("cpu"))  # a CUDA run resumed on a CPU
    assert restored == []


# --------------------------------------------------------------------------------------------
# DDP buffer averaging


def test_only_batchnorm_statistics_are_averaged_over_ranks(monkeypatch):
    torch.manual_seed(0)
    net = create_model("resnet10", 10, mean=(0.49, 0.48, 0.45), std=(0.247, 0.243, 0.261))
    reduced = []
    world = 7

    def all_reduce(t, op=None):
        reduced.append(t)
        t.mul_(world)  # every rank holds the same values: the sum is world * t

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    constants = {n: b.clone() for n, b in net.named_buffers() if "running" not in n}
    distributed.sync_buffers(net)
    bn = [b for m in net.modules() if isinstance(m, nn.BatchNorm2d)
          for b in (m.running_mean, m.running_var)]  # fmt: skip
    assert {id(t) for t in reduced} == {id(t) for t in bn}
    for name, before in constants.items():  # input normalisation and counters: untouched
        assert torch.equal(dict(net.named_buffers())[name], before), name


# --------------------------------------------------------------------------------------------
# dask workers and GPUs


def _in_worker(monkeypatch, name, visible=None, pinned=False):
    import distributed as dd

    monkeypatch.setattr(dd, "get_worker", lambda: types.SimpleNamespace(name=name))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if pinned:
        monkeypatch.setenv(cluster.PINNED_ENV, "1")
    else:
        monkeypatch.delenv(cluster.PINNED_ENV, raising=False)


def test_dask_cuda_workers_use_their_own_gpu(gpus, monkeypatch):
    """dask-cuda rotates CUDA_VISIBLE_DEVICES: worker k sees GPU k first, as its cuda:0."""
    from satpipe.pipeline.runner import _worker_device

    gpus(2)
    physical = []
    for k in range(2):
        visible = ",".join(str((k + i) % 2) for i in range(2))  # LocalCUDACluster's rotation
        _in_worker(monkeypatch, k, visible)
        dev = torch.device(_worker_device("cuda"))
        physical.append(int(visible.split(",")[dev.index]))
    assert physical == [0, 1]
    _in_worker(monkeypatch, "tcp://10.0.0.1:4000", "1,0", pinned=True)  # marked by satpipe
    assert _worker_device("cuda") == "cuda:0"


def test_plain_local_cluster_workers_spread_over_the_gpus(gpus, monkeypatch):
    from satpipe.pipeline.runner import _worker_device

    gpus(2)
    for k in range(4):
        _in_worker(monkeypatch, k)
        assert _worker_device("cuda") == f"cuda:{k % 2}"
    assert _worker_device("cuda:1") == "cuda:1" and _worker_device("cpu") == "cpu"


def test_dask_cuda_cluster_keeps_the_env_it_is_given(monkeypatch):
    """LocalCUDACluster replaces each worker's env with its CUDA_VISIBLE_DEVICES: the stand-in
    does what dask-cuda 26.10's new_worker_spec does."""
    import sys

    class LocalCUDACluster:
        def __init__(self, n_workers, threads_per_worker, **kwargs):
            self.worker_spec = {}
            for _ in range(n_workers):
                self.worker_spec.update(self.new_worker_spec())

        def new_worker_spec(self):
            k = len(self.worker_spec)
            spec = {"cls": "Nanny", "options": {"env": {"LEFT": "over"}}}
            spec["options"].update({"env": {"CUDA_VISIBLE_DEVICES": f"{k},{1 - k}"}})
            return {k: spec}

    monkeypatch.setitem(
        sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=LocalCUDACluster)
    )
    made = cluster._cuda_cluster(2, {"OMP_NUM_THREADS": "1"})
    envs = [made.worker_spec[k]["options"]["env"] for k in range(2)]
    assert envs == [
        {"OMP_NUM_THREADS": "1", cluster.PINNED_ENV: "1", "CUDA_VISIBLE_DEVICES": f"{k},{1 - k}"}
        for k in range(2)
    ]


def test_reproduce_jobs_put_one_job_on_each_gpu(gpus, monkeypatch):
    gpus(2)
    asked, ran = {}, []

    @contextlib.contextmanager
    def fake_client(workers, scheduler, *, gpus=0, env=None):
        asked.update(workers=workers, gpus=gpus, env=env)
        yield None

    def fake_run_tasks(client, fn, tasks, *, on_done=None, key=None):
        out = []
        for i, task in enumerate(tasks):
            _in_worker(monkeypatch, i % 2, visible=f"{i % 2},{1 - i % 2}", pinned=True)
            out.append(fn(task))
            on_done(i, out[-1])
        return out

    monkeypatch.setattr(rp, "dask_client", fake_client)
    monkeypatch.setattr(rp, "run_tasks", fake_run_tasks)
    monkeypatch.setattr(rp, "run_student", lambda spec, preset, data, device: ran.append(device))
    specs = [rp.RunSpec("r", "weak", "original", s, None, f"o{s}") for s in range(2)]
    config = types.SimpleNamespace(device="auto", jobs=2, scheduler=None)
    rp._run_all(specs, types.SimpleNamespace(name="tiny"), "data", config)
    assert asked["gpus"] == 2 and asked["env"] == cluster.ONE_THREAD_ENV
    assert ran == ["cuda:0", "cuda:0"]  # each worker's own GPU (dask-cuda's rotation)
    assert rp.jobs_device("cuda:1") == ("cuda:1", 0)
    gpus(0)
    assert rp.jobs_device("auto") == ("cpu", 0)


# --------------------------------------------------------------------------------------------
# The saliency runner: host reads per batch, device-dependent sizes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from satpipe.train.checkpoint import model_record, save_checkpoint
    from tests.conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("cudapaths")
    data = write_tiny_dataset(root / "d.zarr", n_train=16, n_test=8, size=8, rows_per_shard=16)
    torch.manual_seed(0)
    ckpt = root / "m.pt"
    save_checkpoint(ckpt, {"model": model_record(create_model("smallcnn", 4), 4, 3)})
    return {"root": root, "data": data, "ckpt": str(ckpt)}


def _host_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for name in ("__bool__", "item", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def read(self, *a, _name=name, _original=original, **k):
            reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, read)
    return reads


def test_the_runner_reads_back_once_per_shard_not_per_batch(tiny, monkeypatch):
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    counts = {}
    # A first run loads the model once per process (its reads are not per shard); then one
    # batch per shard, and four.
    for k, batch in enumerate((16, 16, 4)):
        config = SaliencyConfig(
            method="gradient", data=tiny["data"], model=tiny["ckpt"], device="cpu",
            out=str(tiny["root"] / f"g{k}.zarr"), batch_size=batch,
        )  # fmt: skip
        with monkeypatch.context() as m:
            reads = _host_reads(m)
            compute_saliency(config)
        counts[batch] = len(reads)
    assert counts[4] == counts[16], counts


def test_sizes_left_to_the_device_are_recorded_and_kept_on_resume(tiny):
    from satpipe.data.saliency_store import open_saliency
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    def run(out, params=None, **kw):
        config = SaliencyConfig(
            method="smoothgrad", params=params or {"samples": 2}, data=tiny["data"],
            model=tiny["ckpt"], device="cpu", out=str(tiny["root"] / out), **kw,
        )  # fmt: skip
        return open_saliency(compute_saliency(config)).attrs

    attrs = run("sg.zarr")
    assert attrs["compute"]["batch_size"] == 64  # a CPU's default
    assert attrs["params"]["samples_batch_size"] == 1
    # A store made with other sizes (on a GPU, say) resumes with them when none are given.
    made = run("sg8.zarr", batch_size=8, params={"samples": 2, "samples_batch_size": 2})
    resumed = run("sg8.zarr")
    assert resumed["compute"] == made["compute"] and resumed["params"] == made["params"]


def test_device_defaults_grow_on_cuda():
    from satpipe.core import defaults

    assert defaults.batch_size("cpu", 32, 32) == 64
    assert defaults.batch_size(torch.device("cuda", 1), 32, 32) == 1024
    assert defaults.batch_size("cuda", 224, 224) == 41
    assert defaults.samples_per_pass("cpu", 64, 32, 32, 50) == 1
    assert defaults.samples_per_pass("cuda", 1024, 32, 32, 50) == 2
    assert defaults.samples_per_pass("cuda", 41, 224, 224, 50) == 1
    assert defaults.ig_internal_batch("cpu", 64, 32, 32) == 64
    assert defaults.ig_internal_batch("cuda", 1024, 32, 32) == 2048


# --------------------------------------------------------------------------------------------
# Loader -> trainer: one copy per batch, in the model's layout


def test_loader_batches_arrive_in_the_model_layout_in_one_copy(tiny):
    from satpipe.data.loader import LoaderOptions, make_loader, to_float_batch

    options = LoaderOptions(batch_size=8, device="cpu", channels_last=True)
    loader = make_loader(tiny["data"], "train", options=options)
    for x, _, _ in loader:
        assert x.is_contiguous(memory_format=torch.channels_last)
        # What the trainer does on CUDA is then no copy at all.
        assert x.contiguous(memory_format=torch.channels_last).data_ptr() == x.data_ptr()
    assert make_loader(tiny["data"], "train", batch_size=8, device="cpu").channels_last is False
    # From contiguous NHWC bytes, the only copy is the float one (the permute is a view).
    images = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8)
    x, _ = to_float_batch(images, None, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    # Byte values divided, correctly rounded (CUDA divides the same way: a device divisor).
    b = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1)
    x, _ = to_float_batch(b, None, channels_last=False)
    exact = (torch.arange(256, dtype=torch.float64) / 255).float()
    assert torch.equal(x.flatten(), exact)
