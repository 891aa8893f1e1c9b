"""The one place that turns a `--device` value into a torch device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from satpipe.errors import SatpipeError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N"


def resolve_device(choice: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:local_rank when CUDA is present, else cpu; `cpu`, `cuda` (-> cuda:
    local_rank) and `cuda:N` as given. An unknown value or CUDA asked for without CUDA is a
    one-line SatpipeError."""
    import torch  # here, not at the top: configs import DEVICE_HELP and must stay torch-free

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
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise SatpipeError(
                f"device '{choice}': there are only {torch.cuda.device_count()} CUDA devices"
            )
        device = torch.device("cuda", index)
    return device
