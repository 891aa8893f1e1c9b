"""The training loop: one typed config in, one run directory out.

    RUN/config.json      the TrainConfig as a plain dict
    RUN/checkpoint.pt    latest finished epoch (model record, optimizer, RNG states),
                         replaced atomically every epoch; `--resume` continues from it
    RUN/metrics.jsonl    one JSON line per epoch: loss, train/test accuracy, time, images/s
    RUN/train.lock       while a run trains: its pid and host (one writer per run directory)
    RUN/best.pt          with the overfitting guard (--guard-rows): the checkpoint of the
                         epoch with the best held-out PGD accuracy (see satpipe.train.guard)

Nothing is saved from data that was not checked: the first epoch reads every image and label,
each shard checked against the digest recorded when the dataset store was written, and a
mismatch stops the run with one line before its first checkpoint. A write that fails (disk
full, read-only target) is one line naming the file; the checkpoint before it stays loadable
and `--resume` continues from it.

An epoch is one pass over the training data; a variant decides what it does with each batch
(`train_batch`, the optimizer step included) and how many passes a run of --epochs makes
(Free: ceil(epochs / m), each batch replayed m times). Per-step lr schedules (cyclic) set the
lr before every batch, as a closed-form function of (epoch + step / steps, passes).

Determinism: every random draw of a training step (coins, noise, SAT components, PGD random
starts) comes from a generator seeded by (seed, epoch, step, rank), the loader's order and
augmentation are functions of (seed, epoch, rank), and the model starts from `seed`. So on CPU a
run resumed after epoch e ends with the same weights, bit for bit, as one never interrupted.
On CUDA: bf16 autocast and channels_last, cuDNN autotuning (fast, not bit-exact); with
`deterministic` (deterministic kernels, no autotuning) the same holds on one GPU of one model
and software stack (docs/gpu.md says what is bitwise where).

Under torchrun (WORLD_SIZE set) the model is wrapped in DDP; each rank reads its own shard of
every epoch, rank 0 alone evaluates, logs and writes checkpoints.

This module sets a run up and drives its epochs; the pieces live beside it: `epoch.py` (one
epoch: `train_one_epoch`, the optimizer), `run_dir.py` (the run directory: resume, the
checkpoint and metrics line of every epoch, the guard's restore), `rng.py` (the per-step
generators and the RNG states a checkpoint carries).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.precision import configure
from satpipe.data.outputs import check_run_output
from satpipe.train.alpha_schedules import alpha_at, expected_map_share
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.distributed import barrier, cleanup, init_distributed
from satpipe.train.epoch import build_optimizer, set_lr, train_one_epoch
from satpipe.train.eval.evaluate import clean_accuracy
from satpipe.train.guard import OverfitGuard, held_out_rows
from satpipe.train.models import create_model, probe_model
from satpipe.train.pairing import check_recorded, run_pairing
from satpipe.train.rng import set_rng_state
from satpipe.train.run_dir import Run, check_data, finish_epoch, prepare_dir, resume_state
from satpipe.train.runlock import RunLock
from satpipe.train.schedules import SCHEDULES, lr_at
from satpipe.train.variants import VARIANTS, TrainingVariant

# build_optimizer and train_one_epoch: re-exported for `satpipe bench train` and tests.
__all__ = ["TrainConfig", "build_optimizer", "run_finished", "train", "train_one_epoch"]


def data_passes(config: TrainConfig) -> int:
    """Passes over the data a run of `config` makes (its variant decides; Free: epochs / m)."""
    return VARIANTS.get(config.variant).data_passes(config.epochs, config.variant_config())


def run_finished(config: TrainConfig) -> bool:
    """Whether RUN (config.out) holds a finished run: every pass done, or stopped by the
    overfitting guard (a stopped run is final: resuming it trains nothing)."""
    ckpt = Path(config.out) / "checkpoint.pt"
    if not ckpt.is_file():
        return False
    state = load_checkpoint(ckpt)
    return bool(state.get("stopped")) or int(state.get("epoch", -1)) + 1 >= data_passes(config)


def train(config: TrainConfig) -> Path:
    """Train `config.variant` and return the run directory (see the module docstring).

    Refuses (SatpipeError, one line): a run directory another process is training into, a
    saliency variant without a saliency store, a store the variant cannot use (rrr: not weak
    saliency), an incomplete or mismatched saliency store (the loader checks), data that differs
    from what its store recorded, an existing run without --resume or --overwrite, a resume
    whose config differs in anything but epochs/device/out. Nothing is written before these
    checks pass. `--out` must be a new or empty directory, or a satpipe run: never a
    directory of someone else's files, nor an input (satpipe.data.outputs).
    """
    check_run_output(str(config.out), (config.data, config.saliency))
    with _run_lock(config):
        return _train_locked(config)


def _run_lock(config: TrainConfig):
    """The run directory's lock, taken by the process that writes it (rank 0)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return RunLock(config.out)


