"""What every importer shares: decoding, the resize policy and seeded splits (the writer is
writer.py's `write_dataset`).

Decoding is PIL's (see writer.py for the channel rule: RGB, or 8-bit grey for greyscale data).
A file that PIL cannot read completely (truncated, not an image) is an error that names the
file. PIL rather than `torchvision.io.decode_image`: PIL reads every format the importers take
(decode_image has no BMP or TIFF), its modes say whether an image is greyscale before any
conversion, and the bytes it decodes are the ones every store imported so far was made of, so
re-importing a dataset keeps its fingerprint. (torchvision's own ImageFolder decodes with PIL.)

Resizing (`--size N` gives N x N) follows one explicit policy, recorded in the store's
`source` attribute:
- `stretch`: scale each axis to N (aspect ratio changes; the paper's Resize((32, 32))).
- `center-crop`: scale the shorter side to N, then cut the centre N x N.
- `pad`: scale the longer side to N, then pad the rest with black, image centred.
Images use PIL bilinear (antialiased when shrinking); masks use nearest so they stay {0, 1};
boxes are scaled outward (floor of the start, ceil of the end) and clipped to the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.outputs import prepare_output, refuse_chained
from satpipe.data.storage import store_exists, unfinished_dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BLOCK_ROWS = 256
COLOUR_POLICY = "non-RGB images converted with PIL convert('RGB'): grey replicated, alpha dropped"
RESIZE_METHOD = "PIL bilinear (antialiased) for images, nearest for masks, boxes scaled outward"


class ResizePolicy(str, Enum):
    """How an image of another size becomes N x N."""

    stretch = "stretch"
    center_crop = "center-crop"
    pad = "pad"


def resize_policy(value: str | ResizePolicy) -> ResizePolicy:
    try:
        return ResizePolicy(value)
    except ValueError:
        valid = ", ".join(p.value for p in ResizePolicy)
        raise SatpipeError(f"unknown resize policy '{value}'; choose one of {valid}") from None


# --------------------------------------------------------------------------------------------
# Decoding


def open_image(path: Path) -> Image.Image:
    """Open and fully decode `path` (so truncation shows here, not later)."""
    try:
        with Image.open(path) as im:
            im.load()
            # Palette images with a transparent index go through RGBA (PIL warns otherwise).
            if im.mode == "P" and "transparency" in im.info:
                return im.convert("RGBA")
            return im.copy()
    except FileNotFoundError:
        raise SatpipeError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise SatpipeError(f"{path}: not an image (PIL cannot identify it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SatpipeError(f"{path}: cannot decode image ({quote(exc, 300)})") from None


def decode_rgb(path: str | Path) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3); non-RGB modes converted (see module doc)."""
    im = open_image(Path(path))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def decode_gray(path: str | Path) -> np.ndarray:
    """A mask or trimap file as (H, W) integer values: palette indices for P images, the
    value for L/I/1 images, and for RGB(A) files the maximum over colour channels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise SatpipeError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise SatpipeError(f"{path}: not an image (PIL cannot identify it)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise SatpipeError(f"{path}: cannot decode mask ({quote(exc, 300)})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return arr.astype(np.int64)


def decode_rgb_raw(path: str | Path) -> np.ndarray:
    """A mask file that encodes classes as colours, as uint8 (H, W, 3), palette expanded."""
    im = open_image(Path(path))
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_text(path: Path) -> str:
    """A list or annotation file as text; one that is missing, not UTF-8 or holds NUL bytes
    (a binary file, or a damaged one) is an error naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SatpipeError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise SatpipeError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:
        raise SatpipeError(f"{path}: cannot read ({quote(exc, 300)})") from None
    if "\x00" in text:
        raise SatpipeError(f"{path}: not a text file (it holds NUL bytes)")
    return text


