"""Learning-rate schedules: the lr of a step as a closed-form function of where the step is.

A schedule maps (base lr, t, epochs) to the lr, t being the epoch (0-based) of the step, with
the fraction of the epoch done added for schedules that change within an epoch (`per_step`).
Nothing is carried between epochs, so a run resumed with another `--epochs` follows the
schedule of a run of that many epochs from the resumed epoch on (torch's scheduler state
would keep the old horizon: a cosine then rises again after the old end).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from satpipe.core.registry import Registry


@dataclass(frozen=True)
class Schedule:
    """lr(base_lr, t, epochs) -> float; `per_step`: evaluated at every step (t fractional),
    else once per epoch (t whole)."""

    lr: Callable[[float, float, int], float]
    summary: str
    per_step: bool = False


SCHEDULES: Registry[Schedule] = Registry("schedule")


def _constant(base: float, t: float, epochs: int) -> float:
    return base


def _cosine(base: float, t: float, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))


def step_milestones(epochs: int) -> list[int]:
    """Epochs at which the `step` schedule multiplies the lr by 0.1: 50% and 75% of the run."""
    return sorted({max(1, epochs // 2), max(1, epochs * 3 // 4)})


def _step(base: float, t: float, epochs: int) -> float:
    lr = base
    for _ in range(bisect.bisect_right(step_milestones(epochs), int(t))):
        lr *= 0.1  # repeated, as torch's MultiStepLR does: the same bits
    return lr


def _cyclic(base: float, t: float, epochs: int) -> float:
    """Wong et al.'s cyclic lr: 0 -> base at half the run -> 0, linear, per step."""
    half = epochs / 2.0
    return base * max(0.0, 1.0 - abs(min(t, epochs) - half) / half)


SCHEDULES.register("none", Schedule(_constant, "constant lr"))
SCHEDULES.register("cosine", Schedule(_cosine, "cosine from lr to 0 over the epochs, per epoch"))
SCHEDULES.register("step", Schedule(_step, "x0.1 at 50% and at 75% of the epochs"))
# Wong, Rice, Kolter 2020 ("Fast is better than free"), as their code runs it
# (locuslab/fast_adversarial, CIFAR10/train_fgsm.py: torch CyclicLR from 0 to --lr-max, up for
# half the steps and down for the other half, stepped after every batch; their later
# "superconverge" schedule of Rice et al. 2020 peaks at 2/5 instead).
SCHEDULES.register(
    "cyclic",
    Schedule(_cyclic, "triangle 0 -> lr at half the run -> 0, set every step (Wong et al.)", True),
)


def lr_at(name: str, base: float, epoch: int, epochs: int, fraction: float = 0.0) -> float:
    """The lr of schedule `name` for a step `fraction` of the way through `epoch`: the
    trainer passes step / steps_per_epoch, so a run's first step of a per-step schedule has
    t = 0 (torch's CyclicLR also starts at its base lr, 0 here)."""
    schedule = SCHEDULES.get(name)
    t = epoch + fraction if schedule.per_step else epoch
    return float(schedule.lr(base, t, epochs))
