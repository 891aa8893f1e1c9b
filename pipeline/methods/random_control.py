"""`random`: a control, +-1 per element drawn from the generator (no model, no information)."""

from __future__ import annotations

import dataclasses

import torch

from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.registry import register_method


@register_method("random")
@dataclasses.dataclass
class RandomSaliency(Method):
    """Maps (B, C, H, W) with entries -1 or +1, each with probability 1/2, from `generator`."""

    needs_model = False
    uses_generator = True

    @property
    def passes_per_image(self) -> int:
        return 0

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
        return bits.float() * 2 - 1
