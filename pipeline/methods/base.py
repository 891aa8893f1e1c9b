"""What every saliency method shares: the call contract, a frozen model, optional bf16 autocast.

A method is a small dataclass whose fields are its parameters (so `params` is exactly what the
store records). Calling it maps a batch to a raw attribution of the target logit::

    method(model, x, target, generator=None, amp=False) -> Tensor (B, 1 or C, H, W) float32

`x` is (B, C, H, W) float in [0, 1] on the model's device, `target` is (B,) int64. Gradients
are taken with respect to the input only: during the call the model is in eval mode and its
parameters do not require grad (so no weight gradients are ever built); both are restored after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import frozen


def target_logit_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_b logits[b, target[b]]: its gradient w.r.t. a batch holds each image's own gradient
    because images do not interact in an eval-mode model."""
    return logits.gather(1, target.view(-1, 1)).sum()


@dataclasses.dataclass
class Method:
    """Base class. Subclasses are dataclasses whose fields are their parameters and implement
    `_attribute(model, x, target, generator)`.

    Class attributes:
      name: registry name; single_channel: True when maps are (B, 1, H, W) (broadcast over
      colour channels), else (B, C, H, W); needs_model: False for maps that come from data
      (mask, bbox) or chance (random); amp_safe: bf16 autocast keeps maps within the stated
      tolerance of fp32 (see tests/test_methods.py); uses_generator: draws random numbers.
    """

    name: ClassVar[str] = ""
    single_channel: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True
    amp_safe: ClassVar[bool] = False
    uses_generator: ClassVar[bool] = False
    # Dataset arrays (besides images and labels) a method reads, e.g. ("masks",).
    requires: ClassVar[tuple[str, ...]] = ()

    @property
    def params(self) -> dict[str, Any]:
        """The resolved parameters, JSON-able; recorded in the saliency store."""
        return dataclasses.asdict(self)

    @property
    def passes_per_image(self) -> int:
        """Forward+backward passes per image (the cost unit of the benchmark)."""
        return 1

    def out_channels(self, in_channels: int) -> int:
        return 1 if self.single_channel else in_channels

    def resolve(self, model: nn.Module | None, input_shape=None) -> Method:
        """A copy with model-dependent defaults filled in (e.g. the Grad-CAM layer), found for
        (C, H, W) inputs (`input_shape`; default (C, 32, 32)); a model the method cannot apply
        to is refused here, before any work, in one line."""
        return self

    def for_device(
        self,
        device: torch.device | str,
        batch_size: int,
        input_shape: tuple[int, int, int],
        recorded: Mapping[str, Any] | None = None,
    ) -> Method:
        """A copy with device-dependent parameters left unset (None) filled in for
        `batch_size` images of `input_shape` (C, H, W) on `device`: from `recorded` (the params
        of the store being resumed) when it has them, else `satpipe.core.defaults`. Results depend
        on these, so the runner records the filled-in params."""
        return self

    def __call__(
        self,
        model: nn.Module | None,
        x: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
        amp: bool = False,
    ) -> torch.Tensor:
        """Raw attribution (B, 1 or C, H, W) float32 of the target logit for x (B, C, H, W).

        `generator` seeds any randomness (noise, random baselines); `amp=True` runs the model
        under bf16 autocast when this method is `amp_safe` (the runner asks for it on CUDA).
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise SatpipeError(f"{self.name}: x must be float (B, C, H, W), got {tuple(x.shape)}")
        target = torch.as_tensor(target, device=x.device).long().view(-1)
        if target.shape[0] != x.shape[0]:
            raise SatpipeError(
                f"{self.name}: {target.shape[0]} targets for a batch of {x.shape[0]} images"
            )
        if self.needs_model and model is None:
            raise SatpipeError(f"method '{self.name}' needs a model (pass --model CKPT)")
        with frozen(model), self.autocast(x.device.type, amp):
            maps = self._attribute(model, x, target, generator)
        maps = maps.detach().float()
        b, c, h, w = x.shape
        expected = (b, self.out_channels(c), h, w)
        if tuple(maps.shape) != expected:
            raise SatpipeError(f"{self.name}: produced {tuple(maps.shape)}, expected {expected}")
        return maps

    def autocast(self, device_type: str, amp: bool):
        """The autocast context this method's model passes run under: bf16 when `amp` is
        asked for and the method is `amp_safe`, else none (fp32). Benchmarks time the
        forward+backward floor under the same context."""
        if amp and self.amp_safe and self.needs_model:
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return nullcontext()

    def _attribute(
        self,
        model: nn.Module | None,
        x: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        raise NotImplementedError


def check_positive(method: str, **values: float) -> None:
    """One-line error for parameters that must be > 0."""
    for key, value in values.items():
        if value is not None and not value > 0:
            raise SatpipeError(f"method '{method}': {key} must be > 0, got {value!r}")