def _train_locked(config: TrainConfig) -> Path:
    """`train` under the run's lock: open (or resume) the run, then epoch after epoch train,
    evaluate on rank 0, and checkpoint, until the last pass or the guard stops it."""
    state = resume_state(config)
    if state is not None and state.get("stopped"):
        stop = state["stopped"]
        print(
            f"{config.out}: stopped by the overfitting guard after epoch {stop['epoch'] + 1} "
            f"(weights of epoch {stop['restored_epoch'] + 1}); nothing to resume",
            file=sys.stderr,
        )
        return Path(config.out)
    run = _open_run(config, state)
    use_amp = config.amp and run.device.type == "cuda"
    vcfg = config.variant_config()
    per_step = SCHEDULES.get(config.lr_schedule).per_step
    for epoch in range(run.start, run.passes):
        run.train_loader.set_epoch(epoch)
        lr_fn = functools.partial(lr_at, config.lr_schedule, config.lr, epoch, run.passes)
        if not per_step:
            set_lr(run.optimizer, lr_fn())
        alpha_fn = _alpha_fn(config, epoch, len(run.train_loader), run.passes)
        stats = train_one_epoch(
            run.model, run.train_loader, run.optimizer, run.variant, vcfg, epoch,
            seed=config.seed, rank=run.rank, amp=use_amp, attack_model=run.raw,
            show_progress=run.master, lr_fn=lr_fn if per_step else None,
            alpha_fn=alpha_fn if run.variant.kind == "sat" else None,
            description=f"epoch {epoch + 1}/{run.passes} {run.variant.name}",
        )  # fmt: skip
        check_data(run.train_loader)
        stop = False
        if run.master:
            t0 = time.perf_counter()
            test_acc = clean_accuracy(run.raw, run.test_loader, amp=use_amp)
            record = _epoch_record(epoch, stats, test_acc, time.perf_counter() - t0)
            if run.variant.kind == "sat":
                record.update(_sat_record(stats, alpha_fn, len(run.train_loader)))
            stop = finish_epoch(run, epoch, record)
        if run.world > 1:
            stop = _agree(stop, run.device)
            barrier()
        if stop:
            break
    if run.world > 1:
        cleanup()
    if run.master and run.variant.kind == "sat":
        _warn_low_share(run)
    return run.dir


def _alpha_fn(config: TrainConfig, epoch: int, steps: int, passes: int) -> Callable[[int], float]:
    """SAT's alpha at each step of `epoch`: the run's schedule in (step, steps of the run)."""
    return functools.partial(
        _alpha_of_step, config.alpha_schedule, config.alpha_base, epoch, steps, passes,
        config.alpha_horizon,
    )  # fmt: skip


def _alpha_of_step(name, base, epoch, steps, passes, horizon, step: int) -> float:
    return alpha_at(name, base, epoch, step, steps, passes, horizon)


