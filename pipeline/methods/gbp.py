"""`gbp`: Guided Backprop (Springenberg et al. 2015) via captum `GuidedBackprop`.

Backward through every `nn.ReLU` module passes only positive gradients (captum's hooks; the
satpipe models use one ReLU module per use so every ReLU is hooked).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from captum.attr import GuidedBackprop

from satpipe.pipeline.methods.base import Method, input_leaf
from satpipe.pipeline.methods.registry import register_method


@register_method("gbp")
@dataclasses.dataclass
class GuidedBackpropMethod(Method):
    """Guided-backprop gradient of the target logit, sign kept: (B, C, H, W) float32."""

    amp_safe = True

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        # captum warns on every call that it hooks the ReLUs; that is the method, not news.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Setting backward hooks", UserWarning)
            return GuidedBackprop(model).attribute(input_leaf(x), target=target)
