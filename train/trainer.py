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
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from satpipe.core.errors import SatpipeError, quote
from satpipe.core.precision import configure
from satpipe.core.progress import progress
from satpipe.core.seeding import generator
from satpipe.data.outputs import check_run_output
from satpipe.train.alpha_schedules import alpha_at, expected_map_share
from satpipe.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from satpipe.train.config import RESUMABLE_CHANGES, TrainConfig, upgrade_saved
from satpipe.train.distributed import barrier, cleanup, init_distributed, sync_buffers
from satpipe.train.eval.evaluate import clean_accuracy
from satpipe.train.eval.staleness import mark_stale
from satpipe.train.guard import OverfitGuard, held_out_rows
from satpipe.train.models import create_model, probe_model
from satpipe.train.pairing import PAIRING_FILE, check_recorded, pairing_record, run_pairing
from satpipe.train.runlock import RunLock
from satpipe.train.schedules import SCHEDULES, lr_at
from satpipe.train.variants import VARIANTS, TrainingVariant, VariantConfig

__all__ = ["TrainConfig", "run_finished", "train", "train_one_epoch"]


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


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state()`'s states. CUDA: only `device`'s own generator (this process's
    GPU), from the state saved for the same index; a checkpoint saved on 8 GPUs resumes on 1,
    and a state for an index this machine lacks is not restored (nothing draws from it)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state.get("cuda")
    if saved is None or device is None or device.type != "cuda":
        return
    index = 0 if device.index is None else device.index
    if index < len(saved):
        torch.cuda.set_rng_state(saved[index], index)


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
    saliency_fn=None,
    lr_fn: Callable[[float], float] | None = None,
    alpha_fn: Callable[[int], float] | None = None,
) -> dict[str, float]:
    """One pass over `loader` (already `set_epoch`-ed): `variant.train_batch` on every batch.

    Returns loss (mean per image), train_acc, images (all ranks), seconds, batches,
    attacked_batches (this rank's batches on which the attack ran), lr (at the end), and what
    SAT took from the maps (all ranks): sat_elements (perturbation elements SAT drew),
    map_elements (of those, taken from the map) and map_abs_sum (their sum of |s|), counted on
    the device and read once with the loss.

    `saliency_fn(model, x, y) -> s`, when given, replaces the stored maps by maps computed on
    the fly from the current model (the benchmark's baseline, what the authors' code does).
    `lr_fn(f) -> lr`, when given, sets the lr before each batch, f = step / steps in [0, 1).
    `alpha_fn(step) -> alpha`, when given, is SAT's alpha at each step of the epoch (the run's
    alpha schedule); without it a SAT step uses `vcfg.alpha`, else the per-epoch formula.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    sat = torch.zeros(2, device=device, dtype=torch.float64)  # map elements, sum of their |s|
    seen = attacked = sat_elements = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and amp else contextlib.nullcontext()
    )
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    desc = description or f"epoch {epoch + 1} {variant.name}"
    state = variant.begin_epoch()
    steps = len(loader)
    with _bar(desc, steps, show_progress) as advance:
        for step, (x, s, y) in enumerate(loader):
            if lr_fn is not None:
                set_lr(optimizer, lr_fn(step / steps))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            gen = step_generator(seed, epoch, step, rank, device)
            if saliency_fn is not None:
                with autocast:
                    s = saliency_fn(attack_model or model, x, y)
            cfg = vcfg if alpha_fn is None else replace(vcfg, alpha=alpha_fn(step))
            out = variant.train_batch(
                model, optimizer, x, s, y, epoch=epoch, cfg=cfg, generator=gen,
                attack_model=attack_model, autocast=autocast, state=state,
            )  # fmt: skip
            # Accumulate on the device: no host sync per step.
            loss_sum += out.loss.detach().double() * len(y)
            correct += (out.logits.detach().argmax(1) == y).sum()
            seen += len(y)
            attacked += int(out.attacked)
            if out.sat is not None:
                sat += out.sat
                sat_elements += out.sat_elements
            advance()
    counts = torch.tensor([float(seen), float(sat_elements)], device=device, dtype=torch.float64)
    totals = torch.cat([torch.stack([loss_sum, correct.double()]), counts, sat])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        # DDP keeps weights in lockstep but BatchNorm statistics per rank: average them so
        # evaluation and checkpoints see every rank's data and all ranks agree.
        sync_buffers(getattr(model, "module", model))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, correct_total, n, sat_total, map_total, map_abs = totals.tolist()
    return {
        "loss": loss_total / max(n, 1),
        "train_acc": correct_total / max(n, 1),
        "images": int(n),
        "seconds": seconds,
        "batches": step + 1 if seen else 0,
        "attacked_batches": attacked,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "sat_elements": int(sat_total),
        "map_elements": int(map_total),
        "map_abs_sum": map_abs,
    }


# --------------------------------------------------------------------------------------------
# Resume helpers


def _check_resumable(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    now = config.to_dict()
    saved = upgrade_saved(saved)  # a run saved before a key was renamed or added
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
    variant: TrainingVariant
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
    passes: int  # epochs (passes over the data) the run makes: Free's ceil(epochs / m)
    guard: OverfitGuard | None  # rank 0, with --guard-rows

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"


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
        raise SatpipeError(f"{path}: cannot write {what} ({quote(exc)})") from exc


def _train_locked(config: TrainConfig) -> Path:
    state = _resume_state(config)
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
        _check_data(run.train_loader)
        stop = False
        if run.master:
            t0 = time.perf_counter()
            test_acc = clean_accuracy(run.raw, run.test_loader, amp=use_amp)
            record = _epoch_record(epoch, stats, test_acc, time.perf_counter() - t0)
            if run.variant.kind == "sat":
                record.update(_sat_record(stats, alpha_fn, len(run.train_loader)))
            stop = _finish_epoch(run, epoch, record)
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


def _warn_low_share(run: _Run) -> None:
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


def _resume_state(config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from (checked against the config), or None for a new run."""
    run_dir = Path(config.out)
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    if config.resume:
        state = load_checkpoint(ckpt_path)
        _check_resumable(config, state.get("config", {}), ckpt_path)
        return state
    if (ckpt_path.exists() or metrics_path.exists()) and not config.overwrite:
        raise SatpipeError(
            f"{run_dir}: already holds a run (pass --resume to continue it or "
            f"--overwrite to start over)"
        )
    return None


def _open_run(config: TrainConfig, state: dict[str, Any] | None) -> _Run:
    """Check the request, open the loaders, build (or restore) model and optimizer, and
    prepare the run directory: everything the epoch loop needs."""
    variant = VARIANTS.get(config.variant)
    if variant.needs_saliency and not config.saliency:
        raise SatpipeError(
            f"variant '{variant.name}' needs --saliency S.zarr ({variant.saliency_kind} "
            f"made for {config.data})"
        )
    if variant.needs_saliency:
        from satpipe.data.saliency_store import open_saliency

        view = open_saliency(config.saliency, config.storage_options, require_complete=False)
        variant.check_saliency(config.saliency, view.method)
    map_rows = _pairing(config)
    rank, world, _, device = init_distributed(config.device)
    # Deterministic algorithms with --deterministic, else cuDNN's autotuner on CUDA (the
    # batch shapes are fixed). Recorded: config.json holds `deterministic`.
    configure(device, config.deterministic)
    held_out = _held_out(config)
    train_loader, test_loader = _loaders(config, variant, rank, world, device, held_out, map_rows)
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
        set_rng_state(state["rng"], device)
        start = int(state["epoch"]) + 1
    model = raw
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    guard = None
    if rank == 0 and held_out is not None:
        guard = OverfitGuard(
            config.data, held_out, eps=config.eps / 255, steps=config.guard_steps,
            step_size=config.guard_step_size / 255, drop=config.guard_drop, seed=config.seed,
            batch_size=config.batch_size, device=device, storage_options=config.storage_options,
        )  # fmt: skip
        if state is not None and state.get("guard"):
            guard.load_state_dict(state["guard"])
    passes = variant.data_passes(config.epochs, config.variant_config())
    run = _Run(config, variant, Path(config.out), rank, world, device, train_loader,
               test_loader, raw, model, optimizer, start, passes, guard)  # fmt: skip
    if run.master:
        if state is not None:
            check_recorded(run.dir, map_rows)
        _prepare_dir(run, state, map_rows)
        note = variant.passes_note(config.epochs, config.variant_config())
        if note and state is None:
            print(note, file=sys.stderr)
    return run


def _pairing(config: TrainConfig) -> np.ndarray | None:
    """The map row of every training image (None: matched; see satpipe.train.pairing)."""
    if config.saliency_pairing == "matched":
        return None
    from satpipe.data.dataset_store import open_dataset

    n = len(open_dataset(config.data, config.storage_options).split("train"))
    return run_pairing(config.saliency_pairing, n, config.seed, config.data)


def _held_out(config: TrainConfig) -> np.ndarray | None:
    """The guard's held-out training rows (seeded), or None without a guard."""
    if not config.guard_rows:
        return None
    from satpipe.data.dataset_store import open_dataset

    n = len(open_dataset(config.data, config.storage_options).split("train"))
    return held_out_rows(n, config.guard_rows, config.seed)


def _loaders(
    config: TrainConfig, variant: TrainingVariant, rank, world, device, held_out, map_rows=None
):
    """(train loader of this rank without the held-out rows, its maps paired by `map_rows`;
    test loader on rank 0 else None)."""
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
        rank=rank, world_size=world, exclude_rows=held_out, map_rows=map_rows, **common,
    )  # fmt: skip
    test_loader = None
    if rank == 0:  # rank 0 alone evaluates, on the whole test split
        test_loader = make_loader(config.data, "test", None, shuffle=False, **common)
    return train_loader, test_loader


def _prepare_dir(run: _Run, state: dict[str, Any] | None, map_rows=None) -> None:
    if run.start < run.passes:  # the checkpoint is about to change: its results no longer hold
        mark_stale(run.dir, f"the run trained on from epoch {run.start + 1} after this evaluation")
    with _writing(run.dir / "config.json", "the run's config"):
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "config.json").write_text(json.dumps(run.config.to_dict(), indent=2) + "\n")
    pairing = run.dir / PAIRING_FILE
    if map_rows is not None and state is None:
        with _writing(pairing, "the pairing"):
            pairing.write_text(json.dumps(pairing_record(map_rows, run.config.seed)) + "\n")
    elif map_rows is None and state is None:
        pairing.unlink(missing_ok=True)  # --overwrite of a shuffled run
    if state is not None:
        with _writing(run.metrics, "the metrics"):
            _rewrite_metrics(run.metrics, run.start - 1, state.get("metrics"))
    elif run.metrics.exists():
        run.metrics.unlink()  # --overwrite
        run.checkpoint.unlink(missing_ok=True)
        run.best.unlink(missing_ok=True)


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


def _finish_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> bool:
    """Rank 0 after an epoch: the guard's check, then the checkpoint. True: stop the run."""
    guard = run.guard
    if guard is None:
        _save_epoch(run, epoch, record)
        return False
    t0 = time.perf_counter()
    acc = guard.accuracy(run.raw, epoch)
    record["guard_acc"] = acc
    record["guard_seconds"] = time.perf_counter() - t0  # part of the method's cost
    verdict = guard.update(epoch, acc)
    if verdict == "collapsed":
        _restore_best(run, epoch, record)
        return True
    _save_epoch(run, epoch, record)
    if verdict == "improved":  # the same bytes, under the name the guard restores from
        tmp = run.best.with_name(".best.pt.tmp")
        with _writing(run.best, "the best checkpoint"):
            shutil.copyfile(run.checkpoint, tmp)
            tmp.replace(run.best)
    return False


def _restore_best(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """The guard fired after `epoch`: RUN/checkpoint.pt becomes the best epoch's checkpoint,
    marked stopped (final), and the metrics line says so."""
    guard = run.guard
    best = load_checkpoint(run.best)
    best.pop("satpipe", None)
    stopped = {
        "reason": "catastrophic-overfitting guard",
        "epoch": epoch,
        "restored_epoch": int(best["epoch"]),
        "guard_acc": record["guard_acc"],
        "best_acc": guard.best_acc,
    }
    record.update(guard_fired=True, restored_epoch=stopped["restored_epoch"])
    run.raw.load_state_dict(best["model"]["state_dict"])
    # "epoch" stays the last epoch trained (what the loop and the run's time cover); the
    # weights are those of "weights_epoch".
    state = {**best, "epoch": epoch, "weights_epoch": stopped["restored_epoch"],
             "guard": {**guard.state_dict(), "fired": True}, "stopped": stopped,
             "metrics": record}  # fmt: skip
    _check_data(run.train_loader, run.test_loader)
    save_checkpoint(run.checkpoint, state)
    with _writing(run.metrics, "the metrics"), run.metrics.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"epoch {epoch + 1}: overfitting guard fired: PGD accuracy on the {len(guard.rows)} "
        f"held-out rows fell to {100 * record['guard_acc']:.1f}% from its best "
        f"{100 * guard.best_acc:.1f}% (epoch {stopped['restored_epoch'] + 1}); restored that "
        "epoch's weights and stopped",
        file=sys.stderr,
    )


def _save_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Checkpoint (atomically), then the metrics line, then one line on stderr."""
    _check_data(run.train_loader, run.test_loader)
    c = run.train_loader.image_shape[2]
    state = {
        "model": model_record(run.raw, run.train_loader.num_classes, c),
        "variant": run.variant.name,
        "epoch": epoch,
        "config": run.config.to_dict(),
        "optimizer": run.optimizer.state_dict(),
        # The lr is a function of (epoch, step, passes): no scheduler state to carry.
        "scheduler": {"lr_schedule": run.config.lr_schedule, "passes": run.passes},
        "rng": rng_state(),
        "metrics": record,
    }
    if run.guard is not None:
        state["guard"] = {**run.guard.state_dict(), "fired": False}
    save_checkpoint(run.checkpoint, state)
    with _writing(run.metrics, "the metrics"), run.metrics.open("a") as f:
        f.write(json.dumps(record) + "\n")
    guard = f"  guard PGD {100 * record['guard_acc']:.1f}%" if "guard_acc" in record else ""
    print(
        f"epoch {epoch + 1}/{run.passes}  loss {record['loss']:.4f}  "
        f"train {100 * record['train_acc']:.1f}%  test {100 * record['test_acc']:.1f}%  "
        f"{record['seconds']:.1f}s  {record['images_per_s']:.0f} img/s{guard}",
        file=sys.stderr,
    )
