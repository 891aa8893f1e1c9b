"""Hugging Face datasets written with `save_to_disk` (a `DatasetDict` or one `Dataset`).

Needs the `datasets` package (`pip install 'satpipe[hf]'`); nothing is downloaded:
`datasets.load_from_disk(DIR)` reads the Arrow files in DIR.

- Splits: `train` is the training split; the test split is `test`, else `validation` (then
  `valid`, `val`); with none of them (or a single `Dataset`) it is a seeded stratified share
  of train (`--test-fraction`, `--seed`). Which split became which is recorded in `source`.
- `--image-column`: default the one column with an `Image` feature (else `image` or `img`);
  its values are decoded PIL images (or uint8 arrays) and go through the same channel rule
  as files (writer.py: the first image's mode decides 1 or 3 channels unless --channels).
- `--label-column`: default the `ClassLabel` column (else `label`, `labels`, `fine_label`);
  a ClassLabel gives the class names, integer labels are named "0".."K-1", string labels
  become classes in sorted order.
- `--mask-column` (optional): an image or array column of per-pixel values, non-zero = object.
Rows are read block by block (`dataset[a:b]`), so only one block is decoded at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.importers import register_importer
from satpipe.data.importers.common import ResizePolicy, check_output, read_text, seeded_split
from satpipe.data.importers.writer import Sample, write_dataset

TEST_NAMES = ("test", "validation", "valid", "val")
IMAGE_NAMES = ("image", "img")
LABEL_NAMES = ("label", "labels", "fine_label")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise SatpipeError(
            "format 'hf' needs the datasets package: pip install 'satpipe[hf]'"
        ) from None
    return datasets


class _Rows(Sequence):
    """Samples of one split, decoded when a block of them is sliced out (dataset[a:b])."""

    def __init__(self, ds, rows, image, label, mask, label_index) -> None:
        self.ds, self.rows = ds, np.asarray(rows, dtype=np.int64)
        self.image, self.label, self.mask = image, label, mask
        self.label_index = label_index  # raw label value -> class index
        files = [Path(f["filename"]).name for f in getattr(ds, "cache_files", [])]
        self.where = ", ".join(files) or "the dataset"  # named in errors about a row

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self[index : index + 1][0]
        rows = self.rows[index]
        if not len(rows):
            return []
        columns = [self.image, self.label] + ([self.mask] if self.mask else [])
        try:
            block = self.ds.select_columns(columns)[rows.tolist()]
        except Exception as exc:  # datasets decodes the images here: PIL's and Arrow's errors
            first = quote(exc)
            raise SatpipeError(
                f"{self.where} rows {int(rows[0])}-{int(rows[-1])}: cannot decode "
                f"({type(exc).__name__}: {first})"
            ) from None
        masks = block[self.mask] if self.mask else [None] * len(rows)
        return [
            Sample(
                image=img,
                label=self.label_index(lab),
                name=f"{self.where} row {int(r)}",
                mask=None if m is None else (np.asarray(m) != 0).astype(np.uint8),
            )  # fmt: skip
            for r, img, lab, m in zip(
                rows, block[self.image], block[self.label], masks, strict=True
            )
        ]


def _column(ds, given: str | None, feature_type, names: Sequence[str], what: str, flag: str):
    columns = list(ds.column_names)
    if given is not None:
        if given not in columns:
            raise SatpipeError(f"no column '{given}' ({flag}); columns: {', '.join(columns)}")
        return given
    typed = [c for c in columns if isinstance(ds.features[c], feature_type)]
    if len(typed) == 1:
        return typed[0]
    for name in names:
        if name in columns:
            return name
    raise SatpipeError(
        f"cannot tell the {what} column; pass {flag} (columns: {', '.join(columns)})"
    )


def _check_files(src: Path) -> None:
    """Refuse a damaged save_to_disk folder naming the file: every JSON file must parse and
    every Arrow file must be a whole, valid IPC stream (datasets' own errors name neither)."""
    import pyarrow as pa

    for path in sorted(src.rglob("*.json")):
        try:
            json.loads(read_text(path))
        except ValueError as exc:
            raise SatpipeError(f"{path}: not valid JSON ({exc})") from None
    for path in sorted(src.rglob("*.arrow")):
        try:
            with pa.memory_map(str(path)) as stream:
                pa.ipc.open_stream(stream).read_all().validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            first = quote(exc)
            raise SatpipeError(f"{path}: not a whole Arrow stream ({first})") from None


def _load(src: Path):
    datasets = _datasets()
    if not src.is_dir():
        raise SatpipeError(f"{src}: not a dataset saved with save_to_disk (not a folder)")
    _check_files(src)
    listing = src / "dataset_dict.json"
    if not listing.exists() and not (src / "state.json").exists():
        raise SatpipeError(
            f"{src}: not a dataset saved with save_to_disk (no dataset_dict.json or state.json)"
        )
    if not listing.exists():
        return _load_split(datasets, src), None, {"train": "(the dataset)", "test": None}
    splits = json.loads(read_text(listing)).get("splits")
    if not isinstance(splits, list) or not all(isinstance(k, str) for k in splits):
        raise SatpipeError(f"{listing}: 'splits' must be a list of split names")
    for name in splits:
        if not (src / name).is_dir():
            raise SatpipeError(f"{listing}: names split '{name}' but {src / name} is not a folder")
    if "train" not in splits:
        raise SatpipeError(f"{listing}: no 'train' split (has {', '.join(splits)})")
    test = next((n for n in TEST_NAMES if n in splits), None)
    parts = {k: _load_split(datasets, src / k) for k in {"train", test} - {None}}
    return parts["train"], parts.get(test), {"train": "train", "test": test}


def _load_split(datasets, folder: Path):
    """One split's Dataset; metadata that datasets cannot use names the files it came from."""
    try:
        return datasets.Dataset.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises KeyError, TypeError, ValueError... for bad state
        first = quote(exc)
        raise SatpipeError(
            f"{folder}: state.json or dataset_info.json is not what save_to_disk writes "
            f"({type(exc).__name__}: {first})"
        ) from None


def _labels(datasets, train, test, column: str):
    """(class names, raw label -> index) from the label column of both splits."""
    feature = train.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), int
    values = list(train[column]) + (list(test[column]) if test is not None else [])
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return names, index.__getitem__
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise SatpipeError(f"label column '{column}' must hold integers, strings or a ClassLabel")
    if values and min(values) < 0:
        raise SatpipeError(f"label column '{column}': label {min(values)} is negative")
    return [str(k) for k in range(max(values) + 1 if values else 1)], int


