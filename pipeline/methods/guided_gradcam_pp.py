"""`guided-gradcam++`: Guided Backprop times the upsampled Grad-CAM++ map (captum's GuidedGradCam
recipe with Grad-CAM++ in place of Grad-CAM)."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from captum.attr import GuidedBackprop

from satpipe.pipeline.methods.base import input_leaf
from satpipe.pipeline.methods.gradcam_pp import (
    GradCamPP,
    cam_layer_name,
    gradcam_pp_from,
    layer_activation_and_grad,
)
from satpipe.pipeline.methods.registry import register_method


@register_method("guided-gradcam++")
@dataclasses.dataclass
class GuidedGradCamPP(GradCamPP):
    """GBP (B, C, H, W) * Grad-CAM++ (B, 1, H, W) -> (B, C, H, W) float32. Two passes."""

    single_channel = False

    @property
    def passes_per_image(self) -> int:
        return 2

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        layer = cam_layer_name(model, self.layer)
        activation, grad = layer_activation_and_grad(model, x, target, layer)
        cam = gradcam_pp_from(activation, grad, x.shape[-2:])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Setting backward hooks", UserWarning)
            guided = GuidedBackprop(model).attribute(input_leaf(x), target=target)
        return guided * cam
