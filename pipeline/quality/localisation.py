"""Localisation scores: does a store's saliency sit on the object (its mask or box)?

Per image, the map s (H, W, Cs) is reduced over channels to two per-pixel masses: |s| summed
over channels (`a`, how much the map says about a pixel) and the positive part summed over
channels (`pos`, how much it says *for* the class: SAT's perturbation uses the sign); the
signed map is 2 pos - a. Every score is a function of (a, pos, mask) per image, computed in
torch on the store's device in one batch per shard, so a whole store streams through with one
shard in memory.

Written here rather than called from Quantus: Quantus evaluates numpy batches with a Python
loop per image for some metrics (its ROC-AUC calls scikit-learn once per image) and breaks
ties by array order (a +-1 random map would hit the pointing game every time); these run
batched on the GPU and break ties at random in expectation. tests/test_quality.py checks
them against Quantus on a batch of maps without ties.

Ties are scored by their expectation under a uniformly random tie-break, so a map that is
constant (or +-1 with equal magnitudes, like the `random` control) scores exactly chance.
An all-zero map says nothing: every score is NaN for it, and the count is reported.
"""

from __future__ import annotations

import torch

from satpipe.pipeline.quality.registry import Score, register_score


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis of v (B, P), ties given their average rank
    (scipy's `rankdata(method="average")`), float64."""
    ordered = v.sort(dim=-1).values.contiguous()
    lo = torch.searchsorted(ordered, v.contiguous(), right=False)
    hi = torch.searchsorted(ordered, v.contiguous(), right=True)
    return (lo + hi + 1).double() / 2


def _share(part: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, part / torch.where(total > 0, total, 1), torch.nan)


def _share_or_zero(part: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    # No mass of that kind at all: none of it is inside (Quantus' attribution localisation
    # gives 0 / (0 + 1e-9) = 0 too), so a map's negation scores 0, not "undefined".
    return torch.where(total > 0, part / torch.where(total > 0, total, 1), 0.0)


def _area(m: torch.Tensor) -> torch.Tensor:
    return m.double().mean(dim=1)


def pointing_game(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """1 when the map's maximum (its strongest evidence for the class, channels summed) lies
    in the object; tied maxima score the share of them inside, the expected hit of a random
    pick among them. The signed maximum, as Zhang et al. and Quantus' default (abs=False)
    take it: a strongly negative pixel is evidence against the class, not a pointer to it."""
    v = 2 * pos - a  # the channel-summed signed map: positive part minus negative part
    top = v == v.amax(dim=1, keepdim=True)
    return _share((top & m).sum(1).double(), top.sum(1).double())


def relevance_mass(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Share of the map's absolute mass sum|s| that lies inside the object."""
    a = a.double()
    return _share((a * m).sum(1), a.sum(1))


def relevance_rank(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Of the K pixels of largest |s| (K = the object's area), the share inside the object.

    Pixels tied at the K-th value fill the remaining places at random: the expected count
    inside is G_in + (K - G) * E_in / E (G above the tie, E at it)."""
    k = m.sum(1, keepdim=True).clamp(min=1)
    ordered = a.sort(dim=1, descending=True).values
    t = ordered.gather(1, k - 1)
    above, at = a > t, a == t
    g, g_in = above.sum(1).double(), (above & m).sum(1).double()
    e, e_in = at.sum(1).double(), (at & m).sum(1).double()
    return (g_in + (k.squeeze(1).double() - g) * e_in / e.clamp(min=1)) / k.squeeze(1)


def roc_auc(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of |s| as a detector of object pixels (Mann-Whitney U / (P N), ties 1/2)."""
    ranks = average_ranks(a)
    p = m.sum(1).double()
    n = m.shape[1] - p
    u = (ranks * m).sum(1) - p * (p + 1) / 2
    return _share(u, p * n)


def sign_agreement(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Share of the map's positive mass (evidence for the class) inside the object; 0 for a
    map with no positive mass."""
    pos = pos.double()
    return _share_or_zero((pos * m).sum(1), pos.sum(1))


def inside_positive(a: torch.Tensor, pos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Of the map's mass inside the object, the share that is positive; 0 for a map that is
    zero on the object."""
    return _share_or_zero((pos.double() * m).sum(1), (a.double() * m).sum(1))


def _area_chance(a, pos, m):
    return _area(m)


def _half(a, pos, m):
    return torch.full((m.shape[0],), 0.5, dtype=torch.float64, device=m.device)


AREA = "closed form: the object's area share (a map independent of the object)"
HALF = "closed form: 0.5 (a map independent of the object)"
for _score in (
    Score(
        "pointing-game",
        "localisation",
        "share of images whose largest |s| is on the object",
        True,
        AREA,
        "Zhang et al. 2018",
        pointing_game,
        _area_chance,
    ),
    Score(
        "relevance-mass",
        "localisation",
        "share of |s| inside the object",
        True,
        AREA,
        "Arras et al. 2022",
        relevance_mass,
        _area_chance,
    ),
    Score(
        "relevance-rank",
        "localisation",
        "share of the top-K |s| pixels inside the object (K = object area)",
        True,
        AREA,
        "Arras et al. 2022",
        relevance_rank,
        _area_chance,
    ),
    Score(
        "roc-auc",
        "localisation",
        "ROC-AUC of |s| against the object mask",
        True,
        HALF,
        "Fawcett 2006",
        roc_auc,
        _half,
    ),
    Score(
        "sign-agreement",
        "localisation",
        "share of the positive mass (evidence for the class) inside the object",
        True,
        AREA,
        "Kohlbrenner et al. 2020 (attribution localisation)",
        sign_agreement,
        _area_chance,
    ),
    Score(
        "inside-positive",
        "localisation",
        "of the mass inside the object, the share that is positive",
        True,
        HALF,
        "satpipe: the sign SAT's -s pushes the object with",
        inside_positive,
        _half,
    ),
):
    register_score(_score)


def pixel_masses(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, pos), each (B, H*W) float32: |s| and max(s, 0) summed over the channels of maps
    (B, H, W, Cs) (a store's layout)."""
    s = maps.float()
    a = s.abs().sum(-1).flatten(1)
    pos = s.clamp(min=0).sum(-1).flatten(1)
    return a, pos


def localisation_batch(
    maps: torch.Tensor, masks: torch.Tensor, names: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{score: (values (B,), chance values (B,))} float64 for maps (B, H, W, Cs) and object
    masks (B, H, W) (nonzero = object). Images whose map is all zero or whose mask is empty
    get NaN (no information to score)."""
    from satpipe.pipeline.quality.registry import SCORES

    a, pos = pixel_masses(maps)
    m = masks.reshape(masks.shape[0], -1) != 0
    valid = (a.sum(1) > 0) & m.any(1) & ~m.all(1)
    out = {}
    for name in names:
        score = SCORES.get(name)
        value = torch.where(valid, score.fn(a, pos, m), torch.nan)
        chance = torch.where(valid, score.chance_fn(a, pos, m), torch.nan)
        out[name] = (value, chance)
    return out


def boxes_to_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool masks from boxes (B, 4) int (x0, y0, x1, y1), end exclusive."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    b = boxes.view(-1, 4, 1, 1)
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
