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

import satpipe.cluster as cluster
import satpipe.reproduce as rp
from satpipe.device import resolve_device
from satpipe.errors import SatpipeError
from satpipe.train import distributed, trainer
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
    state = trainer.rng_state()
    state["cuda"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]  # 8 GPUs
    trainer.set_rng_state(state, torch.device("cuda", 0))
    assert restored == [(0, 0)]
    gpus(4)
    restored.clear()
    trainer.set_rng_state(state, torch.device("cuda", 3))
    assert restored == [(3, 3)]
    restored.clear()
    trainer.set_rng_state(state, torch.device("cpu"))  # a CUDA run resumed on a CPU
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
