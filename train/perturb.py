"""Training-input perturbations: the SAT perturbation, the uniform-noise baseline, alpha_t.

Exactly as in DESIGN.md, "The method". Every draw takes an optional `torch.Generator` so the
trainer can make each batch's randomness a function of (seed, epoch, step) only; that is what
makes `--resume` bit-for-bit. The generator must live on the same device as `x`.
"""

from __future__ import annotations

import torch

from satpipe.core.errors import SatpipeError


def alpha_schedule(epoch: int, base: float = 0.6) -> float:
    """alpha_t = base ** (epoch / 10) for 0-based `epoch`: 1.0 at 0, 0.6 at 10, 0.6**5 at 50.

    The probability that a SAT component is random noise rather than the saliency direction:
    random early (the model's own adversarial directions are random then), saliency later.
    This is the paper's per-epoch formula (the `epoch` alpha schedule); the trainer's schedules,
    `progress` the default, are in satpipe.train.alpha_schedules.
    """
    if not 0.0 <= base <= 1.0:
        raise SatpipeError(f"alpha base must be in [0, 1], got {base}")
    return float(base ** (epoch / 10))


def _rand(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sat_perturb(
    x: torch.Tensor,
    s: torch.Tensor,
    eps: float,
    alpha_t: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_sat = clamp(x + eps * delta, 0, 1), delta[i] = z[i] w.p. alpha_t else -s[i].

    Args:
        x: images (B, C, H, W) in [0, 1].
        s: saliency (B, Cs, H, W), Cs in {1, C}, values in [-1, 1] (as stored). A one-channel
            map broadcasts over colour channels, but the coin and z are still drawn per element
            of x (batch x channel x pixel), as the method defines.
        eps: L-inf size in pixel units (8/255 by default in the trainer).
        alpha_t: probability of the random component, see `alpha_schedule`.
        generator: optional generator on x's device; two uniform tensors of x's shape are drawn
            from it, first the coins, then z.

    Returns:
        (B, C, H, W) tensor of x's dtype, in [0, 1].
    """
    return sat_perturb_counted(x, s, eps, alpha_t, generator)[0]


def sat_perturb_counted(
    x: torch.Tensor,
    s: torch.Tensor,
    eps: float,
    alpha_t: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sat_perturb`, and what the draw took from the map, without a host sync.

    Returns (x_sat, counts): counts is a float64 tensor of 2 on x's device, [elements of
    delta taken from the map (-s), sum of |s| over those elements]; the elements drawn in all
    are x.numel(). The random draws are exactly `sat_perturb`'s (the same bytes for the same
    generator), so counting changes no result.
    """
    if s is None:
        raise SatpipeError("sat_perturb needs a saliency map (the variant needs --saliency)")
    if s.dim() != 4 or s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:]:
        raise SatpipeError(
            f"saliency shape {tuple(s.shape)} does not match images {tuple(x.shape)}"
        )
    if s.shape[1] not in (1, x.shape[1]):
        raise SatpipeError(f"saliency has {s.shape[1]} channels; images have {x.shape[1]}")
    coin = _rand(x, generator) < alpha_t
    z = torch.where(_rand(x, generator) < 0.5, -1.0, 1.0).to(x.dtype)
    direction = -s.to(x.dtype).expand_as(x)
    delta = torch.where(coin, z, direction)
    from_map = ~coin
    counts = torch.stack(
        [
            from_map.sum().double(),
            torch.where(from_map, direction.abs(), 0.0).sum(dtype=torch.float64),
        ]
    )
    return (x + eps * delta).clamp_(0.0, 1.0), counts


def uniform_noise(
    x: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_noise = clamp(x + U(-eps, eps), 0, 1), i.i.d. per element; x (B, C, H, W) in [0, 1]."""
    return (x + (2.0 * _rand(x, generator) - 1.0) * eps).clamp_(0.0, 1.0)


def saliency_mask(
    x: torch.Tensor,
    saliency: torch.Tensor,
    fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SGT's masked input (Ismail et al. 2021): the `fraction` of pixels with the lowest
    saliency get random values, drawn uniformly in [min x_b, max x_b] of their image b.

    Saliency is averaged over colour channels and sorted signed, lowest first (the authors'
    code: captum Saliency with abs=False, `.mean(1)`, `topk(largest=False)`); a masked pixel
    gets a fresh value in every channel.

    Args:
        x: images (B, C, H, W) in [0, 1]; saliency: (B, C or 1, H, W), e.g. the input gradient.
        fraction: k, in (0, 1); int(k * H * W) pixels per image are masked.
        generator: optional generator on x's device (one uniform tensor of x's shape).

    Returns:
        (B, C, H, W) tensor of x's dtype, in [0, 1].
    """
    b, _, h, w = x.shape
    k = int(fraction * h * w)
    score = saliency.float().mean(1).flatten(1)  # (B, H*W)
    masked = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        masked.scatter_(1, score.topk(k, dim=1, largest=False).indices, True)
    flat = x.flatten(1)
    lo = flat.amin(1).view(b, 1, 1, 1)
    hi = flat.amax(1).view(b, 1, 1, 1)
    fill = lo + (hi - lo) * _rand(x, generator)
    return torch.where(masked.view(b, 1, h, w), fill, x)
