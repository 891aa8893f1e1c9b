"""SAT's alpha schedules: the probability that a perturbation element is random noise rather
than the saliency map, as a closed-form function of where the step is in the run.

A schedule maps (a, step, steps, horizon, steps_per_epoch) to alpha in [0, 1], `step` the
0-based step of the whole run and `steps` the run's total (passes x steps per epoch). Nothing
is carried between steps, so a run resumed with another `--epochs` follows the schedule of a
run of that length from the resumed epoch on, as the lr schedules do.

- `progress`: alpha = a ** (p * H / 10), p = step / steps in [0, 1): the paper's curve over
  its H = 100 epochs, compressed onto any run length (3 epochs cover the same alphas as 100).
- `epoch`: alpha = a ** (t / 10), t the 0-based epoch of the step: the paper's per-epoch
  formula as its code runs it (on a short run almost every element is noise).
- `constant`: alpha = a throughout (a = 1: SAT without saliency; a = 0: the map alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry

DEFAULT_HORIZON = 100.0  # the paper's epochs


@dataclass(frozen=True)
class AlphaSchedule:
    """alpha(a, step, steps, horizon, steps_per_epoch) -> float in [0, 1]."""

    alpha: Callable[[float, int, int, float, int], float]
    summary: str


ALPHA_SCHEDULES: Registry[AlphaSchedule] = Registry("alpha schedule", "alpha-schedules")


def _progress(a: float, step: int, steps: int, horizon: float, per_epoch: int) -> float:
    # step * H / (10 * steps) in one division of exact products: on a 100-epoch run at H = 100
    # the first step of epoch t gives t / 10 bit for bit, as the `epoch` schedule does.
    return float(a ** (step * float(horizon) / (10 * steps)))


def _epoch(a: float, step: int, steps: int, horizon: float, per_epoch: int) -> float:
    return float(a ** ((step // per_epoch) / 10))


def _constant(a: float, step: int, steps: int, horizon: float, per_epoch: int) -> float:
    return float(a)


ALPHA_SCHEDULES.register(
    "progress",
    AlphaSchedule(
        _progress,
        "a^(p*H/10), p the share of the run done, per step: the paper's 100-epoch curve on any "
        "run length (default)",
    ),
)
ALPHA_SCHEDULES.register(
    "epoch",
    AlphaSchedule(_epoch, "a^(t/10) per epoch t, the paper's code (mostly noise on short runs)"),
)
ALPHA_SCHEDULES.register(
    "constant", AlphaSchedule(_constant, "a throughout (1: SAT without saliency; 0: map alone)")
)


def check_alpha(base: float, horizon: float = DEFAULT_HORIZON) -> None:
    """One-line errors for --alpha-base outside [0, 1] and --alpha-horizon <= 0."""
    if not 0.0 <= base <= 1.0:
        raise SatpipeError(f"--alpha-base must be in [0, 1], got {base}")
    if not horizon > 0:
        raise SatpipeError(f"--alpha-horizon must be > 0, got {horizon}")


def alpha_at(
    name: str,
    base: float,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    passes: int,
    horizon: float = DEFAULT_HORIZON,
) -> float:
    """alpha of schedule `name` at step `step` (0-based) of epoch `epoch` (0-based) of a run
    of `passes` epochs of `steps_per_epoch` steps each."""
    per_epoch = max(int(steps_per_epoch), 1)
    total = max(int(passes), 1) * per_epoch
    return ALPHA_SCHEDULES.get(name).alpha(
        float(base), int(epoch) * per_epoch + int(step), total, float(horizon), per_epoch
    )


def expected_map_share(
    name: str, base: float, passes: int, steps_per_epoch: int, horizon: float = DEFAULT_HORIZON
) -> float:
    """1 - mean alpha over every step of the run: the share of SAT's elements expected from
    the map (e.g. about 0.8 for the paper's 100 epochs at a = 0.6)."""
    per_epoch = max(int(steps_per_epoch), 1)
    alphas = [
        alpha_at(name, base, e, s, per_epoch, passes, horizon)
        for e in range(passes)
        for s in range(per_epoch)
    ]
    return 1.0 - sum(alphas) / len(alphas)
