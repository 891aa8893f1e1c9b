"""Faithfulness scores: does the source model's prediction follow the map?

Deletion and insertion curves (Petsiuk et al. 2018, RISE): pixels are taken in the order of
the map (most positive evidence for the class first, all channels of a pixel together), and
after each of `steps` equal fractions the model's softmax probability of the true class is
read. Deletion replaces the taken pixels by black (0): a faithful map makes the probability
fall fast (low area under the curve). Insertion starts from a blurred copy of the image and
puts the taken pixels back: a faithful map makes it rise fast (high area). The area is the
trapezoid over the fraction taken, 0 to 1 (so it is a mean probability, in [0, 1]).

The chance value of each is the same curve, on the same images, with the pixels taken in a
random order (seeded), so the two read against each other directly.

Written here rather than with Quantus' `PixelFlipping` (the deletion curve): that takes one
feature per step by default and runs the model on numpy batches; here every step of a batch
runs as one batched forward pass on the device. tests/test_quality.py checks the deletion
curve against Quantus' on a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.pipeline.methods.ig import gaussian_blur
from satpipe.pipeline.quality.registry import Score, register_score

RANDOM = "measured: the same curve with the pixels taken in a random order"
register_score(
    Score(
        "deletion",
        "faithfulness",
        "area under the true-class probability as the most salient pixels are blacked out",
        False,
        RANDOM,
        "Petsiuk et al. 2018 (RISE)",
    )
)
register_score(
    Score(
        "insertion",
        "faithfulness",
        "area under the true-class probability as the most salient pixels are put back into a "
        "blurred image",
        True,
        RANDOM,
        "Petsiuk et al. 2018 (RISE)",
    )
)


def pixel_order(maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, H*W) pixel indices, largest channel-summed value of maps (B, H, W, Cs) first;
    ties in a random order drawn from `generator` (so a constant map gives a random order)."""
    v = maps.float().sum(-1).flatten(1)
    b, p = v.shape
    shuffle = torch.rand((b, p), generator=generator, device=v.device).argsort(dim=1)
    order = (-v.gather(1, shuffle)).argsort(dim=1, stable=True)
    return shuffle.gather(1, order)


def random_order(b: int, p: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, P) independent uniformly random permutations of the P pixels."""
    return torch.rand((b, p), generator=generator, device=device).argsort(dim=1)


def taken_counts(pixels: int, steps: int) -> list[int]:
    """How many pixels are taken after step k = 0..steps: round(k * P / steps)."""
    return [round(k * pixels / steps) for k in range(steps + 1)]


@torch.no_grad()
def curves(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    steps: int,
    insertion: bool,
    blur_sigma: float = 4.0,
    chunk: int = 1024,
) -> torch.Tensor:
    """True-class probability (B, steps + 1) after taking 0, P/steps, ..., P pixels of x
    (B, C, H, W) in [0, 1] in `order` (B, P): deleted to black, or (insertion) put back into
    the blurred image. The model runs in eval mode on at most `chunk` images per pass."""
    b, c, h, w = x.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    canvas = gaussian_blur(x, blur_sigma) if insertion else torch.zeros_like(x)
    counts = torch.tensor(taken_counts(h * w, steps), device=x.device)
    probs = torch.empty((b, steps + 1), device=x.device)
    per = max(1, chunk // (steps + 1))  # images per pass, each with all its steps
    for a in range(0, b, per):
        sl = slice(a, min(a + per, b))
        taken = rank[sl].unsqueeze(1) < counts.view(1, -1, 1, 1, 1)  # (b', S+1, 1, H, W)
        xs, base = x[sl].unsqueeze(1), canvas[sl].unsqueeze(1)
        mixed = torch.where(taken, xs, base) if insertion else torch.where(taken, base, xs)
        logits = model(mixed.flatten(0, 1))
        p = F.softmax(logits.float(), dim=1).view(-1, steps + 1, logits.shape[1])
        probs[sl] = p.gather(2, y[sl].view(-1, 1, 1).expand(-1, steps + 1, 1)).squeeze(2)
    return probs


def curve_auc(probs: torch.Tensor) -> torch.Tensor:
    """Trapezoid area (B,) of curves (B, S + 1) sampled at fractions 0, 1/S, ..., 1."""
    s = probs.shape[1] - 1
    return (probs[:, 1:] + probs[:, :-1]).sum(1) / (2 * s)


def faithfulness_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    maps: torch.Tensor,
    steps: int,
    blur_sigma: float,
    generator: torch.Generator,
    chunk: int = 1024,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{"deletion"|"insertion": (AUC (B,), chance AUC (B,), mean curve (steps + 1,))} for
    images x (B, C, H, W), labels y (B,) and their maps (B, H, W, Cs)."""
    b, _, h, w = x.shape
    order = pixel_order(maps, generator)
    chance = random_order(b, h * w, generator, x.device)
    out = {}
    for name, insertion in (("deletion", False), ("insertion", True)):
        probs = curves(model, x, y, order, steps, insertion, blur_sigma, chunk)
        rand = curves(model, x, y, chance, steps, insertion, blur_sigma, chunk)
        out[name] = (curve_auc(probs), curve_auc(rand), probs.sum(0))
    return out
