"""One epoch of training: `variant.train_batch` on every batch of a loader, the optimizer it
steps, and the epoch's statistics (summed on the device, read once at the end).

Every random draw of a step comes from `step_generator(seed, epoch, step, rank)`
(satpipe.train.rng), so an epoch is a function of its coordinates and the weights it starts
from. On CUDA the batches are channels_last and, with `amp`, every forward pass runs under
bf16 autocast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn

from satpipe.core.progress import progress
from satpipe.train.config import TrainConfig
from satpipe.train.distributed import sync_buffers
from satpipe.train.rng import step_generator
from satpipe.train.variants import TrainingVariant, VariantConfig

__all__ = ["build_optimizer", "set_lr", "train_one_epoch"]


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam over `model`'s parameters, as `config.optimizer` says."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's lr (the schedules are closed-form: no scheduler object)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    variant: TrainingVariant,
    vcfg: VariantConfig,
    epoch: int,
    *,
    seed: int = 0,
    rank: int = 0,
    amp: bool = False,
    attack_model: nn.Module | None = None,
    description: str | None = None,
    show_progress: bool = True,
    lr_fn: Callable[[float], float] | None = None,
    alpha_fn: Callable[[int], float] | None = None,
) -> dict[str, float]:
    """One pass over `loader` (already `set_epoch`-ed): `variant.train_batch` on every batch.

    Returns loss (mean per image), train_acc, images (all ranks), seconds, batches,
    attacked_batches (this rank's batches on which the attack ran), lr (at the end), and what
    SAT took from the maps (all ranks): sat_elements (perturbation elements SAT drew),
    map_elements (of those, taken from the map) and map_abs_sum (their sum of |s|), counted on
    the device and read once with the loss.

    `lr_fn(f) -> lr`, when given, sets the lr before each batch, f = step / steps in [0, 1).
    `alpha_fn(step) -> alpha`, when given, is SAT's alpha at each step of the epoch (the run's
    alpha schedule); without it a SAT step uses `vcfg.alpha`, else the per-epoch formula.
    """
    device = next(model.parameters()).device
    model.train()
    tally = _Tally(device)
    autocast = _autocast(device, amp)
    _synchronize(device)
    start = time.perf_counter()
    state = variant.begin_epoch()
    steps = len(loader)
    desc = description or f"epoch {epoch + 1} {variant.name}"
    with _bar(desc, steps, show_progress) as advance:
        for step, (x, s, y) in enumerate(loader):
            if lr_fn is not None:
                set_lr(optimizer, lr_fn(step / steps))
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            gen = step_generator(seed, epoch, step, rank, device)
            cfg = vcfg if alpha_fn is None else replace(vcfg, alpha=alpha_fn(step))
            out = variant.train_batch(
                model, optimizer, x, s, y, epoch=epoch, cfg=cfg, generator=gen,
                attack_model=attack_model, autocast=autocast, state=state,
            )  # fmt: skip
            tally.add(out, y)
            advance()
    totals = tally.all_ranks(model)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return tally.stats(totals.tolist(), seconds, float(optimizer.param_groups[0]["lr"]))


class _Tally:
    """An epoch's running sums, accumulated on the device: no host sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.sat = torch.zeros(2, device=device, dtype=torch.float64)  # map elements, sum |s|
        self.seen = self.attacked = self.sat_elements = self.batches = 0

    def add(self, out, y: torch.Tensor) -> None:
        """Count one batch's StepOutput `out` for labels `y` (B,)."""
        self.loss_sum += out.loss.detach().double() * len(y)
        self.correct += (out.logits.detach().argmax(1) == y).sum()
        self.seen += len(y)
        self.batches += 1
        self.attacked += int(out.attacked)
        if out.sat is not None:
            self.sat += out.sat
            self.sat_elements += out.sat_elements

    def all_ranks(self, model: nn.Module) -> torch.Tensor:
        """(6,) float64 on the device: loss sum, correct, images, SAT elements, map elements
        and map |s| sum over every rank."""
        counts = torch.tensor(
            [float(self.seen), float(self.sat_elements)], device=self.device, dtype=torch.float64
        )
        totals = torch.cat([torch.stack([self.loss_sum, self.correct.double()]), counts, self.sat])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
            # DDP keeps weights in lockstep but BatchNorm statistics per rank: average them so
            # evaluation and checkpoints see every rank's data and all ranks agree.
            sync_buffers(getattr(model, "module", model))
        return totals

    def stats(self, totals: list[float], seconds: float, lr: float) -> dict[str, float]:
        """`train_one_epoch`'s statistics from `all_ranks`' totals, read to the host once."""
        loss_total, correct_total, n, sat_total, map_total, map_abs = totals
        return {
            "loss": loss_total / max(n, 1),
            "train_acc": correct_total / max(n, 1),
            "images": int(n),
            "seconds": seconds,
            "batches": self.batches,
            "attacked_batches": self.attacked,
            "lr": lr,
            "sat_elements": int(sat_total),
            "map_elements": int(map_total),
            "map_abs_sum": map_abs,
        }


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward passes on CUDA with `amp`; else fp32 (a no-op context)."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _synchronize(device: torch.device) -> None:
    """Wait for the device (CUDA) so the epoch's time covers its work and nothing before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _bar(description: str, total: int, enabled: bool) -> Iterator:
    if not enabled:
        yield lambda n=1: None
        return
    with progress(description, total) as advance:
        yield advance
