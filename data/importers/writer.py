"""`write_dataset`: the one writer every importer uses, from arrays or from samples.

    from satpipe.data.importers import Sample, SplitArrays, write_dataset

    write_dataset("stores/mine.zarr", {"train": SplitArrays(x, y), "test": SplitArrays(xt, yt)},
                  name="mine", classes=["cat", "dog"])
    write_dataset("stores/files.zarr", {"train": [Sample(Path("a.png"), 0), ...]}, ...)

A split is either in-memory arrays (`SplitArrays`, or a tuple (images, labels[, masks[,
boxes]])): uint8 images (N, H, W, C) with C 1 or 3, labels (N,), optional masks (N, H, W) in
{0, 1} and boxes (N, 4); or a sequence (or any iterable) of `Sample`s, each an image file, a
decoded PIL image or a uint8 array, with its label, optional mask (file or array) and box.
Samples are decoded in a thread pool (PIL releases the GIL) in blocks of BLOCK_ROWS, so only a
block of decoded images is ever in memory; arrays are written in larger blocks.

Channels: `channels=3` converts every image to RGB (grey replicated, alpha dropped), `channels=1`
to 8-bit grey (PIL convert("L"): colour becomes ITU-R 601-2 luma); `channels=None` keeps the
source's: the arrays' C, or for samples the first image's (greyscale modes L, LA, I, I;16, 1
give 1 channel, every other mode 3). A colour image in a dataset that is greyscale by its first
image is refused, naming both files, rather than silently losing its colour.

Resizing (`size`, `policy`) and masks/boxes follow common.py's Fit. The policies, the resize
method and the colour rule are recorded in the store's `source` attribute.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.data.dataset_store import DatasetWriter
from satpipe.data.importers.common import (
    RESIZE_METHOD,
    ResizePolicy,
    fit_box,
    fit_image,
    fit_mask,
    open_image,
    plan_fit,
    resize_policy,
)

BLOCK_ROWS = 256
GREY_MODES = frozenset({"L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "1", "F", "La"})
COLOUR_POLICY = {
    3: "non-RGB images converted with PIL convert('RGB'): grey replicated, alpha dropped",
    1: "images converted with PIL convert('L'): colour to ITU-R 601-2 luma, alpha dropped",
    "auto-grey": "greyscale by the first image: grey modes converted with PIL convert('L'), "
    "colour images refused",
}


@dataclass(frozen=True)
class Sample:
    """One image to import: a file, a PIL image or a uint8 array (H, W[, C]); its label index;
    optional mask (a file read with `read_mask`, or an (H, W) array in {0, 1}) and box
    (x0, y0, x1, y1), end exclusive, in the source image's pixels. `name` labels the sample
    in error messages when the image is not a file."""

    image: Any
    label: int
    mask: Any = None
    box: tuple[int, int, int, int] | None = None
    name: str | None = None

    @property
    def where(self) -> str:
        if isinstance(self.image, (str, Path)):
            return str(self.image)
        return self.name or "sample"


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: images uint8 (N, H, W, C), labels (N,), optional masks uint8
    (N, H, W) in {0, 1} and boxes (N, 4) (x0, y0, x1, y1), end exclusive."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.labels))


SplitSource = SplitArrays | tuple | Sequence[Sample] | Iterable[Sample]


def _as_split(value: SplitSource) -> SplitArrays | Sequence[Sample]:
    if isinstance(value, SplitArrays):
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], np.ndarray):
        return SplitArrays(*value)
    if isinstance(value, Sequence):
        return value
    return list(value)  # an iterator: its length must be known before writing starts


# --------------------------------------------------------------------------------------------
# Decoding one sample


def _pil(sample: Sample) -> Image.Image:
    image = sample.image
    if isinstance(image, (str, Path)):
        return open_image(Path(image))
    if isinstance(image, Image.Image):
        try:
            image.load()
        except (OSError, ValueError) as exc:
            raise SatpipeError(f"{sample.where}: cannot decode image ({exc})") from None
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] > 4):
        raise SatpipeError(
            f"{sample.where}: image array must be uint8 (H, W) or (H, W, 1|3|4), got "
            f"{arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def _pixels(image: Image.Image, channels: int, strict_grey: bool, where: str, first: str):
    """uint8 (H, W, channels) of a PIL image by the channel rule (module docstring)."""
    if channels == 1:
        if strict_grey and image.mode not in GREY_MODES:
            raise SatpipeError(
                f"{where}: colour image ({image.mode}) in a greyscale dataset (the first "
                f"image, {first}, is greyscale); pass --channels 3 to keep colour or "
                "--channels 1 to convert to grey"
            )
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return np.asarray(image if image.mode == "L" else image.convert("L"))[..., None]
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette with a transparent index (PIL warns otherwise)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class _Layout:
    """What every row is made into: channels, size/policy of the output, which extras every
    row carries, and the number of classes labels index."""

    channels: int
    strict_grey: bool
    first: str
    size: int | None
    policy: ResizePolicy
    hw: tuple[int, int]
    has_masks: bool
    has_boxes: bool
    n_classes: int


def _check_sample(sample: Sample, layout: _Layout) -> None:
    """Label in range; mask and box present exactly when the first training sample has one."""
    if not 0 <= sample.label < layout.n_classes:
        raise SatpipeError(
            f"{sample.where}: label {sample.label} out of range [0, {layout.n_classes})"
        )
    for key, wanted in (("mask", layout.has_masks), ("box", layout.has_boxes)):
        if wanted and getattr(sample, key) is None:
            raise SatpipeError(f"{sample.where}: no {key} for this image (other images have "
                               f"{key}{'es' if key == 'box' else 's'})")  # fmt: skip
        if not wanted and getattr(sample, key) is not None:
            raise SatpipeError(f"{sample.where}: has a {key} but the first image has none")


def _load(sample: Sample, layout: _Layout, read_mask: Callable[[Path], np.ndarray] | None):
    """(image (out_h, out_w, channels) uint8, mask or None, box or None) of one sample."""
    _check_sample(sample, layout)
    image = _pixels(_pil(sample), layout.channels, layout.strict_grey, sample.where, layout.first)
    h, w = image.shape[:2]
    if layout.size is None and (h, w) != layout.hw:
        raise SatpipeError(
            f"{sample.where}: image is {w}x{h} but the first image is "
            f"{layout.hw[1]}x{layout.hw[0]}; pass --size to resize them all"
        )
    fit = plan_fit(h, w, layout.size, layout.policy)
    mask = box = None
    if sample.mask is not None:
        if isinstance(sample.mask, (str, Path)):
            if read_mask is None:
                raise ValueError("samples carry mask files but no read_mask was given")
            raw = read_mask(Path(sample.mask))
            label = str(sample.mask)
        else:
            raw, label = np.asarray(sample.mask), f"{sample.where} mask"
        if raw.shape != (h, w):
            raise SatpipeError(
                f"{label}: mask is {raw.shape[1] if raw.ndim > 1 else '?'}x{raw.shape[0]} "
                f"but its image {Path(sample.where).name} is {w}x{h}"
            )
        mask = fit_mask(fit, raw.astype(np.uint8))
    if sample.box is not None:
        x0, y0, x1, y1 = sample.box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise SatpipeError(
                f"{sample.where}: box {list(sample.box)} lies outside the {w}x{h} image"
            )
        box = fit_box(fit, sample.box)
        if box is None:
            raise SatpipeError(
                f"{sample.where}: box {list(sample.box)} falls outside the "
                f"{layout.policy.value} to {layout.size}x{layout.size}; use --resize-policy "
                "stretch or pad"
            )
    return fit_image(fit, image), mask, box


# --------------------------------------------------------------------------------------------
# Arrays


def _check_arrays(split: str, arrays: SplitArrays) -> None:
    images, labels = np.asarray(arrays.images), np.asarray(arrays.labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise SatpipeError(
            f"{split} images must be uint8 (N, H, W, C) with C 1 or 3, got "
            f"{images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise SatpipeError(f"{split}: {len(labels)} labels for {len(images)} images")
    for key, want in (("masks", images.shape[:3]), ("boxes", (len(images), 4))):
        value = getattr(arrays, key)
        if value is not None and tuple(np.shape(value)) != tuple(want):
            raise SatpipeError(f"{split} {key} must have shape {want}, got {np.shape(value)}")


def _array_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, H, W, channels) by the same rule as for samples."""
    if images.shape[3] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=3)
    return np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images])[..., None]