@register_importer("hf")
def import_hf(
    src: Path,
    out: str,
    *,
    size: int | None = None,
    resize_policy: str = ResizePolicy.stretch.value,
    channels: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    mask_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Hugging Face dataset saved with save_to_disk; image/label columns by flag (satpipe[hf])."""
    check_output(out, overwrite, storage_options)
    src = Path(src)
    datasets = _datasets()
    train, test, names = _load(src)
    image = _column(train, image_column, datasets.Image, IMAGE_NAMES, "image", "--image-column")
    label = _column(
        train, label_column, datasets.ClassLabel, LABEL_NAMES, "label", "--label-column"
    )
    if mask_column is not None:
        _column(train, mask_column, datasets.Image, (), "mask", "--mask-column")
    if test is not None:
        missing = [c for c in (image, label, mask_column) if c and c not in test.column_names]
        if missing:
            raise SatpipeError(f"{src}: split '{names['test']}' has no column {missing[0]}")
    classes, index = _labels(datasets, train, test, label)
    rows = {"train": (train, range(len(train))), "test": (test, range(len(test or [])))}
    split_info: Any = names
    if test is None:
        labels = [index(v) for v in train[label]]
        tr, te = seeded_split(labels, test_fraction, seed)
        rows = {"train": (train, tr), "test": (train, te)}
        split_info = {**names, "test": "seeded stratified", "test_fraction": test_fraction,
                      "seed": seed}  # fmt: skip
    splits = {
        k: _Rows(ds, idx, image, label, mask_column, index)
        for k, (ds, idx) in rows.items()
        if ds is not None
    }
    source = {
        "format": "hf",
        "path": str(src.resolve()),
        "splits": split_info,
        "image_column": image,
        "label_column": label,
        "masks": f"column {mask_column} (non-zero = object)" if mask_column else "none",
    }
    return write_dataset(
        out, splits, name=src.resolve().name, classes=classes, source=source, size=size,
        policy=resize_policy, channels=channels, overwrite=overwrite,
        storage_options=storage_options,
    )  # fmt: skip
