"""Joint batched augmentation on the device: one random crop and flip for image, map and mask.

The SAT perturbation pushes each pixel against its saliency, so a map must stay aligned with its
image pixel for pixel after augmentation. Every tensor of a batch goes through the same gather
with the same per-row offsets; nothing is drawn separately per tensor.

Tensors are channels-last `(B, H, W, ...)` (the store layout), so the crop and flip are a single
advanced-indexing gather that works for uint8 images, float16 maps and (B, H, W) masks alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PAD = 4  # RandomCrop(32, padding=4) of the paper's CIFAR recipe


@dataclass(frozen=True)
class CropFlip:
    """Per-row augmentation parameters: `dy`, `dx` in [0, 2*pad] (offset of the crop window in
    the zero-padded image; `pad` = no shift) and `flip` (bool, horizontal flip). All (B,)."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    pad: int = PAD

    def __len__(self) -> int:
        return int(self.dy.shape[0])

    def to(self, device: torch.device | str) -> CropFlip:
        return CropFlip(
            self.dy.to(device, non_blocking=True),
            self.dx.to(device, non_blocking=True),
            self.flip.to(device, non_blocking=True),
            self.pad,
        )

    def __getitem__(self, index) -> CropFlip:
        return CropFlip(self.dy[index], self.dx[index], self.flip[index], self.pad)


def draw_crop_flip(n: int, generator: torch.Generator, pad: int = PAD) -> CropFlip:
    """Draw parameters for `n` rows on the generator's device (CPU generators make the draws
    identical whatever device the data lives on)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return CropFlip(dy, dx, flip, pad)


def crop_flip(
    tensors: Sequence[torch.Tensor | None], params: CropFlip
) -> list[torch.Tensor | None]:
    """Apply the same zero-padded random crop and horizontal flip to every tensor.

    tensors: each `(B, H, W)` or `(B, H, W, C)`, any dtype, all on one device with equal B, H, W
    (None entries pass through). params: a `CropFlip` of B rows (moved to the tensors' device).
    Returns tensors of the same shapes and dtypes. Row b of the output is row b of the input,
    shifted by `(dy - pad, dx - pad)` with zeros entering at the border, then mirrored if
    `flip[b]`: out[b, i, j] = in[b, i + dy - pad, j' + dx - pad], j' = W-1-j when flipped.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return list(tensors)
    b, h, w = present[0].shape[:3]
    device = present[0].device
    p = params.to(device)
    pad = p.pad
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = p.dy[:, None] + ar_h[None, :]  # (B, H) indices into the padded image
    cols = torch.where(p.flip[:, None], (w - 1) - ar_w[None, :], ar_w[None, :]) + p.dx[:, None]
    bidx = torch.arange(b, device=device)[:, None, None]
    out: list[torch.Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        if t.shape[:3] != (b, h, w):
            raise ValueError(f"crop_flip: shape {tuple(t.shape)} does not match {(b, h, w)}")
        # Zero padding on H and W only; a (B, H, W) mask gets a trailing unit axis meanwhile.
        x = t if t.dim() == 4 else t.unsqueeze(-1)
        padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
        y = padded[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        out.append(y if t.dim() == 4 else y.squeeze(-1))
    return out
