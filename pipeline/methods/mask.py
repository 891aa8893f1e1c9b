"""`mask`: weak saliency from the dataset's segmentation masks, +1 on the object, -1 elsewhere."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.registry import register_method


@register_method("mask")
@dataclasses.dataclass
class MaskSaliency(Method):
    """Maps (B, 1, H, W) in {-1, +1} from masks (B, H, W) in {0, 1}. No model; the runner
    reads the dataset's `masks` array and calls `from_rows(masks=...)`."""

    single_channel = True
    needs_model = False
    requires = ("masks",)

    @property
    def passes_per_image(self) -> int:
        return 0

    def from_rows(self, masks=None, boxes=None, size=None, device=None) -> torch.Tensor:
        if masks is None:
            raise SatpipeError("method 'mask' needs the dataset's masks (this dataset has none)")
        m = torch.as_tensor(np.asarray(masks), device=device)
        if m.ndim != 3:
            raise SatpipeError(f"method 'mask': masks must be (B, H, W), got {tuple(m.shape)}")
        return (m.float() * 2 - 1).unsqueeze(1)

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        raise SatpipeError("method 'mask' takes its maps from the dataset: use from_rows(masks=)")
