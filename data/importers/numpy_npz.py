"""NumPy `.npz` archives: `np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)`.

Arrays (loaded with `allow_pickle=False`, so the file cannot run code):
- `x_train`, `x_test`: images, uint8 in [0, 255], or float in [0, 1] (stored as
  round(x * 255), so k/255 values come back exactly), or other integers in [0, 255]; shaped
  (N, H, W, C) (NHWC), (N, C, H, W) (NCHW) or (N, H, W) (greyscale), C 1 or 3. The layout is
  detected (`--layout auto`: NHWC when the last axis has 1 or 3 entries, else NCHW when axis 1
  has) or given (`--layout nhwc|nchw`), and stated on stderr and in the store's `source`.
- `y_train`, `y_test`: integer labels (N,) (or (N, 1)), 0-based.
- optional `masks_train`, `masks_test`: (N, H, W) bool or {0, 1} (1 = object);
  `boxes_train`, `boxes_test`: (N, 4) integer (x0, y0, x1, y1), end exclusive;
  `classes`: class names (strings), else the names are "0" .. "K-1" (K = max label + 1).
Without `x_test` the test split is a seeded stratified one (`--test-fraction`, `--seed`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import ResizePolicy, check_output, seeded_split
from satpipe.data.importers.writer import SplitArrays, write_dataset

LAYOUTS = ("auto", "nhwc", "nchw")
KNOWN = {f"{k}_{s}" for k in ("x", "y", "masks", "boxes") for s in ("train", "test")}


def _layout(name: str, shape: tuple[int, ...], layout: str) -> str:
    """ "nhwc", "nchw" or "nhw" for an image array of `shape` (one-line error otherwise)."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise SatpipeError(
            f"{name} has shape {shape}: expected (N, H, W, C), (N, C, H, W) or (N, H, W)"
        )
    if layout == "auto":
        layout = "nhwc" if shape[3] in (1, 3) else "nchw" if shape[1] in (1, 3) else ""
    c = shape[3] if layout == "nhwc" else shape[1] if layout == "nchw" else None
    if c not in (1, 3):
        raise SatpipeError(
            f"{name} has shape {shape}: no axis of 1 or 3 channels where --layout "
            f"{layout or 'auto'} looks (axis 3 for nhwc, axis 1 for nchw)"
        )
    return layout


