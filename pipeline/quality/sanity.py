"""Sanity score (Adebayo et al. 2018, "Sanity checks for saliency maps"): do the maps depend
on the model's weights?

Cascading randomisation: the source model's blocks are re-initialised one more at a time from
the output down (fc, then the last block, ..., then the first), and after each step the same
method, with the same parameters, normalisation and noise, recomputes the maps of N images.
Each is rank-correlated (Spearman, over pixels and channels, sign kept: the sign is what SAT
uses) with the stored map. A method whose maps are explanations of the model loses that
correlation as the weights go; one whose maps come from the image alone (an edge detector, the
image itself) keeps it. The score is the mean correlation once every block is random; its
chance value is 0 (maps independent of the stored ones) and a store whose score is at least
`FLAG_AT` is flagged. Step 0 (the intact model) is reported too: it shows how close a
recomputation comes to the stored maps (1 for deterministic methods).

Blocks: the model's top-level children, a `Sequential` (satpipe's `features`) opened one level,
those with parameters, last first. Re-initialisation calls each module's `reset_parameters()`
(as Quantus' MPRT does) under a forked global RNG seeded from (seed, step), so the copy is the
same every run and the process's RNG is left as it was.

Written here rather than with Quantus' `MPRT`: that re-runs the explanation function through
its own wrappers on numpy batches one layer at a time (one step per parameterised layer: 73 for
ResNet-34); here a step is a block, and the maps come from satpipe's own method registry, so
the check recomputes exactly what the store holds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from satpipe.core.seeding import derive_seed, generator
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.normalize import normalize
from satpipe.pipeline.quality.localisation import average_ranks
from satpipe.pipeline.quality.registry import Score, register_score

FLAG_AT = 0.5  # mean rank correlation with the weights gone at or above which a store is flagged
SANITY_STREAM = 0x5A17  # tags this check's random streams apart from every other one

register_score(
    Score(
        "randomisation",
        "sanity",
        "rank correlation of the maps with those of a fully randomised model (cascading)",
        False,
        "closed form: 0 (maps independent of the stored ones)",
        "Adebayo et al. 2018",
    )
)


def cascade_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of the blocks the cascade randomises, output side first."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            blocks += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            blocks.append((name, child))
    with_params = [(n, m) for n, m in blocks if any(True for _ in m.parameters())]
    return with_params[::-1]


def randomise_(block: nn.Module, seed: int) -> None:
    """Re-initialise every submodule of `block` that has `reset_parameters`, in place, from a
    global RNG seeded with `seed` (forked: the caller's RNG state is restored)."""
    devices = [p.device for p in block.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in block.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation (B,) of a and b (B, ...) per image; NaN where either is constant."""
    ra, rb = average_ranks(a.flatten(1).float()), average_ranks(b.flatten(1).float())
    da, db = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (da.square().sum(1) * db.square().sum(1)).sqrt()
    return torch.where(den > 0, (da * db).sum(1) / torch.where(den > 0, den, 1), torch.nan)


def randomisation_curve(
    model: nn.Module,
    method: Method,
    x: torch.Tensor,
    y: torch.Tensor,
    stored: torch.Tensor,
    normalization: str,
    seed: int = 0,
    batch_size: int = 64,
    on_step: Callable[[], None] | None = None,
    amp: bool = False,
) -> list[tuple[str, torch.Tensor]]:
    """[(block randomised last, per-image correlation (B,)), ...] for images x (B, C, H, W) in
    [0, 1], labels y (B,) and their stored maps (B, H, W, Cs); step 0 is ("none", intact model).

    The model itself is not changed (a deep copy is randomised). Every step draws the method's
    noise from the same generators, so only the weights differ between steps. `amp`: the bf16
    autocast the store's maps were computed under (its compute.amp), so that step 0 recomputes
    them as they were made."""
    work = copy.deepcopy(model).eval()
    steps = [("none", None), *cascade_blocks(work)]
    out = []
    for k, (name, block) in enumerate(steps):
        if block is not None:
            randomise_(block, derive_seed(seed, SANITY_STREAM, k))
        rho = []
        for a in range(0, len(x), batch_size):
            g = generator(seed, SANITY_STREAM, a, device=x.device)
            raw = method(work, x[a : a + batch_size], y[a : a + batch_size], generator=g, amp=amp)
            maps = normalize(raw, normalization).permute(0, 2, 3, 1)
            rho.append(rank_correlation(maps, stored[a : a + batch_size].float()))
        out.append((name, torch.cat(rho)))
        if on_step is not None:
            on_step()
    return out
