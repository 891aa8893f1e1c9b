"""Run one registered attack over a whole evaluation set, batch by batch, on its device.

    outcome = attack_set(model, "autoattack", x, y, clean, ctx, batch_size=500)
    outcome.correct            # (N,) bool on x's device: right on the clean AND the attacked image
    outcome.components         # ensembles: {"apgd-ce": (N,) robust after it, "apgd-t": ..., ...}
    norms = min_norm_set(model, "cw-l2", x, y, clean, ctx, 500)   # (N,) smallest L2 found

A point counts as correct under an attack only when it is classified correctly both clean and
on its adversarial example (RobustBench's robust accuracy), so accuracy under any attack is at
most the clean accuracy and the worst case over attacks is a per-point AND. A single attack
runs over fixed batches of the whole set (the batch composition does not depend on the model,
and nothing leaves the device until the end). An ensemble runs its components in turn, each
only on the points still robust, re-batched to full batches, as the reference
`run_standard_evaluation` does (one host sync per component to find those points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from satpipe.train.eval.attacks.base import ATTACKS, Attack, AttackContext


@dataclass
class Outcome:
    """Per-point correctness under one attack (and, for an ensemble, after each component)."""

    correct: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """(N,) bool on the device: the model's clean prediction is right."""
    return torch.cat(
        [_predict(model, x[i : i + batch_size]) == y[i : i + batch_size]
         for i in range(0, len(y), batch_size)]
    )  # fmt: skip


def attack_set(
    model: nn.Module,
    attack: str | Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    ctx: AttackContext,
    batch_size: int,
    advance: Callable[[int], None] = lambda n=1: None,
    components: tuple[str, ...] | None = None,
) -> Outcome:
    """Correctness of `model` on (x, y) (N, C, H, W) / (N,) under `attack` at `ctx.eps`.

    clean: (N,) bool, the clean correctness (points already wrong stay wrong). `ctx.batch` is
    set per batch. advance(n) is called with the number of points done (N per component for an
    ensemble). components: an ensemble's components to run (default: all of them).
    """
    entry = ATTACKS.get(attack) if isinstance(attack, str) else attack
    if entry.components:
        return _ensemble(model, entry, x, y, clean, ctx, batch_size, advance, components)
    correct = torch.empty_like(clean)
    for b, start in enumerate(range(0, len(y), batch_size)):
        sl = slice(start, start + batch_size)
        x_adv = entry.run(model, x[sl], y[sl], replace(ctx, batch=b))
        correct[sl] = clean[sl] & (_predict(model, x_adv) == y[sl])
        advance(len(y[sl]))
    return Outcome(correct)


def min_norm_set(
    model: nn.Module,
    attack: str | Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    ctx: AttackContext,
    batch_size: int,
    advance: Callable[[int], None] = lambda n=1: None,
) -> torch.Tensor:
    """A minimum-norm attack over (x, y): (N,) float on the device, the norm (pixel units) of
    the smallest adversarial found per point; 0 where the clean prediction is wrong (`clean`
    False), inf where none was found. Correct at radius r = clean & (norm > r)."""
    entry = ATTACKS.get(attack) if isinstance(attack, str) else attack
    norms = torch.empty(len(y), device=clean.device)
    for b, start in enumerate(range(0, len(y), batch_size)):
        sl = slice(start, start + batch_size)
        x_adv, norm = entry.min_norm(model, x[sl], y[sl], replace(ctx, batch=b))
        # An adversarial counts only if the model really misclassifies it (and was right).
        fooled = _predict(model, x_adv) != y[sl]
        norm = torch.where(fooled, norm.to(norms.dtype), torch.full_like(norms[sl], float("inf")))
        norms[sl] = torch.where(clean[sl], norm, torch.zeros_like(norm))
        advance(len(y[sl]))
    return norms


def _ensemble(model, entry, x, y, clean, ctx, batch_size, advance, components) -> Outcome:
    robust = clean.clone()
    after: dict[str, torch.Tensor] = {}
    n = len(y)
    for name in components if components is not None else entry.components:
        part = ATTACKS.get(name)
        idx = robust.nonzero().squeeze(1)  # the points still robust, in order
        for b, start in enumerate(range(0, len(idx), batch_size)):
            bi = idx[start : start + batch_size]
            x_adv = part.run(model, x[bi], y[bi], replace(ctx, batch=b))
            robust[bi] = robust[bi] & (_predict(model, x_adv) == y[bi])
            advance(len(bi))
        advance(n - len(idx))  # points already fooled are done for this component
        after[name] = robust.clone()
    return Outcome(robust, after)
