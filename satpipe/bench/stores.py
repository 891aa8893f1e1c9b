"""What the benchmarks time against besides the random stores of `satpipe.data.synthetic`:
untrained models and checkpoints (speed does not depend on content), a pass over a loader, and
the trainer's epoch as the train and integrity parts run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from satpipe.train.checkpoint import model_record, save_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.models import create_model
from satpipe.train.trainer import build_optimizer, train_one_epoch
from satpipe.train.variants import VARIANTS


def untrained_checkpoint(root: str | Path, model: str, num_classes: int = 10) -> str:
    """A satpipe checkpoint `root/model.pt` of an untrained `model` (seed 0, 3 channels)."""
    path = str(Path(root) / "model.pt")
    torch.manual_seed(0)
    net = create_model(model, num_classes)
    save_checkpoint(path, {"model": model_record(net, num_classes, 3)})
    return path


def one_epoch(loader: Any) -> Callable[[int], int]:
    """fn(epoch) -> rows: one pass over `loader`, its epoch set first where it has one (a
    PairLoader; a torch DataLoader shuffles anew each pass)."""

    def run(epoch: int) -> int:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        return sum(len(batch[-1]) for batch in loader)

    return run


def untrained_model(
    arch: str, device: torch.device, classes: int = 10, channels: int = 3, seed: int = 0
) -> torch.nn.Module:
    """An untrained `arch` (weights seeded with `seed`) on `device`, channels_last on CUDA (the
    layout the trainer and the runner use there)."""
    torch.manual_seed(seed)
    net = create_model(arch, classes, channels).to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cuda" else net


def epoch_runner(
    net: torch.nn.Module, config: TrainConfig, variant: str, device: torch.device, **kw: Any
) -> Callable[..., dict[str, float]]:
    """fn(loader, epoch, **more) -> the trainer's stats of one epoch of `net` trained as
    `variant` with `config`'s optimizer and attack settings, bf16 autocast on CUDA; `kw` and
    `more` go to `train_one_epoch`."""
    v, opt, vcfg = VARIANTS.get(variant), build_optimizer(config, net), config.variant_config()

    def epoch(loader: Any, i: int, **more: Any) -> dict[str, float]:
        return train_one_epoch(net, loader, opt, v, vcfg, i, amp=device.type == "cuda", **kw,
                               **more)  # fmt: skip

    return epoch
