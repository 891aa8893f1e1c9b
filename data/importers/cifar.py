"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

CIFAR-10 (`cifar-10-batches-py/`): `data_batch_1` .. `data_batch_5` and `test_batch`, each a
pickled dict with `data` uint8 (N, 3072) (1024 red, 1024 green, 1024 blue values per row,
row-major 32x32) and `labels`; class names from `batches.meta` `label_names`.
CIFAR-100 (`cifar-100-python/`): `train` and `test` with `data` and `fine_labels`; names from
`meta` `fine_label_names`. Keys may be bytes (`b"data"`, as the archives have them) or str.

The pickles are read with an unpickler that only builds numpy arrays and plain containers, so
a tampered file cannot run code. Pixels are stored exactly as in the batches.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import ResizePolicy, check_output
from satpipe.data.importers.writer import write_dataset

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch file as a dict with str keys; any failure names the file."""
    if not path.is_file():
        raise SatpipeError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            # latin1 reads the numpy arrays in the Python 2 pickles of the official archives.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001
        # A damaged pickle can fail in any of the unpickler's steps (a truncated stream, a
        # bad opcode, a length field asking for terabytes: MemoryError, an inconsistent
        # stack: IndexError, ...); every one of them means "not a CIFAR pickle".
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SatpipeError(f"{path}: not a CIFAR pickle ({reason[:200]})") from None
    if not isinstance(obj, Mapping):
        raise SatpipeError(f"{path}: not a CIFAR pickle (holds {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(value: Any, path: Path, key: str) -> list[str]:
    """Class names from a meta file's list of bytes or str."""
    try:
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    except (TypeError, UnicodeDecodeError) as exc:
        raise SatpipeError(f"{path}: '{key}' is not a list of names ({exc})") from None
    if not names:
        raise SatpipeError(f"{path}: '{key}' lists no classes")
    return names


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of one batch file."""
    batch = load_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise SatpipeError(f"{path}: no '{key}' entry (has {sorted(batch)})")
    data, labels = _array(batch["data"], path, "data"), _array(batch[label_key], path, label_key)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise SatpipeError(
            f"{path}: data has shape {data.shape}, expected (N, 3072) = 3 x 32 x 32 per row"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
            raise SatpipeError(f"{path}: data must be uint8 pixel values, got {data.dtype}")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or len(labels) != len(data):
        raise SatpipeError(
            f"{path}: {len(labels)} {label_key} for {len(data)} images (shape {labels.shape})"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise SatpipeError(f"{path}: {label_key} must be integers, got {labels.dtype}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _array(value: Any, path: Path, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists and other non-arrays
        reason = " ".join(str(exc).split())
        raise SatpipeError(f"{path}: '{key}' is not an array ({reason})") from None


def _root(src: Path, folder: str, marker: str) -> Path:
    """Accept the batches folder itself or its parent."""
    if (src / folder).is_dir() and not (src / marker).exists():
        return src / folder
    return src


def _check_labels(labels: np.ndarray, path: Path, n_classes: int) -> None:
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise SatpipeError(
            f"{path}: label {int(labels[i])} at row {i} out of range [0, {n_classes})"
        )


def _import(
    fmt: str,
    splits_files: dict[str, list[Path]],
    label_key: str,
    classes: list[str],
    out: str,
    src: Path,
    size: int | None,
    resize_policy: str,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
) -> str:
    splits = {}
    for split, files in splits_files.items():
        parts = []
        for path in files:
            images, labels = read_batch(path, label_key)
            _check_labels(labels, path, len(classes))
            parts.append((images, labels))
        splits[split] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    source = {
        "format": fmt,
        "path": str(src.resolve()),
        "files": {k: [p.name for p in v] for k, v in splits_files.items()},
        "split": "official",
    }
    return write_dataset(
        out,
        splits,
        name=fmt,
        classes=classes,
        size=size,
        policy=resize_policy,
        source=source,
        overwrite=overwrite,
        storage_options=storage_options,
    )


@register_importer("cifar10")
def import_cifar10(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta); native 32x32."""
    check_output(out, overwrite, storage_options)
    root = _root(Path(src), "cifar-10-batches-py", "test_batch")
    numbered = []
    for p in root.glob("data_batch_*"):
        m = re.fullmatch(r"data_batch_(\d+)", p.name)
        if m:
            numbered.append((int(m.group(1)), p))
    numbered.sort()
    if not numbered:
        raise SatpipeError(f"{root}: no data_batch_* files (is this cifar-10-batches-py?)")
    for want, (got, _) in enumerate(numbered, start=1):
        if got != want:
            raise SatpipeError(f"{root / f'data_batch_{want}'}: missing (batches must be 1..k)")
    classes = list(CIFAR10_CLASSES)
    if (root / "batches.meta").is_file():
        meta = load_pickle(root / "batches.meta")
        if "label_names" not in meta:
            raise SatpipeError(f"{root / 'batches.meta'}: no 'label_names' entry")
        classes = _names(meta["label_names"], root / "batches.meta", "label_names")
    files = {"train": [p for _, p in numbered], "test": [root / "test_batch"]}
    return _import(
        "cifar10",
        files,
        "labels",
        classes,
        out,
        root,
        size,
        resize_policy,
        overwrite,
        storage_options,
    )


@register_importer("cifar100")
def import_cifar100(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """CIFAR-100 python files (train, test, meta), fine labels; native 32x32."""
    check_output(out, overwrite, storage_options)
    root = _root(Path(src), "cifar-100-python", "train")
    meta_path = root / "meta"
    if meta_path.is_file():
        meta = load_pickle(meta_path)
        if "fine_label_names" not in meta:
            raise SatpipeError(f"{meta_path}: no 'fine_label_names' entry")
        classes = _names(meta["fine_label_names"], meta_path, "fine_label_names")
    else:
        classes = [f"class_{i:02d}" for i in range(100)]
    files = {"train": [root / "train"], "test": [root / "test"]}
    return _import(
        "cifar100",
        files,
        "fine_labels",
        classes,
        out,
        root,
        size,
        resize_policy,
        overwrite,
        storage_options,
    )