def _fit_arrays(fit, images, masks, boxes):
    if fit.identity:
        return images, masks, boxes
    images = np.stack([fit_image(fit, im) for im in images])
    if masks is not None:
        masks = np.stack([fit_mask(fit, m.astype(np.uint8)) for m in masks])
    if boxes is not None:
        fitted = [fit_box(fit, b) for b in np.asarray(boxes).tolist()]
        if any(b is None for b in fitted):
            raise SatpipeError("a box falls outside the center-crop; use --resize-policy pad")
        boxes = np.asarray(fitted, dtype=np.int32)
    return images, masks, boxes


# --------------------------------------------------------------------------------------------
# The writer


def write_dataset(
    out: str,
    splits: Mapping[str, SplitSource],
    *,
    name: str,
    classes: Sequence[str],
    source: Mapping[str, Any] | None = None,
    size: int | None = None,
    policy: str | ResizePolicy = ResizePolicy.stretch,
    channels: int | None = None,
    read_mask: Callable[[Path], np.ndarray] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    rows_per_shard: int | None = None,
    workers: int | None = None,
) -> str:
    """Write `splits` ({"train": ..., "test": ...}; see the module docstring) into a dataset
    store at `out`, resized to size x size by `policy` when `size` is given, with `channels`
    1, 3 or None (the source's). Splits with no rows are left out; "train" is required.
    Masks are stored when the rows carry masks (all of them must), boxes likewise. Bad input is
    a one-line SatpipeError naming the file or split, and leaves no complete store. Returns
    `out`."""
    policy = resize_policy(policy)
    if size is not None and size < 1:
        raise SatpipeError(f"--size must be positive, got {size}")
    if channels not in (None, 1, 3):
        raise SatpipeError(f"--channels must be 1 or 3, got {channels}")
    parts = _parts(splits, str((source or {}).get("path", out)))
    layout, colour = _plan_layout(parts, size, policy, channels, len(classes))
    for part in parts.values():
        if isinstance(part, (list, tuple)):  # cheap to check all before anything is written
            for sample in part:
                _check_sample(sample, layout)
    recorded = {**dict(source or {}), "size": size, "resize_policy": policy.value,
                "resize": RESIZE_METHOD, "colour": colour, "channels": layout.channels}  # fmt: skip
    total = sum(len(p) for p in parts.values())
    with (
        DatasetWriter(
            out, name=name, classes=classes,
            image_shape=(*(layout.hw if size is None else (size, size)), layout.channels),
            split_sizes={k: len(v) for k, v in parts.items()},
            has_masks=layout.has_masks, has_boxes=layout.has_boxes, source=recorded,
            overwrite=overwrite,
            rows_per_shard=rows_per_shard, storage_options=storage_options,
        ) as writer,
        ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool,
        progress(f"import {name}", total) as advance,
    ):  # fmt: skip
        for split, part in parts.items():
            if isinstance(part, SplitArrays):
                _write_arrays(writer, split, part, layout, advance)
            else:
                _write_samples(writer, pool, split, part, layout, read_mask, advance)
    return str(out)


