"""`gradient`: the plain input gradient of the target logit (captum `Saliency`, abs=False)."""

from __future__ import annotations

import dataclasses

import torch
from captum.attr import Saliency

from satpipe.core.modules import input_leaf
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.registry import register_method


@register_method("gradient")
@dataclasses.dataclass
class Gradient(Method):
    """d logit_target / d x, sign kept: (B, C, H, W) float32. One forward+backward per image."""

    amp_safe = True

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        return Saliency(model).attribute(input_leaf(x), target=target, abs=False)