def _sat_record(stats: dict[str, Any], alpha_fn: Callable[[int], float], steps: int) -> dict:
    """What SAT took from its map this epoch (metrics.jsonl): alpha at the epoch's first step
    and its mean over the epoch's steps, the realised share of perturbation elements from the
    map (None when no batch was perturbed by SAT), and the mean |delta| / eps of that part
    (the mean |s| of the elements taken from the map, before clamping to [0, 1])."""
    n_sat, n_map = stats["sat_elements"], stats["map_elements"]
    alphas = [alpha_fn(step) for step in range(max(steps, 1))]
    return {
        "alpha_t": alphas[0],
        "alpha_mean": sum(alphas) / len(alphas),
        "saliency_share": n_map / n_sat if n_sat else None,
        "map_delta": stats["map_abs_sum"] / n_map if n_map else None,
        "sat_elements": n_sat,
        "map_elements": n_map,
    }


def _warn_low_share(run: Run) -> None:
    """One line on stderr when less than half of the run's SAT perturbation came from the map
    (not for `constant`, where the user set the share with --alpha-base)."""
    from satpipe.train.eval.results import saliency_share

    share = saliency_share(run.dir)
    if share is None or share >= 0.5 or run.config.alpha_schedule == "constant":
        return
    cfg = run.config
    fix = "a smaller --alpha-base or a larger --alpha-horizon takes more"
    if cfg.alpha_schedule != "progress":
        expected = expected_map_share(
            "progress", cfg.alpha_base, run.passes, len(run.train_loader), cfg.alpha_horizon
        )
        fix = f"--alpha-schedule progress would take about {100 * expected:.0f}% from it"
    print(
        f"satpipe: warning: {run.dir}: only {100 * share:.0f}% of SAT's perturbation came from "
        f"the saliency map (--alpha-schedule {cfg.alpha_schedule}, --alpha-base "
        f"{cfg.alpha_base:g}, {run.passes} epochs); {fix}",
        file=sys.stderr,
    )


def _agree(stop: bool, device: torch.device) -> bool:
    """Rank 0's stop decision, on every rank."""
    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _open_run(config: TrainConfig, state: dict[str, Any] | None) -> Run:
    """Check the request, open the loaders, build (or restore) model and optimizer, and
    prepare the run directory: everything the epoch loop needs."""
    variant = VARIANTS.get(config.variant)
    _check_saliency(config, variant)
    map_rows = _pairing(config)
    rank, world, _, device = init_distributed(config.device)
    # Deterministic algorithms with --deterministic, else cuDNN's autotuner on CUDA (the
    # batch shapes are fixed). Recorded: config.json holds `deterministic`.
    configure(device, config.deterministic)
    held_out = _held_out(config)
    train_loader, test_loader = _loaders(config, variant, rank, world, device, held_out, map_rows)
    raw = _build_model(config, train_loader, device)
    optimizer = build_optimizer(config, raw)
    start = 0
    if state is not None:
        raw.load_state_dict(state["model"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], device)
        start = int(state["epoch"]) + 1
    model = raw
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    guard = _guard(config, held_out, device, state) if rank == 0 else None
    passes = variant.data_passes(config.epochs, config.variant_config())
    run = Run(config, variant, Path(config.out), rank, world, device, train_loader,
              test_loader, raw, model, optimizer, start, passes, guard)  # fmt: skip
    if run.master:
        if state is not None:
            check_recorded(run.dir, map_rows)
        prepare_dir(run, state, map_rows)
        note = variant.passes_note(config.epochs, config.variant_config())
        if note and state is None:
            print(note, file=sys.stderr)
    return run


def _check_saliency(config: TrainConfig, variant: TrainingVariant) -> None:
    """A saliency variant needs a saliency store, of a kind it can use (rrr: weak saliency)."""
    if not variant.needs_saliency:
        return
    if not config.saliency:
        raise SatpipeError(
            f"variant '{variant.name}' needs --saliency S.zarr ({variant.saliency_kind} "
            f"made for {config.data})"
        )
    from satpipe.data.saliency_store import open_saliency

    view = open_saliency(config.saliency, config.storage_options, require_complete=False)
    variant.check_saliency(config.saliency, view.method)


