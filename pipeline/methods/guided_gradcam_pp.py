"""`guided-gradcam++`: Guided Backprop times the upsampled Grad-CAM++ map (captum's GuidedGradCam
recipe with Grad-CAM++ in place of Grad-CAM)."""

from __future__ import annotations

import dataclasses

import torch

from satpipe.pipeline.methods.gbp import check_other_activations, guided_backprop
from satpipe.pipeline.methods.gradcam_pp import (
    GradCamPP,
    cam_layer_name,
    default_input_shape,
    gradcam_pp_from,
    layer_activation_and_grad,
)
from satpipe.pipeline.methods.layers import guided_plan
from satpipe.pipeline.methods.registry import register_method


@register_method("guided-gradcam++")
@dataclasses.dataclass
class GuidedGradCamPP(GradCamPP):
    """GBP (B, C, H, W) * Grad-CAM++ (B, 1, H, W) -> (B, C, H, W) float32. Two passes.
    `layer` as gradcam++, `other_activations` as gbp."""

    other_activations: str = "refuse"

    single_channel = False

    def __post_init__(self) -> None:
        check_other_activations(self.name, self.other_activations)

    def resolve(self, model, input_shape=None) -> GuidedGradCamPP:
        resolved = super().resolve(model, input_shape)
        if model is not None:
            shape = input_shape or default_input_shape(model)
            guided_plan(model, shape, self.other_activations)  # refuse before any work
        return resolved

    @property
    def passes_per_image(self) -> int:
        return 2

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        layer = cam_layer_name(model, self.layer, x.shape[1:])
        activation, grad = layer_activation_and_grad(model, x, target, layer)
        cam = gradcam_pp_from(activation, grad, x.shape[-2:])
        return guided_backprop(model, x, target, self.other_activations) * cam