def _parts(splits: Mapping[str, SplitSource], where: str) -> dict[str, Any]:
    """The splits with rows, as SplitArrays or sample lists; "train" among them, arrays
    checked (`where`: the source named in errors)."""
    parts = {k: _as_split(v) for k, v in splits.items()}
    parts = {k: v for k, v in parts.items() if len(v)}
    if "train" not in parts:
        raise SatpipeError(f"{where}: no training images found")
    for split, part in parts.items():
        if isinstance(part, SplitArrays):
            _check_arrays(split, part)
    return parts


def _write_samples(writer, pool, split: str, part, layout: _Layout, read_mask, advance) -> None:
    """Write a split of samples block by block, each block's files decoded by `pool`."""
    load = functools.partial(_load, layout=layout, read_mask=read_mask)
    for a in range(0, len(part), BLOCK_ROWS):
        chunk = list(part[a : a + BLOCK_ROWS])
        loaded = list(pool.map(load, chunk))  # map keeps the order
        writer.write(
            split,
            np.stack([img for img, _, _ in loaded]),
            np.array([s.label for s in chunk], dtype=np.int64),
            np.stack([m for _, m, _ in loaded]) if layout.has_masks else None,
            np.array([b for _, _, b in loaded], dtype=np.int32) if layout.has_boxes else None,
        )
        advance(len(chunk))


