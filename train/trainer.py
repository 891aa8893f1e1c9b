"""The training loop: one typed config in, one run directory out.

    RUN/config.json      the TrainConfig as a plain dict
    RUN/checkpoint.pt    latest finished epoch (model record, optimizer, RNG states),
                         replaced atomically every epoch; `--resume` continues from it
    RUN/metrics.jsonl    one JSON line per epoch: loss, train/test accuracy, time, images/s
    RUN/train.lock       while a run trains: its pid and host (one writer per run directory)

Nothing is saved from data that was not checked: the first epoch reads every image and label,
each shard checked against the digest recorded when the dataset store was written, and a
mismatch stops the run with one line before its first checkpoint. A write that fails (disk
full, read-only target) is one line naming the file; the checkpoint before it stays loadable
and `--resume` continues from it.

Determinism: every random draw of a training step (coins, noise, SAT components, PGD random
starts) comes from a generator seeded by (seed, epoch, step, rank), the loader's order and
augmentation are functions of (seed, epoch, rank), and the model starts from `seed`. So on CPU a
run resumed after epoch e ends with the same weights, bit for bit, as one never interrupted.
On CUDA: bf16 autocast and channels_last (fast, not bit-exact).

Under torchrun (WORLD_SIZE set) the model is wrapped in DDP; each rank reads its own shard of
every epoch, rank 0 alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from satpipe.errors import SatpipeError, os_error_line
from satpipe.progress import progress
from satpipe.seeding import generator
from satpipe.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from satpipe.train.config import RESUMABLE_CHANGES, TrainConfig
from satpipe.train.distributed import barrier, cleanup, init_distributed, sync_buffers
from satpipe.train.evaluate import clean_accuracy
from satpipe.train.models import create_model, probe_model
from satpipe.train.perturb import alpha_schedule
from satpipe.train.runlock import RunLock
from satpipe.train.schedules import lr_at
from satpipe.train.variants import VARIANTS, Variant, VariantConfig

__all__ = ["TrainConfig", "train", "train_one_epoch"]


# --------------------------------------------------------------------------------------------
# Pieces of the loop


STEP_STREAM = 0x5A7  # tags the per-step streams apart from every other seeded stream


def step_generator(
    seed: int, epoch: int, step: int, rank: int, device: torch.device
) -> torch.Generator:
    """The generator for all randomness of one training step: a function of its coordinates."""
    return generator(seed, epoch, step, rank, STEP_STREAM, device=device)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with weights_only=True).

    The loop draws from per-step generators only; these are saved so code that does use the
    global generators (a user's model, say) resumes exactly too.
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _bar(description: str, total: int, enabled: bool) -> Iterator:
    if not enabled:
        yield lambda n=1: None
        return
    with progress(description, total) as advance:
        yield advance


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    variant: Variant,
    vcfg: VariantConfig,
    epoch: int,
    *,
    seed: int = 0,
    rank: int = 0,
    amp: bool = False,
    attack_model: nn.Module | None = None,
    description: str | None = None,
    show_progress: bool = True,
    saliency_fn=None,
) -> dict[str, float]:
    """One pass over `loader` (already `set_epoch`-ed).

    Returns loss (mean per image), train_acc, images (all ranks), seconds, batches and
    attacked_batches (this rank's batches on which the K-step attack ran).

    `saliency_fn(model, x, y) -> s`, when given, replaces the stored maps by maps computed on
    the fly from the current model (the benchmark's baseline, what the authors' code does).
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = attacked = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and amp else contextlib.nullcontext()
    )
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    desc = description or f"epoch {epoch + 1} {variant.name}"
    with _bar(desc, len(loader), show_progress) as advance:
        for step, (x, s, y) in enumerate(loader):
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            gen = step_generator(seed, epoch, step, rank, device)
            with autocast:
                if saliency_fn is not None:
                    s = saliency_fn(attack_model or model, x, y)
                out = variant.step(
                    model, x, s, y, epoch=epoch, cfg=vcfg, generator=gen, attack_model=attack_model
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            # Accumulate on the device: no host sync per step.
            loss_sum += out.loss.detach().double() * len(y)
            correct += (out.logits.detach().argmax(1) == y).sum()
            seen += len(y)
            attacked += int(out.attacked)
            advance()
    totals = torch.stack(
        [loss_sum, correct.double(), torch.tensor(float(seen), device=device, dtype=torch.float64)]
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        # DDP keeps weights in lockstep but BatchNorm statistics per rank: average them so
        # evaluation and checkpoints see every rank's data and all ranks agree.
        sync_buffers(getattr(model, "module", model))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, correct_total, n = totals.tolist()
    return {
        "loss": loss_total / max(n, 1),
        "train_acc": correct_total / max(n, 1),
        "images": int(n),
        "seconds": seconds,
        "batches": step + 1 if seen else 0,
        "attacked_batches": attacked,
    }


# --------------------------------------------------------------------------------------------
# Resume helpers


def _check_resumable(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    now = config.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed[:4])
        raise SatpipeError(f"{path}: cannot resume with a different config ({detail})")


def _rewrite_metrics(path: Path, last_epoch: int, last_record: dict[str, Any] | None) -> None:
    """Keep the lines of finished epochs only (a crash may leave one more or one fewer)."""
    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("epoch", math.inf) <= last_epoch:
                    lines.append(line)
    if last_record and not any(json.loads(ln).get("epoch") == last_epoch for ln in lines):
        lines.append(json.dumps(last_record))
    path.write_text("".join(ln + "\n" for ln in lines))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """What one run holds while it trains (built by `_open_run`)."""

    config: TrainConfig
    variant: Variant
    dir: Path
    rank: int
    world: int
    device: torch.device
    train_loader: Any
    test_loader: Any
    raw: nn.Module  # the module itself: checkpoints and attacks use it
    model: nn.Module  # what the step calls: `raw`, or DDP around it
    optimizer: torch.optim.Optimizer
    start: int  # first epoch to train

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"


def train(config: TrainConfig) -> Path:
    """Train `config.variant` and return the run directory (see the module docstring).

    Refuses (SatpipeError, one line): a run directory another process is training into, a
    SAT variant without a saliency store, an incomplete or mismatched saliency store (the
    loader checks), data that differs from what its store recorded, an existing run without
    --resume or --overwrite, a resume whose config differs in anything but epochs/device/out.
    """
    with _run_lock(config):
        return _train_locked(config)


def _run_lock(config: TrainConfig):
    """The run directory's lock, taken by the process that writes it (rank 0)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return RunLock(config.out)


def _check_data(*loaders) -> None:
    """Finish the in-flight check of the data (the first epoch read it all) before anything
    is saved from it: a shard that differs from its recorded digest stops the run here."""
    for loader in loaders:
        if loader is not None and hasattr(loader, "finish_check"):
            loader.finish_check()


@contextlib.contextmanager
def _writing(path: Path, what: str):
    """A failed write (disk full, read-only) as one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise SatpipeError(f"{path}: cannot write {what} ({os_error_line(exc)})") from exc


def _train_locked(config: TrainConfig) -> Path:
    run = _open_run(config)
    use_amp = config.amp and run.device.type == "cuda"
    vcfg = config.variant_config()
    for epoch in range(run.start, config.epochs):
        run.train_loader.set_epoch(epoch)
        lr = lr_at(config.schedule, config.lr, epoch, config.epochs)
        set_lr(run.optimizer, lr)
        stats = train_one_epoch(
            run.model, run.train_loader, run.optimizer, run.variant, vcfg, epoch,
            seed=config.seed, rank=run.rank, amp=use_amp, attack_model=run.raw,
            show_progress=run.master,
            description=f"epoch {epoch + 1}/{config.epochs} {run.variant.name}",
        )  # fmt: skip
        _check_data(run.train_loader)
        if run.master:
            t0 = time.perf_counter()
            test_acc = clean_accuracy(run.raw, run.test_loader, amp=use_amp)
            record = _epoch_record(epoch, stats, test_acc, lr, time.perf_counter() - t0)
            if run.variant.needs_saliency:
                record["alpha_t"] = alpha_schedule(epoch, config.alpha_base)
            _save_epoch(run, epoch, record)
        if run.world > 1:
            barrier()
    if run.world > 1:
        cleanup()
    return run.dir


def _open_run(config: TrainConfig) -> _Run:
    """Check the request, open the loaders, build (or restore) model and optimizer, and
    prepare the run directory: everything the epoch loop needs."""
    variant = VARIANTS.get(config.variant)
    if variant.needs_saliency and not config.saliency:
        raise SatpipeError(
            f"variant '{variant.name}' needs --saliency S.zarr (a saliency store "
            f"made for {config.data})"
        )
    run_dir = Path(config.out)
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    state = None
    if config.resume:
        state = load_checkpoint(ckpt_path)
        _check_resumable(config, state.get("config", {}), ckpt_path)
    elif (ckpt_path.exists() or metrics_path.exists()) and not config.overwrite:
        raise SatpipeError(
            f"{run_dir}: already holds a run (pass --resume to continue it or "
            f"--overwrite to start over)"
        )

    rank, world, _, device = init_distributed(config.device)
    train_loader, test_loader = _loaders(config, variant, rank, world, device)
    h, w, c = train_loader.image_shape
    torch.manual_seed(config.seed)  # the initial weights are a function of the seed
    raw = create_model(
        config.model, train_loader.num_classes, c, mean=config.input_mean, std=config.input_std
    ).to(device)
    # One probe forward: a model that cannot take these images fails here, in one line.
    probe_model(raw, (c, h, w), f"--model {config.model}")
    if device.type == "cuda":
        raw = raw.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, raw)
    start = 0
    if state is not None:
        raw.load_state_dict(state["model"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = int(state["epoch"]) + 1
    model = raw
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(config, variant, run_dir, rank, world, device, train_loader, test_loader,
               raw, model, optimizer, start)  # fmt: skip
    if run.master:
        _prepare_dir(run, state)
    return run


def _loaders(config: TrainConfig, variant: Variant, rank: int, world: int, device):
    """(train loader of this rank, test loader on rank 0 else None)."""
    from satpipe.data.loader import make_loader  # heavy (zarr, threads): import when training

    common = dict(
        batch_size=config.batch_size,
        device=device,
        mode=config.loader_mode,
        storage_options=config.storage_options,
    )
    saliency = config.saliency if variant.needs_saliency else None
    train_loader = make_loader(
        config.data, "train", saliency, shuffle=True, augment=config.augment, seed=config.seed,
        rank=rank, world_size=world, **common,
    )  # fmt: skip
    test_loader = None
    if rank == 0:  # rank 0 alone evaluates, on the whole test split
        test_loader = make_loader(config.data, "test", None, shuffle=False, **common)
    return train_loader, test_loader


def _prepare_dir(run: _Run, state: dict[str, Any] | None) -> None:
    with _writing(run.dir / "config.json", "the run's config"):
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "config.json").write_text(json.dumps(run.config.to_dict(), indent=2) + "\n")
    if state is not None:
        with _writing(run.metrics, "the metrics"):
            _rewrite_metrics(run.metrics, run.start - 1, state.get("metrics"))
    elif run.metrics.exists():
        run.metrics.unlink()  # --overwrite
        run.checkpoint.unlink(missing_ok=True)


def _epoch_record(
    epoch: int, stats: dict[str, Any], test_acc: float, lr: float, eval_seconds: float
) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    return {
        "epoch": epoch,
        "loss": stats["loss"],
        "train_acc": stats["train_acc"],
        "test_acc": test_acc,
        "lr": lr,
        "seconds": stats["seconds"],
        "eval_seconds": eval_seconds,
        "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
        "attacked_batches": stats["attacked_batches"],
        "batches": stats["batches"],
    }


def _save_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Checkpoint (atomically), then the metrics line, then one line on stderr."""
    _check_data(run.train_loader, run.test_loader)
    c = run.train_loader.image_shape[2]
    save_checkpoint(
        run.checkpoint,
        {
            "model": model_record(run.raw, run.train_loader.num_classes, c),
            "variant": run.variant.name,
            "epoch": epoch,
            "config": run.config.to_dict(),
            "optimizer": run.optimizer.state_dict(),
            # The lr is a function of (epoch, epochs): no scheduler state to carry.
            "scheduler": {"schedule": run.config.schedule, "epochs": run.config.epochs},
            "rng": rng_state(),
            "metrics": record,
        },
    )
    with _writing(run.metrics, "the metrics"), run.metrics.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"epoch {epoch + 1}/{run.config.epochs}  loss {record['loss']:.4f}  "
        f"train {100 * record['train_acc']:.1f}%  test {100 * record['test_acc']:.1f}%  "
        f"{record['seconds']:.1f}s  {record['images_per_s']:.0f} img/s",
        file=sys.stderr,
    )
