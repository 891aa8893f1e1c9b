"""`gradcam++`: Grad-CAM++ (Chattopadhyay et al., WACV 2018); captum has none, so it lives here.

With A (B, K, h, w) the activation of the CAM layer and g = d logit_target / d A::

    alpha_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3)      (0 where the denominator is 0)
    w_k       = sum_ij alpha_kij relu(g_kij)
    map       = relu(sum_k w_k A_k), bilinearly upsampled to the input size.

The layer is `layer` (a dotted module name; `--cam-layer` on the command line) when given, else
the model's `cam_layer` (satpipe's built-ins name their last convolutional block), else the one
`find_cam_layer` finds with a probe forward (the last spatial activation before pooling; see
pipeline/methods/layers.py). The runner resolves it once and records it in the store's params.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import input_leaf
from satpipe.pipeline.methods.base import Method, target_logit_sum
from satpipe.pipeline.methods.layers import find_cam_layer
from satpipe.pipeline.methods.registry import register_method
from satpipe.train.models import get_submodule

# model -> {input shape: layer found}; found once per model, not per batch.
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cam_layer_name(model: nn.Module, layer: str | None, input_shape: Sequence[int]) -> str:
    """`layer` if given, else the model's `cam_layer`, else the layer `find_cam_layer` finds
    for (C, H, W) inputs; the name is checked to exist."""
    name = layer or getattr(model, "cam_layer", None)
    if not name:
        shape = tuple(int(v) for v in input_shape)
        found = _FOUND.setdefault(model, {})
        if shape not in found:
            found[shape] = find_cam_layer(model, shape)
        name = found[shape]
    get_submodule(model, name)
    return name


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, 32, 32) with C the model's input channels: the probe when no data size is known."""
    norm = getattr(model, "satpipe_normalize", None) or getattr(model, "normalize", None)
    mean = getattr(norm, "mean", None)
    return (int(mean.shape[1]) if mean is not None else 3, 32, 32)


def layer_activation_and_grad(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dlogit_target/dA) for `layer`'s output, both (B, K, h, w) float32, detached."""
    module = get_submodule(model, layer)
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, out):
        seen.append(out)
        # The rest of the forward gets a copy: an in-place op after the layer (torchvision's
        # `out += identity`) must not change the activation A that the map is made of.
        return out.clone() if isinstance(out, torch.Tensor) else out

    handle = module.register_forward_hook(keep)
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
    name (default None: `model.cam_layer`, else found; the runner records the resolved name)."""

    layer: str | None = None

    single_channel = True
    amp_safe = True

    def resolve(self, model: nn.Module | None, input_shape=None) -> GradCamPP:
        if model is None:
            return self
        shape = input_shape or default_input_shape(model)
        return dataclasses.replace(self, layer=cam_layer_name(model, self.layer, shape))

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        layer = cam_layer_name(model, self.layer, x.shape[1:])
        activation, grad = layer_activation_and_grad(model, x, target, layer)
        return gradcam_pp_from(activation, grad, x.shape[-2:])
