"""The attack registry's entry type and the per-call settings every attack reads.

An attack entry maps one batch to its adversarial examples::

    x_adv = ATTACKS.get("pgd").run(model, x, y, ctx)     # x, x_adv: (B, C, H, W) in [0, 1]

`ctx` (an AttackContext) carries eps in pixel units, the class count, the attack's settings
(steps, step size, restarts) and the coordinates its randomness is derived from (seed, batch
index), so the same call gives the same numbers. An *ensemble* (AutoAttack) has no `run` of its
own: its `components` run in turn, each only on the points still robust
(`satpipe.train.eval.attacks.ensemble.run_ensemble`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry
from satpipe.core.seeding import derive_seed, generator

# Tags the attacks' random streams apart from every other stream satpipe draws (the value the
# evaluation used before the registry existed, so PGD's random starts are unchanged).
ATTACK_STREAM = 0xE7A1
# Tags the seed handed to the reference AutoAttack code (it seeds torch's global generators).
LIBRARY_STREAM = 0xAA01
# AutoAttack's targeted attacks use the 9 most likely wrong classes (Croce & Hein 2020).
MAX_TARGET_CLASSES = 9
SQUARE_QUERIES = 5000  # Square's budget in standard AutoAttack


def n_target_classes(num_classes: int) -> int:
    """Target classes of APGD-T and FAB-T: min(9, classes - 1) (the reference code's 9 crash
    on data with fewer than 10 classes)."""
    return max(1, min(MAX_TARGET_CLASSES, num_classes - 1))


@dataclass(frozen=True)
class AttackContext:
    """What one attack call on one batch needs besides the model and the batch.

    eps, step_size: pixel units (8/255, not 8). steps, restarts: PGD and PGD-CW (the
    AutoAttack components use their standard, parameter-free settings). square_queries: Square's
    query budget (5000 in standard AutoAttack; the tests use fewer). seed, batch: the
    coordinates of this call's randomness.
    """

    eps: float
    num_classes: int
    seed: int = 0
    batch: int = 0
    steps: int = 5
    step_size: float = 2 / 255
    restarts: int = 1
    square_queries: int = SQUARE_QUERIES

    @property
    def n_target_classes(self) -> int:
        return n_target_classes(self.num_classes)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator of this batch's random starts: a function of (seed, batch) only."""
        return generator(self.seed, self.batch, ATTACK_STREAM, device=device)

    def library_seed(self) -> int:
        """The seed given to the reference AutoAttack code. Like that code, one seed serves
        every batch (it re-seeds before each), so a function of `seed` alone."""
        return derive_seed(self.seed, LIBRARY_STREAM)


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, AttackContext], torch.Tensor]
MinNormFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, AttackContext], tuple[torch.Tensor, torch.Tensor]
]
NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class Attack:
    """One registered attack.

    run: (model, x, y, ctx) -> x_adv for one batch; None for an ensemble.
    components: an ensemble's attacks, run in this order, each on the points still robust.
    randomized: draws random numbers (evaluated once per seed); a deterministic attack is run
        once whatever the seeds.
    deterministic_model: assumes the model's eval-mode forward is deterministic (AutoAttack's
        stopping rules and its restarts do); refused on a model that is not.
    min_classes: the fewest classes it is defined for (the targeted DLR loss needs 4 logits).
    implementation: whose code runs it, for the results and the docs.
    norm: the threat model, "Linf" or "L2"; eps is the radius in that norm (/255 units on the
        command line). The per-image worst case joins only attacks of one norm.
    min_norm: a minimum-norm attack's (model, x, y, ctx) -> (x_adv, norms (B,), pixel units;
        0 where the clean prediction is wrong, inf where nothing was found). Evaluation runs it
        once and reads every radius off the norms; `run` is then the attack at ctx.eps.
    default_eps: the grid (/255) it runs at when --attack-eps does not name it (None: --eps).
    settings: fixed hyper-parameters, recorded in results.json.
    version: () -> a line naming the library and its version (None: the reference code's).
    """

    name: str
    summary: str
    run: AttackFn | None
    randomized: bool
    components: tuple[str, ...] = ()
    deterministic_model: bool = False
    min_classes: int = 2
    implementation: str = "satpipe"
    params: tuple[str, ...] = field(default=())  # the AttackContext fields it reads
    norm: str = "Linf"
    min_norm: MinNormFn | None = None
    default_eps: tuple[float, ...] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    version: Callable[[], str] | None = None

    def check_classes(self, num_classes: int) -> None:
        if num_classes < self.min_classes:
            raise SatpipeError(
                f"attack '{self.name}' needs at least {self.min_classes} classes, "
                f"the model has {num_classes}"
            )


ATTACKS: Registry[Attack] = Registry("attack")


def register(attack: Attack) -> Attack:
    """Add `attack` to ATTACKS under its name (its summary is the registry's)."""
    return ATTACKS.register(attack.name, attack, summary=attack.summary)
