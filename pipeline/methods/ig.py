"""`ig`: Integrated Gradients (Sundararajan et al. 2017) via captum `IntegratedGradients`."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients

from satpipe.core.defaults import ig_internal_batch
from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods.base import Method, check_positive
from satpipe.pipeline.methods.registry import register_method

BASELINES = ("black", "blur", "uniform")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with std `sigma` pixels, reflect padding.

    Kernel radius 3 sigma, cut to what reflect padding allows (< H and < W). Written out here
    rather than taken from torchvision so worker processes need not import it (seconds each).
    """
    radius = max(1, min(int(3 * sigma + 0.5), x.shape[-2] - 1, x.shape[-1] - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@register_method("ig")
@dataclasses.dataclass
class IntegratedGradientsMethod(Method):
    """(x - x') * integral_0^1 grad logit_target(x' + a (x - x')) da, Gauss-Legendre rule.

    steps: quadrature points (default 50). baseline x': "black" (zeros, default), "blur"
    (x blurred with a Gaussian of std `blur_sigma` pixels), "uniform" (U(0, 1) noise from the
    generator). internal_batch_size: images per forward pass across steps, at least one
    step of the whole batch (default per device, `satpipe.core.defaults.ig_internal_batch`: 64 on
    a CPU, one step per pass, so the runner's --batch-size is the pass size; on CUDA whole
    steps filling a GPU-sized pass).
    Completeness: the map sums to logit(x) - logit(x') up to quadrature error. Not
    `amp_safe`: completeness is the point of IG and bf16 breaks it. Output (B, C, H, W).
    """

    steps: int = 50
    baseline: str = "black"
    blur_sigma: float = 4.0
    internal_batch_size: int | None = None

    uses_generator = True

    def __post_init__(self) -> None:
        check_positive(
            self.name,
            steps=self.steps,
            blur_sigma=self.blur_sigma,
            internal_batch_size=self.internal_batch_size,
        )
        if self.baseline not in BASELINES:
            raise SatpipeError(
                f"method 'ig': baseline must be one of {', '.join(BASELINES)}, "
                f"got '{self.baseline}'"
            )

    @property
    def passes_per_image(self) -> int:
        return self.steps

    def for_device(self, device, batch_size, input_shape, recorded=None) -> Method:
        if self.internal_batch_size is not None:
            return self
        internal = (recorded or {}).get("internal_batch_size")
        if internal is None:
            _, h, w = input_shape
            internal = ig_internal_batch(device, batch_size, h, w)
        return dataclasses.replace(self, internal_batch_size=int(internal))

    def make_baseline(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The baseline x' for batch x (B, C, H, W), same shape, in [0, 1]."""
        if self.baseline == "black":
            return torch.zeros_like(x)
        if self.baseline == "uniform":
            return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return gaussian_blur(x, self.blur_sigma)

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        # captum evaluates internal_batch_size // B steps of the whole batch per pass; at
        # least one step per pass (captum warns below that), so never fewer than B images.
        internal = self.internal_batch_size
        if internal is None:
            internal = ig_internal_batch(x.device, x.shape[0], *x.shape[-2:])
        internal = max(internal, x.shape[0])
        return IntegratedGradients(model).attribute(
            x.detach().clone(),
            baselines=self.make_baseline(x.detach(), generator),
            target=target,
            n_steps=self.steps,
            method="gausslegendre",
            internal_batch_size=internal,
        )
