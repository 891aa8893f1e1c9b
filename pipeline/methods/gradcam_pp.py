"""`gradcam++`: Grad-CAM++ (Chattopadhyay et al., WACV 2018); captum has none, so it lives here.

With A (B, K, h, w) the activation of the CAM layer and g = d logit_target / d A::

    alpha_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3)      (0 where the denominator is 0)
    w_k       = sum_ij alpha_kij relu(g_kij)
    map       = relu(sum_k w_k A_k), bilinearly upsampled to the input size.

The layer is `model.cam_layer` (the last convolutional block) unless `layer` names another.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.errors import SatpipeError
from satpipe.pipeline.methods.base import Method, input_leaf, target_logit_sum
from satpipe.pipeline.methods.registry import register_method
from satpipe.train.models import get_submodule


def cam_layer_name(model: nn.Module, layer: str | None) -> str:
    """`layer` if given, else the model's `cam_layer` (one-line error when it has none)."""
    name = layer or getattr(model, "cam_layer", None)
    if not name:
        raise SatpipeError(
            f"{type(model).__name__} has no cam_layer; pass layer=<dotted module name>"
        )
    return name


def layer_activation_and_grad(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dlogit_target/dA) for `layer`'s output, both (B, K, h, w) float32, detached."""
    module = get_submodule(model, layer)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        # The input is a graph leaf so A is part of a graph although the weights are frozen.
        logits = model(input_leaf(x))
    finally:
        handle.remove()
    if len(seen) != 1 or not isinstance(seen[0], torch.Tensor) or seen[0].ndim != 4:
        raise SatpipeError(f"layer '{layer}' must run once per forward and give (B, K, h, w)")
    (grad,) = torch.autograd.grad(target_logit_sum(logits, target), seen[0])
    return seen[0].detach().float(), grad.float()


def gradcam_pp_from(activation: torch.Tensor, grad: torch.Tensor, size) -> torch.Tensor:
    """The Grad-CAM++ map (B, 1, *size) from A and dY/dA (B, K, h, w), >= 0."""
    g2 = grad * grad
    denom = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * grad
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
    weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)


@register_method("gradcam++")
@dataclasses.dataclass
class GradCamPP(Method):
    """Grad-CAM++ of the target logit: (B, 1, H, W) float32, >= 0. `layer`: dotted module
    name (default None = `model.cam_layer`; the runner records the resolved name)."""

    layer: str | None = None

    single_channel = True
    amp_safe = True

    def resolve(self, model: nn.Module | None) -> GradCamPP:
        if model is None:
            return self
        return dataclasses.replace(self, layer=cam_layer_name(model, self.layer))

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        layer = cam_layer_name(model, self.layer)
        activation, grad = layer_activation_and_grad(model, x, target, layer)
        return gradcam_pp_from(activation, grad, x.shape[-2:])
