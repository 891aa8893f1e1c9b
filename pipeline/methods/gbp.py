"""`gbp`: Guided Backprop (Springenberg et al. 2015) via captum `GuidedBackprop`.

Backward through every `nn.ReLU` module passes only positive gradients (captum's hooks). For a
model satpipe did not build, `guided_plan` (pipeline/methods/layers.py) first checks on a probe
that every activation is one the rule reaches: torchvision's `inplace=True` ReLUs are run out of
place during the call (and restored), other activation modules (SiLU, GELU, Hardswish, ...) are
refused with a line naming the module unless `other_activations="guide"` applies the same rule
to them, and functional activations are always refused: the method never silently degrades
into a plain gradient.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from captum.attr import GuidedBackprop
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import input_leaf
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.layers import OTHER_ACTIVATIONS, guided, guided_plan
from satpipe.pipeline.methods.registry import register_method


def check_other_activations(method: str, value: str) -> None:
    if value not in OTHER_ACTIVATIONS:
        raise SatpipeError(
            f"method '{method}': other_activations must be one of "
            f"{', '.join(OTHER_ACTIVATIONS)}, got '{value}'"
        )


def guided_backprop(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, other_activations: str = "refuse"
) -> torch.Tensor:
    """Guided-backprop gradient (B, C, H, W) of the target logit for x (B, C, H, W)."""
    plan = guided_plan(model, x.shape[1:], other_activations)
    # captum warns on every call that it hooks the ReLUs; that is the method, not news.
    with guided(model, plan), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Setting backward hooks", UserWarning)
        return GuidedBackprop(model).attribute(input_leaf(x), target=target)


@register_method("gbp")
@dataclasses.dataclass
class GuidedBackpropMethod(Method):
    """Guided-backprop gradient of the target logit, sign kept: (B, C, H, W) float32.
    other_activations: "refuse" (default) or "guide" for activations other than nn.ReLU."""

    other_activations: str = "refuse"

    amp_safe = True

    def __post_init__(self) -> None:
        check_other_activations(self.name, self.other_activations)

    def resolve(self, model, input_shape=None) -> GuidedBackpropMethod:
        if model is not None and input_shape is not None:
            guided_plan(model, input_shape, self.other_activations)  # refuse before any work
        return self

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        return guided_backprop(model, x, target, self.other_activations)
