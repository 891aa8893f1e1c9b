"""The catastrophic-overfitting guard of fast adversarial training (Wong, Rice, Kolter 2020).

FGSM-based training can collapse within an epoch or two: PGD accuracy drops to about zero
while FGSM accuracy soars. Wong et al. stop when PGD accuracy on a training minibatch falls by
more than 0.2 from one epoch to the next and keep the weights from before. satpipe does the same
on rows the run never trains on:

- held out: `guard_rows` rows of the training split, drawn by (seed, GUARD_STREAM) alone (so
  every DDP rank holds out the same rows), are excluded from the training loader in both
  loader modes. Measuring on them tells robustness from memorisation, which a trained-on
  minibatch cannot; the price is a training split `guard_rows` rows smaller, recorded in the
  run's config and metrics.
- each epoch (rank 0): PGD at the run's eps, `guard_steps` sign steps of `guard_step_size`
  from a seeded random start, model in eval mode, on the unaugmented held-out images.
- collapse: accuracy more than `guard_drop` below the best so far (Wong et al. compare with the
  previous epoch; against the best, a collapse spread over two epochs is caught as well). The
  trainer then restores the best epoch's checkpoint (RUN/best.pt) as RUN/checkpoint.pt, marks
  the run stopped, and ends it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import model_state
from satpipe.core.seeding import generator
from satpipe.data.dataset_store import open_dataset
from satpipe.train.eval.attacks import pgd

GUARD_STREAM = 0x6A2D  # tags the guard's draws apart from every other seeded stream


def held_out_rows(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of the `k` rows (of `n`) the guard holds out: a function of the seed."""
    if not 0 < k < n:
        raise SatpipeError(f"--guard-rows must be in [1, {n - 1}] for a training split of {n}")
    perm = torch.randperm(n, generator=generator(seed, GUARD_STREAM))
    return np.sort(perm[:k].numpy()).astype(np.int64)


class OverfitGuard:
    """PGD accuracy on the held-out rows, the best so far, and the verdict after each epoch.

    `state_dict()` goes into every checkpoint, so a resumed run keeps its best; the images
    themselves are read again from the store.
    """

    def __init__(
        self,
        data: str | os.PathLike,
        rows: np.ndarray,
        *,
        eps: float,
        steps: int,
        step_size: float,
        drop: float,
        seed: int,
        batch_size: int,
        device: torch.device,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.rows = rows
        self.eps, self.steps, self.step_size, self.drop = eps, steps, step_size, drop
        self.seed, self.batch_size = seed, batch_size
        split = open_dataset(str(data), storage_options).split("train")
        images = np.asarray(split.images.get_orthogonal_selection((rows,)))
        labels = np.asarray(split.labels.get_orthogonal_selection((rows,)), dtype=np.int64)
        # (K, H, W, C) uint8 -> (K, C, H, W) float in [0, 1], as the loader makes batches.
        self.x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
        self.y = torch.from_numpy(labels).to(device)
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.history: list[float] = []

    def accuracy(self, model: nn.Module, epoch: int) -> float:
        """PGD accuracy (fraction) of `model` on the held-out rows after `epoch`."""
        correct = torch.zeros((), dtype=torch.int64, device=self.x.device)
        with model_state(model, training=False):
            for b, start in enumerate(range(0, len(self.y), self.batch_size)):
                x = self.x[start : start + self.batch_size]
                y = self.y[start : start + self.batch_size]
                g = generator(self.seed, epoch, b, GUARD_STREAM, device=x.device)
                x_adv = pgd(model, x, y, self.eps, self.step_size, self.steps, generator=g)
                with torch.no_grad():
                    correct += (model(x_adv).argmax(1) == y).sum()
        return correct.item() / len(self.y)

    def update(self, epoch: int, acc: float) -> str:
        """Record `acc` for `epoch`: "improved" (a new best, ties to the later epoch),
        "collapsed" (more than `drop` below the best), or "kept"."""
        self.history.append(acc)
        if self.best_acc is not None and acc < self.best_acc - self.drop:
            return "collapsed"
        if self.best_acc is None or acc >= self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            return "improved"
        return "kept"

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": len(self.rows),
            "drop": self.drop,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_acc = state.get("best_acc")
        self.best_epoch = state.get("best_epoch")
        self.history = list(state.get("history", []))
