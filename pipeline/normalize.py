"""Per-image normalisation of raw saliency maps (DESIGN.md, "The method").

`signed-maxabs` (default) s / max|s| into [-1, 1], sign kept, all-zero maps stay zero (the
paper's "(-1, 1)"); `minmax` (s - min) / (max - min) into [0, 1], constant maps become zeros
(what the authors' code does for SmoothGrad and Grad-CAM++); `sign` -1, 0 or +1 per element.
"""

from __future__ import annotations

import torch

from satpipe.core.errors import SatpipeError
from satpipe.data.saliency_store import Normalization

__all__ = ["Normalization", "normalize"]


def normalize(s: torch.Tensor, how: str | Normalization = "signed-maxabs") -> torch.Tensor:
    """Normalise each image of `s` (B, ...) over all its other axes; float32 out, same shape."""
    try:
        how = Normalization(how)
    except ValueError:
        valid = ", ".join(n.value for n in Normalization)
        raise SatpipeError(f"unknown normalization '{how}'; choose one of {valid}") from None
    s = s.float()
    flat = s.reshape(s.shape[0], -1)
    if how is Normalization.sign:
        return torch.sign(s)
    if how is Normalization.signed_maxabs:
        scale = flat.abs().amax(dim=1)
        # Dividing by 1 keeps an all-zero map zero; x / x is exactly 1 in IEEE, so the range
        # is exactly [-1, 1].
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (flat / scale[:, None]).reshape(s.shape)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0)
    return out.reshape(s.shape)
