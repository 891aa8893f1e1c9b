"""What every importer shares: decoding, the resize policy, seeded splits and the writer loop.

Decoding is PIL's. Images that are not RGB (L, LA, P, RGBA, CMYK, 1, I;16) are converted with
`Image.convert("RGB")`: grey is replicated, palettes are expanded, alpha is dropped (not
composited). A file that PIL cannot read completely (truncated, not an image) is an error that
names the file.

Resizing (`--size N` gives N x N) follows one explicit policy, recorded in the store's
`source` attribute:
- `stretch`: scale each axis to N (aspect ratio changes; the paper's Resize((32, 32))).
- `center-crop`: scale the shorter side to N, then cut the centre N x N.
- `pad`: scale the longer side to N, then pad the rest with black, image centred.
Images use PIL bilinear (antialiased when shrinking); masks use nearest so they stay {0, 1};
boxes are scaled outward (floor of the start, ceil of the end) and clipped to the image.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from satpipe.data.store import DatasetWriter, store_exists, unfinished_dataset
from satpipe.errors import SatpipeError
from satpipe.progress import progress

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


def _open(path: Path) -> Image.Image:
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
        raise SatpipeError(f"{path}: cannot decode image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_rgb(path: str | Path) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3); non-RGB modes converted (see module doc)."""
    im = _open(Path(path))
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
        raise SatpipeError(f"{path}: cannot decode mask ({_one_line(exc)})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return arr.astype(np.int64)


def decode_rgb_raw(path: str | Path) -> np.ndarray:
    """A mask file that encodes classes as colours, as uint8 (H, W, 3), palette expanded."""
    im = _open(Path(path))
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
        raise SatpipeError(f"{path}: cannot read ({_one_line(exc)})") from None
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
    """uint8 (h, w, 3) -> uint8 (out_h, out_w, 3) by the planned fit (bilinear)."""
    if fit.identity:
        return image
    resized = np.asarray(Image.fromarray(image).resize((fit.rw, fit.rh), Image.BILINEAR))
    return _place(fit, resized)


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


@dataclass(frozen=True)
class Sample:
    """One image file to import: label index, optional mask file and box (x0, y0, x1, y1),
    end exclusive, in the source image's pixels."""

    image: Path
    label: int
    mask: Path | None = None
    box: tuple[int, int, int, int] | None = None


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


def check_output(out: str, overwrite: bool, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse an existing output before any work is done (the writer checks again). An
    unfinished dataset store (an import that crashed or ran out of space) is not refused:
    the rerun replaces it."""
    if overwrite or not store_exists(out, storage_options):
        return
    if not unfinished_dataset(out, storage_options):
        raise SatpipeError(f"{out}: output exists (pass --overwrite to replace it)")


# --------------------------------------------------------------------------------------------
# Writing


def _blocks(n: int, rows: int) -> Iterator[slice]:
    for a in range(0, n, rows):
        yield slice(a, min(a + rows, n))


def _load_sample(
    sample: Sample,
    size: int | None,
    policy: ResizePolicy,
    expected_hw: tuple[int, int],
    read_mask: Callable[[Path], np.ndarray] | None,
):
    image = decode_rgb(sample.image)
    h, w = image.shape[:2]
    if size is None and (h, w) != expected_hw:
        raise SatpipeError(
            f"{sample.image}: image is {w}x{h} but the first image is "
            f"{expected_hw[1]}x{expected_hw[0]}; pass --size to resize them all"
        )
    fit = plan_fit(h, w, size, policy)
    mask = box = None
    if sample.mask is not None and read_mask is not None:
        raw = read_mask(sample.mask)
        if raw.shape != (h, w):
            raise SatpipeError(
                f"{sample.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                f"{sample.image.name} is {w}x{h}"
            )
        mask = fit_mask(fit, raw.astype(np.uint8))
    if sample.box is not None:
        x0, y0, x1, y1 = sample.box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise SatpipeError(
                f"{sample.image}: box {list(sample.box)} lies outside the {w}x{h} image"
            )
        box = fit_box(fit, sample.box)
        if box is None:
            raise SatpipeError(
                f"{sample.image}: box {list(sample.box)} falls outside the "
                f"{policy.value} to {size}x{size}; use --resize-policy stretch or pad"
            )
    return fit_image(fit, image), mask, box


def write_samples(
    out: str,
    *,
    name: str,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[Sample]],
    size: int | None,
    policy: str | ResizePolicy,
    source: Mapping[str, Any],
    read_mask: Callable[[Path], np.ndarray] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
) -> str:
    """Decode, resize and write every sample of every split into a dataset store at `out`.

    `size=None` keeps images as they are (all must share the first image's size). Masks are
    stored when the samples carry mask files (all of them must), boxes when they carry boxes.
    Splits with no samples are left out. Returns `out`.
    """
    policy = resize_policy(policy)
    if size is not None and size < 1:
        raise SatpipeError(f"--size must be positive, got {size}")
    splits = {k: list(v) for k, v in splits.items() if len(v)}
    if "train" not in splits:
        raise SatpipeError(f"{source.get('path', out)}: no training images found")
    every = [s for rows in splits.values() for s in rows]
    for s in every:
        if not 0 <= s.label < len(classes):
            raise SatpipeError(f"{s.image}: label {s.label} out of range [0, {len(classes)})")
    has_masks = any(s.mask is not None for s in every)
    has_boxes = any(s.box is not None for s in every)
    if has_masks and read_mask is None:
        raise ValueError("samples carry mask files but no read_mask was given")
    for s in every:
        if has_masks and s.mask is None:
            raise SatpipeError(f"{s.image}: no mask for this image (other images have masks)")
        if has_boxes and s.box is None:
            raise SatpipeError(f"{s.image}: no box for this image (other images have boxes)")
    if size is None:
        first = decode_rgb(every[0].image)
        hw = first.shape[:2]
    else:
        hw = (size, size)
    source = {
        **dict(source),
        "size": size,
        "resize_policy": policy.value,
        "resize": RESIZE_METHOD,
        "colour": COLOUR_POLICY,
    }
    workers = workers or min(4, os.cpu_count() or 1)
    load = functools.partial(
        _load_sample, size=size, policy=policy, expected_hw=hw, read_mask=read_mask
    )
    with (
        DatasetWriter(
            out,
            name=name,
            classes=classes,
            image_shape=(*hw, 3),
            split_sizes={k: len(v) for k, v in splits.items()},
            has_masks=has_masks,
            has_boxes=has_boxes,
            source=source,
            overwrite=overwrite,
            storage_options=storage_options,
        ) as writer,
        ThreadPoolExecutor(workers) as pool,
        progress(f"import {name}", len(every)) as advance,
    ):
        for split, rows in splits.items():
            for block in _blocks(len(rows), BLOCK_ROWS):
                chunk = rows[block]
                # Threads: PIL releases the GIL while decoding; map keeps the order.
                loaded = list(pool.map(load, chunk))
                writer.write(
                    split,
                    np.stack([img for img, _, _ in loaded]),
                    np.array([s.label for s in chunk], dtype=np.int64),
                    np.stack([m for _, m, _ in loaded]) if has_masks else None,
                    np.array([b for _, _, b in loaded], dtype=np.int32) if has_boxes else None,
                )
                advance(len(chunk))
    return str(out)


def write_arrays(
    out: str,
    *,
    name: str,
    classes: Sequence[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    size: int | None,
    policy: str | ResizePolicy,
    source: Mapping[str, Any],
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write in-memory splits {split: (images uint8 (N, H, W, 3), labels (N,))}, resized to
    size x size by `policy` when `size` is given. Returns `out`."""
    policy = resize_policy(policy)
    if size is not None and size < 1:
        raise SatpipeError(f"--size must be positive, got {size}")
    h, w = next(iter(splits.values()))[0].shape[1:3]
    fit = plan_fit(h, w, size, policy)
    source = {**dict(source), "size": size, "resize_policy": policy.value, "resize": RESIZE_METHOD}
    total = sum(len(lab) for _, lab in splits.values())
    with (
        DatasetWriter(
            out,
            name=name,
            classes=classes,
            image_shape=(fit.out_h, fit.out_w, 3),
            split_sizes={k: len(lab) for k, (_, lab) in splits.items()},
            source=source,
            overwrite=overwrite,
            storage_options=storage_options,
        ) as writer,
        progress(f"import {name}", total) as advance,
    ):
        for split, (images, labels) in splits.items():
            for block in _blocks(len(labels), BLOCK_ROWS * 4):
                chunk = images[block]
                if not fit.identity:
                    chunk = np.stack([fit_image(fit, im) for im in chunk])
                writer.write(split, chunk, labels[block])
                advance(len(labels[block]))
    return str(out)