def _plan_layout(parts, size, policy, channels, n_classes) -> tuple[_Layout, str]:
    """The output's channels, (H, W) and extras: from the arrays, or the first training
    sample (every other sample is checked against it as it is loaded)."""
    first = parts["train"]
    if isinstance(first, SplitArrays):
        arrays = list(parts.values())
        if not all(isinstance(p, SplitArrays) for p in arrays):
            raise SatpipeError("give every split as arrays, or every split as samples")
        for key in ("masks", "boxes"):
            if len({getattr(p, key) is None for p in arrays}) > 1:
                raise SatpipeError(f"some splits have {key} and others not")
        src_c = {int(p.images.shape[3]) for p in arrays}
        shapes = {tuple(p.images.shape[1:3]) for p in arrays}
        if len(shapes) > 1 and size is None:
            raise SatpipeError(f"splits have image sizes {sorted(shapes)}; pass --size")
        c = channels or max(src_c)
        hw = tuple(int(v) for v in first.images.shape[1:3])
        colour = "arrays as given" if src_c == {c} else COLOUR_POLICY[c]
        extras = (first.masks is not None, first.boxes is not None)
        return _Layout(c, False, "", size, policy, hw, *extras, n_classes), colour
    sample = first[0]
    image = _pil(sample)
    auto = channels is None
    c = channels or (1 if image.mode in GREY_MODES else 3)
    colour = COLOUR_POLICY["auto-grey"] if auto and c == 1 else COLOUR_POLICY[c]
    hw = (image.height, image.width)
    extras = (sample.mask is not None, sample.box is not None)
    return _Layout(c, auto and c == 1, sample.where, size, policy, hw, *extras, n_classes), colour


def _write_arrays(writer, split: str, part: SplitArrays, layout: _Layout, advance) -> None:
    images = np.asarray(part.images)
    fit = plan_fit(*images.shape[1:3], layout.size, layout.policy)
    labels = np.asarray(part.labels).astype(np.int64)
    for a in range(0, len(labels), BLOCK_ROWS * 4):
        block = slice(a, min(a + BLOCK_ROWS * 4, len(labels)))
        masks = np.asarray(part.masks[block]) if layout.has_masks else None
        boxes = np.asarray(part.boxes[block]) if layout.has_boxes else None
        chunk = _array_channels(images[block], layout.channels)
        chunk, masks, boxes = _fit_arrays(fit, chunk, masks, boxes)
        writer.write(split, chunk, labels[block], masks, boxes)
        advance(block.stop - block.start)
