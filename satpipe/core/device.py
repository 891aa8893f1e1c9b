"""The one place that turns a `--device` value into a torch device.

Under torchrun (LOCAL_RANK set) each process must hold its own GPU: `cuda` and `auto` mean
cuda:LOCAL_RANK, and `cuda:N` means cuda:(N + LOCAL_RANK), so `--device cuda:2` with
`--nproc-per-node 2` trains on GPUs 2 and 3 (the first GPU of the node's share, not one GPU
for every rank, which NCCL refuses as a duplicate GPU).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from satpipe.core.errors import SatpipeError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = (
    "auto (CUDA when present), cpu, cuda or cuda:N; under torchrun cuda means cuda:LOCAL_RANK "
    "and cuda:N means cuda:(N + LOCAL_RANK)"
)
DETERMINISTIC_HELP = (
    "Deterministic CUDA algorithms (torch.use_deterministic_algorithms, "
    "CUBLAS_WORKSPACE_CONFIG, cudnn.deterministic, no cudnn.benchmark): the same bytes on the "
    "same GPU and software, slower; recorded. CPU runs are bitwise reproducible without it."
)


def env_local_rank() -> int:
    """LOCAL_RANK as torchrun sets it for every process (0 outside torchrun)."""
    text = os.environ.get("LOCAL_RANK", "0").strip() or "0"
    try:
        rank = int(text)
    except ValueError:
        raise SatpipeError(f"LOCAL_RANK must be an integer, got '{text}'") from None
    if rank < 0:
        raise SatpipeError(f"LOCAL_RANK must be >= 0, got {rank}")
    return rank


def resolve_device(
    choice: str | torch.device = "auto", local_rank: int | None = None
) -> torch.device:
    """`auto` -> cuda:local_rank when CUDA is present, else cpu; `cpu`; `cuda` -> cuda:
    local_rank (cuda:0 when the process sees one GPU: a launcher that gave each process its own);
    `cuda:N` -> cuda:(N + local_rank). local_rank: this process's rank on its node,
    by default LOCAL_RANK from the environment (torchrun sets it; 0 without torchrun). An
    unknown value, CUDA asked for without CUDA, or an index past the last GPU is a one-line
    SatpipeError."""
    import torch  # here, not at the top: configs import DEVICE_HELP and must stay torch-free

    if local_rank is None:
        local_rank = env_local_rank()
    if isinstance(choice, torch.device):
        choice = str(choice)
    text = str(choice).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SatpipeError(f"unknown device '{choice}' (use {DEVICE_HELP})") from None
    if device.type not in ("cpu", "cuda"):
        raise SatpipeError(f"unknown device '{choice}' (use {DEVICE_HELP})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SatpipeError(f"device '{choice}' was asked for, but CUDA is not available")
        count = torch.cuda.device_count()
        index = (device.index or 0) + local_rank
        if device.index is None and count == 1:
            index = 0  # the launcher gave each process one GPU (CUDA_VISIBLE_DEVICES): its own
        if index >= count:
            rank = f" + LOCAL_RANK {local_rank}" if local_rank else ""
            raise SatpipeError(
                f"device '{choice}'{rank} is cuda:{index}, but there are only {count} CUDA devices"
            )
        device = torch.device("cuda", index)
    return device
