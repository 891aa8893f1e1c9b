"""`robust_accuracy(model, x, y, attack="pgd", eps=8/255)`: robustness of a model in memory on
images in memory, with the same attacks, settings and randomness as `satpipe eval`.

    r = robust_accuracy(model, x, y, attack="autoattack", eps=8 / 255)
    r.accuracy, r.interval, r.correct     # fraction, Wilson 95% (fractions), (N,) bool

An image counts as correct when the model is right on it clean AND on its adversarial example
(RobustBench's robust accuracy). With the defaults (5 PGD steps of 2/255, one restart, seed 0,
batches of 256) the bits equal those `satpipe eval` writes for the same model and the same
images in the same order. The model runs in eval mode in fp32 (its mode is restored after).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.stats import Interval, wilson
from satpipe.train.eval.attacks import ATTACKS, AttackContext, attack_set, clean_correct
from satpipe.train.eval.attacks.reference import ensemble_components, library_warnings
from satpipe.train.eval.evaluate import check_model
from satpipe.train.eval.subset import EvalSet


@dataclass(frozen=True)
class RobustAccuracy:
    """Per-image results of one attack at one eps: `correct` (N,) bool (right clean and under
    attack), `clean` (N,) bool; `accuracy` (fraction) and its Wilson 95% `interval`."""

    attack: str
    eps: float
    correct: np.ndarray
    clean: np.ndarray

    @property
    def n(self) -> int:
        return int(len(self.correct))

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def interval(self) -> Interval:
        return wilson(int(self.correct.sum()), self.n)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.mean())

    def __str__(self) -> str:
        i = self.interval
        return (
            f"{self.attack} at eps {self.eps * 255:g}/255: {100 * self.accuracy:.2f}% "
            f"[{100 * i.low:.2f}, {100 * i.high:.2f}] of {self.n} (clean "
            f"{100 * self.clean_accuracy:.2f}%)"
        )


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "pgd",
    eps: float = 8 / 255,
    *,
    steps: int = 5,
    step_size: float = 2 / 255,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    square_queries: int | None = None,
) -> RobustAccuracy:
    """Accuracy of `model` on (x, y) under `attack` (any name of `satpipe list attacks`,
    "autoattack" included) at L-inf radius `eps`.

    x: (N, C, H, W) float in [0, 1]; y: (N,) int class labels; both moved to the model's
    device. eps, step_size: pixel units (8/255, not 8). steps, step_size, restarts: PGD and
    PGD-CW; the AutoAttack components use their standard settings (square_queries: Square's
    budget, default the standard 5000). Same arguments, same bits (on CPU bit for bit).
    """
    entry = ATTACKS.get(attack)
    _check_inputs(x, y, eps)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x, y = x.to(device, torch.float32), y.to(device, torch.int64)
    was_training = model.training
    model.eval()
    try:
        num_classes = _num_classes(model, x, y, attack)
        ctx = AttackContext(
            eps=float(eps), num_classes=num_classes, seed=seed, steps=steps,
            step_size=float(step_size), restarts=restarts,
            **({} if square_queries is None else {"square_queries": square_queries}),
        )  # fmt: skip
        clean = clean_correct(model, x, y, batch_size)
        parts = None
        if entry.components:
            standard, _ = ensemble_components(num_classes)
            parts = tuple(c for c in entry.components if c in standard)
        with library_warnings():
            outcome = attack_set(model, entry, x, y, clean, ctx, batch_size, components=parts)
    finally:
        model.train(was_training)
    return RobustAccuracy(attack, float(eps), outcome.correct.cpu().numpy(), clean.cpu().numpy())


def _check_inputs(x, y, eps: float) -> None:
    """Refuse (one line) an eps outside [0, 1] or images and labels of the wrong form."""
    if not 0.0 <= float(eps) <= 1.0:
        raise SatpipeError(f"eps is in pixel units (8/255 = {8 / 255:.4f}), got {eps}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise SatpipeError(f"x must be a float (N, C, H, W) tensor, got {_shape(x)}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise SatpipeError(f"y must be a (N,) = ({x.shape[0]},) tensor, got {_shape(y)}")
    if len(y) == 0:
        raise SatpipeError("x and y hold no images")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise SatpipeError("x must lie in [0, 1] (models normalise inside)")


def _num_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str) -> int:
    """The model's class count, from one probe forward (in eval mode); refuses (one line) a
    model that returns no (N, classes) logits, labels outside its classes, or a model the
    attack cannot run on (`check_model`)."""
    with torch.no_grad():
        out = model(x[:1])
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SatpipeError(f"model {type(model).__name__} must return (N, classes) logits, "
                           f"got {shape}")  # fmt: skip
    num_classes = int(out.shape[1])
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise SatpipeError(f"y holds labels outside [0, {num_classes}) (the model's classes)")
    ATTACKS.get(attack).check_classes(num_classes)
    where = f"model {type(model).__name__}"
    check_model(model, EvalSet(x, y, np.arange(len(y)), len(y)), num_classes, [attack], where)
    return num_classes


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
