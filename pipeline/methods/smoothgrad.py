"""`smoothgrad`: the input gradient averaged over noisy copies of the image (Smilkov et al. 2017).

Same computation as captum's `NoiseTunnel(Saliency).attribute(x, nt_type="smoothgrad",
nt_samples=samples, nt_samples_batch_size=samples_batch_size, stdevs=sigma, abs=False)`:
the same chunking into `samples_batch_size` noisy copies per image, the same draw order and
the same running sums. The difference is where the noise comes from: captum draws from the
process-global RNG, this draws from the `generator` the runner seeds per shard, so maps do not
depend on what else ran in the process (tests check equality with captum under
`torch.manual_seed`).
"""

from __future__ import annotations

import dataclasses

import torch
from captum.attr import Saliency

from satpipe.core.defaults import samples_per_pass
from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods.base import Method, check_positive
from satpipe.pipeline.methods.registry import register_method


@register_method("smoothgrad")
@dataclasses.dataclass
class SmoothGrad(Method):
    """Mean over `samples` of grad logit_target(x + n), n ~ N(0, sigma^2) per element.

    samples: noisy copies per image (default 10). sigma: noise std as a fraction of the input
    range; inputs live in [0, 1], so the std is `sigma` in pixel units (default 0.15; the noisy
    copies are not clamped, as in captum). samples_batch_size: noisy copies per image per
    forward pass (one pass sees B * samples_batch_size images; default per device, see
    `satpipe.core.defaults.samples_per_pass`: 1 on a CPU, where the runner's --batch-size is the
    pass size and small passes run fastest; on CUDA as many as fill a GPU-sized pass). The
    chunking decides the order of the noise draws, so the value used is recorded.
    Output (B, C, H, W) float32.
    """

    samples: int = 10
    sigma: float = 0.15
    samples_batch_size: int | None = None

    amp_safe = True
    uses_generator = True

    def __post_init__(self) -> None:
        check_positive(self.name, samples=self.samples, samples_batch_size=self.samples_batch_size)
        if not self.sigma >= 0:
            raise SatpipeError(f"method 'smoothgrad': sigma must be >= 0, got {self.sigma!r}")

    @property
    def passes_per_image(self) -> int:
        return self.samples

    def for_device(self, device, batch_size, input_shape, recorded=None) -> SmoothGrad:
        if self.samples_batch_size is not None:
            return self
        chunk = (recorded or {}).get("samples_batch_size")
        if chunk is None:
            _, h, w = input_shape
            chunk = samples_per_pass(device, batch_size, h, w, self.samples)
        return dataclasses.replace(self, samples_batch_size=int(chunk))

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        saliency = Saliency(model)
        per_pass = self.samples_batch_size
        if per_pass is None:
            per_pass = samples_per_pass(x.device, x.shape[0], *x.shape[-2:], self.samples)
        chunk = min(self.samples, per_pass)
        full, rest = divmod(self.samples, chunk)
        total = None
        for k in [chunk] * full + ([rest] if rest else []):
            # Image-major copies, as captum's repeat_interleave: rows b*k .. b*k+k-1 are image b.
            noise = torch.randn(
                (x.shape[0] * k, *x.shape[1:]), generator=generator, device=x.device
            )
            noisy = (x.detach().repeat_interleave(k, dim=0) + noise * self.sigma).requires_grad_()
            grads = saliency.attribute(noisy, target=target.repeat_interleave(k), abs=False)
            part = grads.detach().view(x.shape[0], k, *x.shape[1:]).sum(dim=1)
            total = part if total is None else total + part
        return total * 1 / self.samples  # the same rounding as captum's `sum * 1 / n`
