"""The run directory a training run writes (see satpipe.train.trainer for its files): what a
run holds while it trains (`Run`), the checkpoint a resume starts from, the directory made
ready for a new or resumed run, and what rank 0 writes after every epoch (the guard's check,
the checkpoint, the metrics line, or the best epoch restored when the guard fires).

Every write that fails (disk full, read-only target) is one line naming the file; the
checkpoint before it stays loadable.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.core.errors import SatpipeError, quote
from satpipe.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from satpipe.train.config import RESUMABLE_CHANGES, TrainConfig, upgrade_saved
from satpipe.train.eval.staleness import mark_stale
from satpipe.train.guard import OverfitGuard
from satpipe.train.pairing import PAIRING_FILE, pairing_record
from satpipe.train.rng import rng_state
from satpipe.train.variants import TrainingVariant

__all__ = ["Run", "check_data", "finish_epoch", "prepare_dir", "resume_state"]


@dataclass
class Run:
    """What one run holds while it trains (built by `satpipe.train.trainer`)."""

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


def resume_state(config: TrainConfig) -> dict[str, Any] | None:
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


def prepare_dir(run: Run, state: dict[str, Any] | None, map_rows: np.ndarray | None = None) -> None:
    """Make RUN ready for training (rank 0): its results marked stale when it trains on, its
    config.json, a new shuffled run's pairing record, and metrics.jsonl cut back to the
    resumed checkpoint's epoch (or, with --overwrite, the old run's files removed)."""
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


def finish_epoch(run: Run, epoch: int, record: dict[str, Any]) -> bool:
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


def _restore_best(run: Run, epoch: int, record: dict[str, Any]) -> None:
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
    check_data(run.train_loader, run.test_loader)
    save_checkpoint(run.checkpoint, state)
    _append_metrics(run, record)
    print(
        f"epoch {epoch + 1}: overfitting guard fired: PGD accuracy on the {len(guard.rows)} "
        f"held-out rows fell to {100 * record['guard_acc']:.1f}% from its best "
        f"{100 * guard.best_acc:.1f}% (epoch {stopped['restored_epoch'] + 1}); restored that "
        "epoch's weights and stopped",
        file=sys.stderr,
    )


def _save_epoch(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Checkpoint (atomically), then the metrics line, then one line on stderr."""
    check_data(run.train_loader, run.test_loader)
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
    _append_metrics(run, record)
    guard = f"  guard PGD {100 * record['guard_acc']:.1f}%" if "guard_acc" in record else ""
    print(
        f"epoch {epoch + 1}/{run.passes}  loss {record['loss']:.4f}  "
        f"train {100 * record['train_acc']:.1f}%  test {100 * record['test_acc']:.1f}%  "
        f"{record['seconds']:.1f}s  {record['images_per_s']:.0f} img/s{guard}",
        file=sys.stderr,
    )


def _append_metrics(run: Run, record: dict[str, Any]) -> None:
    """One line of metrics.jsonl, after the epoch's checkpoint is saved."""
    with _writing(run.metrics, "the metrics"), run.metrics.open("a") as f:
        f.write(json.dumps(record) + "\n")


def check_data(*loaders) -> None:
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