def nonzero_mask(path: Path) -> np.ndarray:
    """ImageFolder masks: any non-zero value is object."""
    return (decode_gray(path) != 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Resizing


@dataclass(frozen=True)
class Fit:
    """How an (h, w) source maps to the (out_h, out_w) output: scale to (rh, rw), then crop
    (center-crop) or pad (pad) at offset (top, left); `top/left` are + for pad, - for crop."""

    h: int
    w: int
    rh: int
    rw: int
    out_h: int
    out_w: int
    top: int
    left: int

    @property
    def identity(self) -> bool:
        return (self.h, self.w) == (self.rh, self.rw) == (self.out_h, self.out_w)


def plan_fit(h: int, w: int, size: int | None, policy: ResizePolicy) -> Fit:
    """Plan the mapping of an (h, w) image to size x size (`None` keeps it as it is)."""
    if size is None:
        return Fit(h, w, h, w, h, w, 0, 0)
    if policy is ResizePolicy.stretch:
        return Fit(h, w, size, size, size, size, 0, 0)
    if policy is ResizePolicy.center_crop:
        scale = size / min(h, w)
        rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
        return Fit(h, w, rh, rw, size, size, -((rh - size) // 2), -((rw - size) // 2))
    scale = size / max(h, w)
    rh, rw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    return Fit(h, w, rh, rw, size, size, (size - rh) // 2, (size - rw) // 2)


def _place(fit: Fit, resized: np.ndarray) -> np.ndarray:
    """Crop or pad a (rh, rw, ...) array into (out_h, out_w, ...)."""
    if (fit.rh, fit.rw) == (fit.out_h, fit.out_w):
        return resized
    if fit.rh >= fit.out_h and fit.rw >= fit.out_w:  # center-crop: cut the middle out
        return resized[-fit.top : -fit.top + fit.out_h, -fit.left : -fit.left + fit.out_w]
    out = np.zeros((fit.out_h, fit.out_w, *resized.shape[2:]), dtype=resized.dtype)
    out[fit.top : fit.top + fit.rh, fit.left : fit.left + fit.rw] = resized
    return out


def fit_image(fit: Fit, image: np.ndarray) -> np.ndarray:
    """uint8 (h, w, C), C 1 or 3 -> uint8 (out_h, out_w, C) by the planned fit (bilinear)."""
    if fit.identity:
        return image
    grey = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if grey else image)
    resized = np.asarray(pil.resize((fit.rw, fit.rh), Image.BILINEAR))
    return _place(fit, resized[..., None] if grey else resized)


def fit_mask(fit: Fit, mask: np.ndarray) -> np.ndarray:
    """uint8 {0,1} (h, w) -> (out_h, out_w) by the planned fit (nearest)."""
    if fit.identity:
        return mask
    resized = np.asarray(Image.fromarray(mask).resize((fit.rw, fit.rh), Image.NEAREST))
    return _place(fit, resized)


def fit_box(fit: Fit, box: Sequence[int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end exclusive, in source pixels -> output pixels; None when the box
    falls wholly outside the output (only possible with center-crop)."""
    sx, sy = fit.rw / fit.w, fit.rh / fit.h
    x0 = math.floor(box[0] * sx + 1e-9) + fit.left
    y0 = math.floor(box[1] * sy + 1e-9) + fit.top
    x1 = math.ceil(box[2] * sx - 1e-9) + fit.left
    y1 = math.ceil(box[3] * sy - 1e-9) + fit.top
    x0, x1 = max(0, x0), min(fit.out_w, x1)
    y0, y1 = max(0, y0), min(fit.out_h, y1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------------
# Sources and splits


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted by relative path; hidden ones skipped."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def class_folders(root: Path) -> list[Path]:
    """Sub-folders of `root` (one per class), sorted by name; hidden ones skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SatpipeError(f"{path}: {what} folder not found")
    return path


def seeded_split(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list, list]:
    """(train indices, test indices), stratified: per class, round(test_fraction * n_c) rows
    picked by a seeded permutation go to test (at least one row of each class stays in
    train). Indices keep their original order within each split."""
    if not 0.0 <= test_fraction < 1.0:
        raise SatpipeError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(len(rows) - 1, round(test_fraction * len(rows)))
        test[rng.permutation(rows)[:k]] = True
    return np.flatnonzero(~test).tolist(), np.flatnonzero(test).tolist()


def split_samples(
    samples: Sequence[Any], test_fraction: float, seed: int
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """({"train": [...], "test": [...]} of `samples` (each with a `.label`) split by
    `seeded_split`, the split's record for the store's `source` attribute)."""
    train_idx, test_idx = seeded_split([s.label for s in samples], test_fraction, seed)
    splits = {"train": [samples[i] for i in train_idx], "test": [samples[i] for i in test_idx]}
    return splits, {"kind": "seeded stratified", "test_fraction": test_fraction, "seed": seed}


def check_output(out: str, overwrite: bool, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse an existing output before any work is done (the writer checks again). An
    unfinished dataset store (an import that crashed or ran out of space) is not refused:
    the rerun replaces it."""
    refuse_chained(out)
    if overwrite:  # only a satpipe dataset store may be replaced: say so before the work
        prepare_output(out, "dataset", True, (), storage_options, remove=False)
        return
    if not store_exists(out, storage_options):
        return
    if not unfinished_dataset(out, storage_options):
        raise SatpipeError(f"{out}: output exists (pass --overwrite to replace it)")