def _build_model(config: TrainConfig, train_loader, device: torch.device) -> nn.Module:
    """`config.model` for the loader's images, on `device` (channels_last on CUDA), its
    initial weights a function of the seed."""
    h, w, c = train_loader.image_shape
    torch.manual_seed(config.seed)
    raw = create_model(
        config.model, train_loader.num_classes, c, mean=config.input_mean, std=config.input_std
    ).to(device)
    # One probe forward: a model that cannot take these images fails here, in one line.
    probe_model(raw, (c, h, w), f"--model {config.model}")
    if device.type == "cuda":
        raw = raw.to(memory_format=torch.channels_last)
    return raw


def _guard(
    config: TrainConfig,
    held_out: np.ndarray | None,
    device: torch.device,
    state: dict[str, Any] | None,
) -> OverfitGuard | None:
    """The overfitting guard on the held-out rows (None without --guard-rows), its state
    restored on resume."""
    if held_out is None:
        return None
    guard = OverfitGuard(
        config.data, held_out, eps=config.eps / 255, steps=config.guard_steps,
        step_size=config.guard_step_size / 255, drop=config.guard_drop, seed=config.seed,
        batch_size=config.batch_size, device=device, storage_options=config.storage_options,
    )  # fmt: skip
    if state is not None and state.get("guard"):
        guard.load_state_dict(state["guard"])
    return guard


def _pairing(config: TrainConfig) -> np.ndarray | None:
    """The map row of every training image (None: matched; see satpipe.train.pairing)."""
    if config.saliency_pairing == "matched":
        return None
    return run_pairing(config.saliency_pairing, _train_size(config), config.seed, config.data)


def _held_out(config: TrainConfig) -> np.ndarray | None:
    """The guard's held-out training rows (seeded), or None without a guard."""
    if not config.guard_rows:
        return None
    return held_out_rows(_train_size(config), config.guard_rows, config.seed)


def _train_size(config: TrainConfig) -> int:
    """Images in the dataset store's train split."""
    from satpipe.data.dataset_store import open_dataset

    return len(open_dataset(config.data, config.storage_options).split("train"))


def _loaders(
    config: TrainConfig, variant: TrainingVariant, rank, world, device, held_out, map_rows=None
):
    """(train loader of this rank without the held-out rows, its maps paired by `map_rows`;
    test loader on rank 0 else None)."""
    from satpipe.data.loader import LoaderOptions, make_loader  # heavy: import when training

    common = dict(batch_size=config.batch_size, device=device, mode=config.loader_mode)
    saliency = config.saliency if variant.needs_saliency else None
    train_options = LoaderOptions(
        shuffle=True, augment=config.augment, seed=config.seed, rank=rank, world_size=world,
        **common,
    )  # fmt: skip
    train_loader = make_loader(
        config.data, "train", saliency, train_options, storage_options=config.storage_options,
        exclude_rows=held_out, map_rows=map_rows,
    )  # fmt: skip
    test_loader = None
    if rank == 0:  # rank 0 alone evaluates, on the whole test split
        test_options = LoaderOptions(shuffle=False, **common)
        test_loader = make_loader(
            config.data, "test", None, test_options, storage_options=config.storage_options
        )
    return train_loader, test_loader


def _epoch_record(
    epoch: int, stats: dict[str, Any], test_acc: float, eval_seconds: float
) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    return {
        "epoch": epoch,
        "loss": stats["loss"],
        "train_acc": stats["train_acc"],
        "test_acc": test_acc,
        "lr": stats["lr"],
        "seconds": stats["seconds"],
        "eval_seconds": eval_seconds,
        "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
        "attacked_batches": stats["attacked_batches"],
        "batches": stats["batches"],
    }
