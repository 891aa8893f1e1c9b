"""`bbox`: weak saliency from the dataset's bounding boxes, +1 inside the box, -1 outside."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.methods.registry import register_method


@register_method("bbox")
@dataclasses.dataclass
class BoxSaliency(Method):
    """Maps (B, 1, H, W) in {-1, +1} from boxes (B, 4) = (x0, y0, x1, y1), end exclusive, for
    images of `size` (H, W). No model; the runner reads the dataset's `boxes` array."""

    single_channel = True
    needs_model = False
    requires = ("boxes",)

    @property
    def passes_per_image(self) -> int:
        return 0

    def from_rows(self, masks=None, boxes=None, size=None, device=None) -> torch.Tensor:
        if boxes is None:
            raise SatpipeError("method 'bbox' needs the dataset's boxes (this dataset has none)")
        if size is None:
            raise SatpipeError("method 'bbox' needs the image size (H, W)")
        b = torch.as_tensor(np.asarray(boxes), device=device).long().view(-1, 4)
        h, w = size
        ys = torch.arange(h, device=b.device).view(1, h, 1)
        xs = torch.arange(w, device=b.device).view(1, 1, w)
        x0, y0, x1, y1 = (b[:, i].view(-1, 1, 1) for i in range(4))
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        return (inside.float() * 2 - 1).unsqueeze(1)

    def _attribute(self, model, x, target, generator) -> torch.Tensor:
        raise SatpipeError("method 'bbox' takes its maps from the dataset: use from_rows(boxes=)")
