"""APGD-CE, APGD-T, FAB-T, Square and AutoAttack from the reference code (`pyautoattack`).

Why this library: `pyautoattack` is Croce & Hein's own AutoAttack code (the one RobustBench
runs) packaged on PyPI, so "AutoAttack" here means exactly their attacks and settings, not a
re-implementation. `torchattacks` (an independent implementation) is the test oracle that the
two agree. Nothing of the attacks is written here: each entry builds the library's
`AutoAttack(version="standard")` object, so every hyper-parameter (100 iterations, rho 0.75,
Square's 5000 queries and p_init 0.8, FAB's alpha_max/eta/beta, one restart each) is the
library's own, and calls the configured sub-attack exactly as the library's
`run_standard_evaluation` does. satpipe changes two things, both recorded in results.json:

- the targeted attacks use n_target_classes = min(9, classes - 1) (the library's 9 fails on
  data with fewer than 10 classes);
- APGD-T needs at least 4 classes (its targeted DLR loss divides by z_pi1 - (z_pi3 + z_pi4)/2),
  so on 2- or 3-class data the AutoAttack ensemble runs without it (`ensemble_components`).

Randomness: the library seeds torch's *global* generators (`torch.random.manual_seed(seed)`
before every batch) and draws from them; it takes no torch.Generator. So each call runs inside
`torch.random.fork_rng`, with the seed derived from satpipe's seed (`AttackContext
.library_seed`): the same seed gives the same numbers and the caller's global RNG state is left
exactly as it was. On CUDA the library's kernels are not bit-deterministic (atomic adds in
convolution backward), so only CPU runs repeat bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from satpipe.core.modules import model_state
from satpipe.train.eval.attacks.base import Attack, AttackContext, register

LIBRARY = "pyautoattack"
AUTOATTACK_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version
_LOGGER = "auto-attack"  # the library's logger (it warns there, e.g. about zero gradients)


def library_version() -> str:
    import pyautoattack

    return f"{LIBRARY} {pyautoattack.__version__} (Croce & Hein's AutoAttack)"


def standard_autoattack(model: nn.Module, ctx: AttackContext, device: torch.device):
    """The library's AutoAttack object, standard version, with the target classes set."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(
        model, eps=ctx.eps, norm="Linf", version="standard", seed=ctx.library_seed(),
        device=device,
    )  # fmt: skip
    aa.apgd_targeted.n_target_classes = ctx.n_target_classes
    aa.fab.n_target_classes = ctx.n_target_classes
    aa.square.n_queries = ctx.square_queries
    return aa


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """The library re-seeds torch's global generators: fork them (CPU, and this CUDA device)
    so the caller's state is restored afterwards, and seed them for the first draw."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _perturb(aa, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One sub-attack on one batch, set up exactly as `run_standard_evaluation` sets it."""
    seed = aa.get_seed()
    if name == "apgd-ce":
        aa.apgd.loss, aa.apgd.seed = "ce", seed
        return aa.apgd.perturb(x, y)
    if name == "apgd-t":
        aa.apgd_targeted.seed = seed
        return aa.apgd_targeted.perturb(x, y)
    if name == "fab-t":
        aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, seed
        return aa.fab.perturb(x, y)
    if name == "square":
        aa.square.seed = seed
        return aa.square.perturb(x, y)
    raise ValueError(f"not an AutoAttack component: {name}")


class LibraryWarnings(logging.Handler):
    """Collects the library's own warnings (zero gradients, ...) instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def library_warnings() -> Iterator[LibraryWarnings]:
    """Capture the library logger's warnings for the block (for results.json)."""
    logger = logging.getLogger(_LOGGER)
    handler = LibraryWarnings()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _component(name: str):
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
        device = x.device
        aa = standard_autoattack(model, ctx, device)
        with (
            _seeded(device, ctx.library_seed()),
            model_state(model, param_grads=False),
            torch.no_grad(),
        ):
            return _perturb(aa, name, x.float(), y).detach()

    return run


def ensemble_components(num_classes: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """(components AutoAttack runs on `num_classes`-class data, {skipped: why})."""
    if num_classes >= 4:
        return AUTOATTACK_COMPONENTS, {}
    skipped = {"apgd-t": "the targeted DLR loss needs at least 4 classes"}
    return tuple(c for c in AUTOATTACK_COMPONENTS if c not in skipped), skipped


_IMPL = "pyautoattack (Croce & Hein's reference code)"
register(Attack(
    name="apgd-ce",
    summary="APGD on CE, 100 iterations, 1 restart (AutoAttack's first attack)",
    run=_component("apgd-ce"), randomized=True, deterministic_model=True, implementation=_IMPL,
))  # fmt: skip
register(Attack(
    name="apgd-t",
    summary="APGD on the targeted DLR loss, min(9, classes-1) targets x 100 iterations",
    run=_component("apgd-t"), randomized=True, deterministic_model=True, min_classes=4,
    implementation=_IMPL,
))  # fmt: skip
register(Attack(
    name="fab-t",
    summary="targeted FAB (minimum-norm boundary attack), min(9, classes-1) targets",
    run=_component("fab-t"), randomized=False, deterministic_model=True, implementation=_IMPL,
))  # fmt: skip
register(Attack(
    name="square",
    summary="Square Attack: score-based black-box random search, 5000 queries",
    run=_component("square"), randomized=True, deterministic_model=True, implementation=_IMPL,
))  # fmt: skip
register(Attack(
    name="autoattack",
    summary="AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square-5000, per-sample worst case",
    run=None, randomized=True, components=AUTOATTACK_COMPONENTS, deterministic_model=True,
    implementation=_IMPL,
))  # fmt: skip