def _images(name: str, arr: np.ndarray, layout: str) -> tuple[np.ndarray, str]:
    """(uint8 (N, H, W, C), a line saying what was read) from one image array."""
    found = _layout(name, arr.shape, layout)
    if arr.dtype == np.uint8:
        scale = "uint8"
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise SatpipeError(
                f"{name}: float images must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]"
            )
        scale = f"{arr.dtype} in [0, 1] -> uint8 round(x * 255)"
        arr = np.rint(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise SatpipeError(
                f"{name}: integer images must lie in [0, 255], found [{lo}, {hi}]; give uint8 "
                "or float in [0, 1]"
            )
        scale = f"{arr.dtype} in [0, 255] -> uint8"
        arr = arr.astype(np.uint8)
    else:
        raise SatpipeError(f"{name}: images must be uint8 or float, got {arr.dtype}")
    if found == "nhw":
        arr = arr[..., None]
    elif found == "nchw":
        arr = arr.transpose(0, 2, 3, 1)
    detected = " (detected)" if layout == "auto" and found != "nhw" else ""
    shown = {"nhw": "NHW (greyscale)", "nhwc": "NHWC", "nchw": "NCHW"}[found]
    return np.ascontiguousarray(arr), f"{name}: {shape_text(arr)} from {shown}{detected}, {scale}"


def shape_text(arr: np.ndarray) -> str:
    n, h, w, c = arr.shape
    return f"{n} images {h}x{w}x{c}"


def _labels(name: str, arr: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or len(arr) != n:
        raise SatpipeError(f"{name} has shape {arr.shape}: expected ({n},), one label per image")
    if not np.issubdtype(arr.dtype, np.integer):
        raise SatpipeError(f"{name}: labels must be integers, got {arr.dtype}")
    if len(arr) and arr.min() < 0:
        raise SatpipeError(f"{name}: label {int(arr.min())} is negative (labels are 0-based)")
    return arr.astype(np.int64)


def _masks(name: str, arr: np.ndarray, hwc: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 4 and 1 in (arr.shape[1], arr.shape[3]):
        arr = arr.reshape(arr.shape[0], *hwc[:2])
    if arr.shape[1:] != tuple(hwc[:2]):
        raise SatpipeError(f"{name} has shape {arr.shape}: expected (N, {hwc[0]}, {hwc[1]})")
    if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
        raise SatpipeError(
            f"{name}: masks must be bool or 0/1 (1 = object), found values up to {arr.max()}"
        )
    return arr.astype(np.uint8)


def _read(src: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(src, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise SatpipeError(f"{src}: {exc} (object arrays are not read)") from None
    except Exception as exc:  # a damaged archive fails in any of zipfile's, zlib's or numpy's
        # parsers (BadZipFile, EOFError, NotImplementedError for odd flag bits, zlib.error...)
        raise SatpipeError(f"{src}: not a readable .npz archive ({exc})") from None


def _splits(arrays: dict[str, np.ndarray], layout: str) -> tuple[dict[str, SplitArrays], list[str]]:
    """(the checked SplitArrays of each split the archive has, a note per split on how its
    images were read)."""
    splits, notes = {}, []
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            continue
        images, note = _images(f"x_{split}", arrays[f"x_{split}"], layout)
        notes.append(note)
        masks = arrays.get(f"masks_{split}")
        boxes = arrays.get(f"boxes_{split}")
        splits[split] = SplitArrays(
            images,
            _labels(f"y_{split}", arrays[f"y_{split}"], len(images)),
            None if masks is None else _masks(f"masks_{split}", masks, images.shape[1:]),
            None if boxes is None else np.asarray(boxes).astype(np.int64),
        )
    return splits, notes


@register_importer("numpy")
def import_numpy(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    layout: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """NumPy .npz with x_train, y_train[, masks_train, boxes_train], x_test, ... (uint8 or
    float in [0, 1], NHWC, NCHW or NHW)."""
    check_output(out, overwrite, storage_options)
    if layout not in LAYOUTS:
        raise SatpipeError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    src = Path(src)
    arrays = _read(src)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise SatpipeError(f"{src}: no '{key}' array (has {', '.join(sorted(arrays))})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise SatpipeError(f"{src}: give both x_test and y_test, or neither")
    splits, notes = _splits(arrays, layout)
    split_info: Any = "x_test/y_test"
    if "test" not in splits:
        train = splits["train"]
        tr, te = seeded_split(train.labels, test_fraction, seed)
        splits = {k: _rows(train, idx) for k, idx in (("train", tr), ("test", te))}
        split_info = {"kind": "seeded stratified", "test_fraction": test_fraction, "seed": seed}
    n_classes = int(max(int(p.labels.max()) for p in splits.values() if len(p)) + 1)
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    if classes is not None and len(classes) < n_classes:
        raise SatpipeError(f"{src}: {len(classes)} class names for labels up to {n_classes - 1}")
    ignored = sorted(set(arrays) - KNOWN - {"classes"})
    for note in notes:
        print(f"{src.name}: {note}", file=sys.stderr)
    source = {
        "format": "numpy",
        "path": str(src.resolve()),
        "arrays": notes,
        "split": split_info,
        "ignored_arrays": ignored,
    }
    return write_dataset(
        out, splits, name=src.stem, classes=classes or [str(k) for k in range(n_classes)],
        source=source, size=size, policy=resize_policy, overwrite=overwrite,
        storage_options=storage_options,
    )  # fmt: skip


def _rows(part: SplitArrays, idx: list[int]) -> SplitArrays:
    take = np.asarray(idx, dtype=np.int64)
    return SplitArrays(
        part.images[take],
        part.labels[take],
        None if part.masks is None else part.masks[take],
        None if part.boxes is None else part.boxes[take],
    )
