"""torch.distributed set-up for `satpipe train` under torchrun (single or multi node).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process;
`init_distributed()` reads them, picks NCCL on CUDA and gloo on CPU, and pins each process to
its local GPU. Without torchrun (WORLD_SIZE unset or 1) it is a no-op returning rank 0 of 1,
so the same training code runs alone or under `torchrun --nproc-per-node N --nnodes M ...`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from satpipe.core.device import resolve_device


def init_distributed(device: str = "auto") -> tuple[int, int, int, torch.device]:
    """(rank, world_size, local_rank, device) from the torchrun environment.

    device: as `satpipe.core.device.resolve_device` takes it; under torchrun "cuda" (or "auto" on a
    GPU machine) means `cuda:LOCAL_RANK` for each process. Initialises the default process
    group once (NCCL on CUDA, gloo on CPU); calling it again returns the same answer.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # device_id binds NCCL's communicator to this GPU eagerly (no guessing later).
        extra = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **extra)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, local_rank, dev


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Tear the process group down (safe to call when none was started)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def batchnorm_statistics(module: torch.nn.Module) -> list[torch.Tensor]:
    """The running mean and variance of every BatchNorm (and tracked InstanceNorm) layer of
    `module`: the buffers that training changes. Other floating-point buffers (the input
    normalisation's mean and std, say) are constants and are not among them."""
    stats = []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
            stats += [b for b in (m.running_mean, m.running_var) if b is not None]
    return stats


@torch.no_grad()
def sync_buffers(module: torch.nn.Module) -> None:
    """Average the BatchNorm running statistics over ranks, in place.

    DDP broadcasts rank 0's buffers before each forward, so after an epoch every rank holds
    statistics of its own last batches. Call this at the end of an epoch, before evaluating or
    checkpointing, so the saved statistics reflect every rank's data and all ranks agree.
    Constant buffers (input normalisation) are left alone: a sum and a division by a world
    size of 3, 5, 6 or 7 would move them by an ulp every epoch.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for b in batchnorm_statistics(module):
        dist.all_reduce(b, op=dist.ReduceOp.SUM)
        b.div_(world)
