"""Accuracy under image distortions: the SAT code's contrast, low-pass and high-pass tests.

The authors' code (github.com/Puneet2000/SAT_ECML2020: `test_dict` in io_utils.py, the filters
in distortions.py, after Geirhos et al. 2018) evaluates a model on the test set distorted at
each level of a grid. The three filters, as that code defines them on an image in [0, 1]:

| name      | x -> (levels: the code's grid)                                                      |
|-----------|-------------------------------------------------------------------------------------|
| contrast  | (1 - c) / 2 + c x, every channel (c: 0.1, 0.3, 0.5, 0.7, 0.9, 1)                    |
| low-pass  | grey -> Gaussian blur of std s, borders padded with grey 0.4423, clipped to [0, 1], |
|           | copied to every channel (s: 1, 2, 4, 8, 16, 32)                                     |
| high-pass | grey - its low-pass, shifted so its mean is 0.4423, clipped, copied to every channel |
|           | (s: 2.82, 2, 1.414, 1, 0.7, 0.5)                                                    |

grey = 0.2125 R + 0.7154 G + 0.0721 B (skimage's rgb2gray, which the code calls; a one-channel
image is its own grey). The blur is scipy's `gaussian_filter(grey, s, mode="constant",
cval=0.4423)`: a separable kernel exp(-t^2 / 2 s^2), normalised, of radius int(4 s + 0.5),
each axis padded with 0.4423; s = 0 is the identity. Here it runs batched in torch on the
images' device (tests/test_distortions.py checks it against scipy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry

BG_GREY = 0.4423  # the code's "mean pixel value over all images", its padding and mean
GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


@dataclass(frozen=True)
class Distortion:
    """One distortion: apply(x (B, C, H, W) in [0, 1], level) -> same shape in [0, 1]; the
    official grid of levels, in the order the code lists them (weakest last for contrast)."""

    name: str
    summary: str
    apply: Callable[[torch.Tensor, float], torch.Tensor]
    levels: tuple[float, ...]
    level_name: str


DISTORTIONS: Registry[Distortion] = Registry("distortion")


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): skimage's luminance of RGB images; a one-channel image as it is."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise SatpipeError(f"the distortions need 1- or 3-channel images, got {x.shape[1]}")
    w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_kernel(std: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """scipy's 1-d Gaussian weights for `std` (radius int(4 std + 0.5)), normalised, (2r+1,)."""
    radius = int(TRUNCATE * float(std) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(std)) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, std: float, cval: float = BG_GREY) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter(., std, mode="constant", cval) over H and W of every
    (B, C, H, W) channel: one axis after the other, each padded with cval. std 0: x."""
    if std <= 0:
        return x
    k = gaussian_kernel(std, x.dtype, x.device)
    r = (len(k) - 1) // 2
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), value=cval), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), value=cval), k.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def contrast(x: torch.Tensor, level: float) -> torch.Tensor:
    """(1 - c) / 2 + c x: the code's `adjust_contrast`, c in [0, 1] (1: the identity)."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"contrast level must be in [0, 1], got {level}")
    return (1.0 - level) / 2.0 + x * level


def low_pass(x: torch.Tensor, level: float) -> torch.Tensor:
    """The code's `low_pass_filter`: the grey image blurred with std `level`, clipped, on
    every channel (a grey image at std 0: the identity)."""
    out = gaussian_blur(grey(x), level).clamp(0.0, 1.0)
    return out.expand(-1, x.shape[1], -1, -1).contiguous()


def high_pass(x: torch.Tensor, level: float) -> torch.Tensor:
    """The code's `high_pass_filter`: grey - low-pass(grey) (std `level`), plus the shift that
    brings its mean (per image) to 0.4423, clipped, on every channel."""
    g = grey(x)
    detail = g - gaussian_blur(g, level)
    detail = detail + (BG_GREY - detail.mean(dim=(1, 2, 3), keepdim=True))
    return detail.clamp(0.0, 1.0).expand(-1, x.shape[1], -1, -1).contiguous()


for _d in (
    Distortion("contrast", "contrast (1-c)/2 + c x, c 0.1-1 (the SAT code's grid)", contrast,
               (0.1, 0.3, 0.5, 0.7, 0.9, 1.0), "contrast c"),
    Distortion("low-pass", "greyscale Gaussian blur, std 1-32 px (the SAT code's grid)", low_pass,
               (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), "blur std (px)"),
    Distortion("high-pass", "greyscale minus its Gaussian blur, std 2.82-0.5 px (the SAT code's "
               "grid)", high_pass, (2.82, 2.0, 1.414, 1.0, 0.7, 0.5), "filter std (px)"),
):  # fmt: skip
    DISTORTIONS.register(_d.name, _d, summary=_d.summary)


def level_key(level: float) -> str:
    """A level as results.json writes it: "1", "0.5", "1.414"."""
    value = float(level)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def check_level(name: str, level: float) -> None:
    """Refuse a level the distortion does not define (contrast outside [0, 1], std < 0)."""
    if not math.isfinite(level) or level < 0 or (name == "contrast" and level > 1):
        bound = "[0, 1]" if name == "contrast" else ">= 0"
        raise SatpipeError(f"--distortion-levels {name}: levels must be {bound}, got {level}")


def distortion_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    levels: tuple[float, ...],
    batch_size: int,
) -> dict[str, np.ndarray]:
    """{level key: (N,) bool}: `model` (eval mode, no gradients) right on each distorted image.

    x: (N, C, H, W) in [0, 1] on the model's device, y: (N,); the filters run on that device,
    batch by batch; one transfer per level."""
    d = DISTORTIONS.get(name)
    out = {}
    with torch.no_grad():
        for level in levels:
            right = torch.cat([
                model(d.apply(x[i : i + batch_size], level)).argmax(1) == y[i : i + batch_size]
                for i in range(0, len(y), batch_size)
            ])  # fmt: skip
            out[level_key(level)] = right.cpu().numpy()
    return out


def distortions_plot(curves: dict[str, dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Accuracy against each distortion's level (the SAT code's contrast / low-pass / high-pass
    tests): one panel per distortion, one line per entry of `curves` ({label: results.json's
    `distortions`}), shaded band = its 95% Wilson interval. Levels are drawn in ascending order
    (log scale for the filters' std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for c in curves.values() for n in c))
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 3.6), dpi=120, sharey=True, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        for label, table in curves.items():
            if name not in table:
                continue
            cells = sorted(table[name]["levels"].items(), key=lambda kv: float(kv[0]))
            xs = [float(k) for k, _ in cells]
            ax.plot(xs, [c["accuracy"] for _, c in cells], marker="o", ms=3, label=label)
            ax.fill_between(xs, [c["interval"]["low"] for _, c in cells],
                            [c["interval"]["high"] for _, c in cells], alpha=0.2)  # fmt: skip
            ax.set_xlabel(table[name]["level"])
        if name != "contrast":
            ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.suptitle(title or "Accuracy under distortions; band: 95% interval", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
