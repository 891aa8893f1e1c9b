"""Dataset stores (DESIGN.md, "Stores"): the read-only views (`open_dataset`), the label range
check, and `DatasetWriter`, which writes a store row by row and marks it complete last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError, note
from satpipe.core.version import __version__
from satpipe.data.fingerprint import Fingerprint
from satpipe.data.integrity import DATASET_FEATURES, ShardCheck, digest_blocks
from satpipe.data.inventory import dataset_inventory, refuse_missing, shard_size
from satpipe.data.outputs import store_lock
from satpipe.data.storage import (
    FORMAT,
    SPLITS,
    create_group,
    create_rows_array,
    now_iso,
    open_group,
    read_attrs,
    shard_rows,
    storage_errors,
    unfinished_dataset,
    write_attrs,
    write_errors,
)


@dataclass(frozen=True)
class SplitView:
    """Read-only arrays of one split: images (N,H,W,C) uint8, labels (N,) int64, optional
    masks (N,H,W) uint8 (1 = object) and boxes (N,4) int32 (x0, y0, x1, y1), end exclusive."""

    name: str
    images: Any
    labels: Any
    masks: Any | None = None
    boxes: Any | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DatasetView:
    """A dataset store opened read-only; `attrs` is the `satpipe` provenance dict."""

    uri: str
    group: Any
    attrs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.attrs["classes"])

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.group]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.split(self.splits[0]).images.shape[1:])

    def split(self, name: str) -> SplitView:
        if name not in self.group:
            raise SatpipeError(f"{self.uri}: dataset has no '{name}' split (has {self.splits})")
        g = self.group[name]
        if "images" not in g or "labels" not in g:
            raise SatpipeError(f"{self.uri}: {name} split lacks its images or labels array")
        return SplitView(
            name=name,
            images=g["images"],
            labels=g["labels"],
            masks=g.get("masks"),
            boxes=g.get("boxes"),
        )

    def shard_check(self, split: str) -> ShardCheck:
        """A ShardCheck of `split` against the digests recorded at write time."""
        shards = self.attrs["shards"][split]
        n = len(self.split(split))
        return ShardCheck(self.uri, split, n, int(shards["rows"]), shards["sha256"])


def open_dataset(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    require_complete: bool = True,
    check_inventory: bool = True,
) -> DatasetView:
    """Open a dataset store read-only (local path or fsspec URL).

    A store marked complete has its inventory checked (one listing per array): one that lacks
    an array or a shard is a SatpipeError naming the array and the rows. `check_inventory=False`
    is for a process that reads what another one opened and checked (the runner's tasks).
    """
    group = open_group(uri, "r", storage_options)
    attrs = read_attrs(group, uri)
    if attrs.get("kind") != "dataset":
        raise SatpipeError(f"{uri}: is a {attrs.get('kind')} store, not a dataset store")
    if require_complete and not attrs.get("complete"):
        raise SatpipeError(f"{uri}: dataset store is incomplete (its writer did not finish)")
    view = DatasetView(uri=str(uri), group=group, attrs=attrs)
    if check_inventory and attrs.get("complete"):
        refuse_missing(uri, dataset_inventory(group, attrs, uri))
        check_labels(view)
    return view


# (uri, fingerprint, classes) of dataset stores whose labels were checked in this process.
_LABELS_CHECKED: set[tuple[str, str, int]] = set()


def check_labels(view: DatasetView) -> None:
    """Refuse labels outside [0, classes) in any split, naming the split, the rows and the
    values (a store edited after it was written: its writer refuses them). One read of every
    labels array (8 bytes a row), once per store and process; a labels chunk that cannot be
    read is left to the in-flight checks, which name it."""
    key = (view.uri, str(view.attrs.get("fingerprint")), view.num_classes)
    if key in _LABELS_CHECKED:
        return
    n = view.num_classes
    for split in view.splits:
        try:
            labels = np.asarray(view.split(split).labels[:])
        except (ValueError, RuntimeError, OSError):
            continue
        bad = np.flatnonzero((labels < 0) | (labels >= n))
        if bad.size:
            rows = ", ".join(str(int(r)) for r in bad[:5]) + (" ..." if bad.size > 5 else "")
            values = sorted({int(v) for v in labels[bad[:100]]})[:5]
            raise SatpipeError(
                f"{view.uri}: {split}/labels: {bad.size} label(s) outside [0, {n}) at rows "
                f"{rows} (values {values}); the store was changed after it was written"
            )
    _LABELS_CHECKED.add(key)


def boxes_valid(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,) bool: box (x0, y0, x1, y1), end exclusive, is non-empty and inside the image."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    return (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height) & (x0 < x1) & (y0 < y1)


class DatasetWriter:
    """Write a dataset store row by row; `finish()` records the fingerprint and marks it complete.

    Rows of each split must be written in order. They are buffered to whole shards so every
    shard is written exactly once, and each shard's sha256 is recorded as it is written (the
    digests readers check in flight). Leaving the `with` block by an exception leaves the store
    marked incomplete. A failed write (disk full, read-only target) is a one-line SatpipeError
    naming the store, the array and the rows. An unfinished dataset store at `uri` (an earlier
    writer crashed or ran out of space) is replaced without `overwrite`.
    """

    def __init__(
        self,
        uri: str,
        *,
        name: str,
        classes: Sequence[str],
        image_shape: tuple[int, int, int],
        split_sizes: Mapping[str, int],
        has_masks: bool = False,
        has_boxes: bool = False,
        source: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        rows_per_shard: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        inputs: Sequence[str | None] = (),
    ) -> None:
        if len(classes) < 1:
            raise SatpipeError(f"{uri}: a dataset needs at least one class")
        unknown = set(split_sizes) - set(SPLITS)
        if unknown:
            raise SatpipeError(f"{uri}: unknown split(s) {sorted(unknown)}; use {SPLITS}")
        self.uri = str(uri)
        self.classes = [str(c) for c in classes]
        self.image_shape = tuple(int(v) for v in image_shape)
        self.split_sizes = {s: int(n) for s, n in split_sizes.items()}
        # One writer per store: held until finish() or the `with` block ends.
        self._lock = store_lock(self.uri, "dataset store").__enter__()
        try:
            if not overwrite and unfinished_dataset(self.uri, storage_options):
                note(
                    f"{self.uri}: replacing the unfinished dataset store an earlier run left there"
                )
                overwrite = True
            self.group = create_group(self.uri, overwrite, storage_options, "dataset", inputs)
            self._start(name, source, has_masks, has_boxes, rows_per_shard)
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.__exit__(None, None, None)

    def _start(self, name, source, has_masks, has_boxes, rows_per_shard) -> None:
        self._attrs = {
            "kind": "dataset",
            "format": FORMAT,
            "features": list(DATASET_FEATURES),
            "name": name,
            "classes": self.classes,
            "fingerprint": None,
            "source": dict(source or {}),
            "created": now_iso(),
            "satpipe_version": __version__,
            "complete": False,
        }
        with write_errors(self.uri, "its attributes (zarr.json)"):
            write_attrs(self.group, self._attrs)
        h, w, c = self.image_shape
        self._arrays: dict[str, dict[str, Any]] = {}
        with write_errors(self.uri, "its array metadata"):
            self._create_arrays(has_masks, has_boxes, rows_per_shard)
        # split -> array -> shard index -> hex sha256 of its rows / bytes of its stored object,
        # filled as shards are written
        self._digests: dict[str, dict[str, dict[int, str]]] = {
            s: {k: {} for k in arrays} for s, arrays in self._arrays.items()
        }
        self._sizes: dict[str, dict[str, dict[int, int | None]]] = {
            s: {k: {} for k in arrays} for s, arrays in self._arrays.items()
        }
        self._buffers: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in self.split_sizes}
        self._written = dict.fromkeys(self.split_sizes, 0)  # rows flushed to the store
        self._buffered = dict.fromkeys(self.split_sizes, 0)
        self._fingerprint = Fingerprint()
        self._finished = False

    def _create_arrays(self, has_masks: bool, has_boxes: bool, rows_per_shard: int | None) -> None:
        h, w, c = self.image_shape
        for split, n in self.split_sizes.items():
            images = create_rows_array(
                self.group, f"{split}/images", n, (h, w, c), "uint8", rows_per_shard
            )
            # Every array of a split shares the images' shard rows so a shard is one write unit.
            rows = shard_rows(images)
            arrays = {
                "images": images,
                "labels": create_rows_array(self.group, f"{split}/labels", n, (), "int64", rows),
            }
            if has_masks:
                arrays["masks"] = create_rows_array(
                    self.group, f"{split}/masks", n, (h, w), "uint8", rows
                )
            if has_boxes:
                arrays["boxes"] = create_rows_array(
                    self.group, f"{split}/boxes", n, (4,), "int32", rows
                )
            self._arrays[split] = arrays

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._finished:
                self.finish()
        finally:
            self._unlock()

    def write(
        self,
        split: str,
        images: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
    ) -> None:
        """Append rows: images (B,H,W,C) uint8, labels (B,), masks (B,H,W) {0,1}, boxes (B,4)."""
        if split not in self._arrays:
            raise SatpipeError(f"{self.uri}: no split '{split}' was declared")
        arrays = self._arrays[split]
        images = np.asarray(images)
        labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
        b = len(labels)
        if images.dtype != np.uint8 or images.shape != (b, *self.image_shape):
            raise SatpipeError(
                f"{self.uri}: {split} images must be uint8 {(b, *self.image_shape)}, "
                f"got {images.dtype} {images.shape}"
            )
        bad = (labels < 0) | (labels >= len(self.classes))
        if bad.any():
            raise SatpipeError(
                f"{self.uri}: {split} label {int(labels[bad][0])} out of range "
                f"[0, {len(self.classes)}) at row {self._buffered[split] + int(np.argmax(bad))}"
            )
        if self._buffered[split] + b > self.split_sizes[split]:
            raise SatpipeError(
                f"{self.uri}: more {split} rows than the declared {self.split_sizes[split]}"
            )
        block = {"images": images, "labels": labels}
        h, w, _ = self.image_shape
        if "masks" in arrays:
            if masks is None:
                raise SatpipeError(f"{self.uri}: {split} rows need masks")
            masks = np.asarray(masks)
            if masks.shape != (b, h, w) or not np.isin(masks, (0, 1)).all():
                raise SatpipeError(
                    f"{self.uri}: {split} masks must be {{0,1}} of shape {(b, h, w)}"
                )
            block["masks"] = masks.astype(np.uint8, copy=False)
        if "boxes" in arrays:
            if boxes is None:
                raise SatpipeError(f"{self.uri}: {split} rows need boxes")
            boxes = np.asarray(boxes).astype(np.int32, copy=False).reshape(b, 4)
            ok = boxes_valid(boxes, w, h)
            if not ok.all():
                i = int(np.argmin(ok))
                raise SatpipeError(
                    f"{self.uri}: {split} box {boxes[i].tolist()} at row "
                    f"{self._buffered[split] + i} lies outside the {w}x{h} image"
                )
            block["boxes"] = boxes
        self._fingerprint.update(split, images, labels)
        for key, value in block.items():
            self._buffers[split].setdefault(key, []).append(value)
        self._buffered[split] += b
        self._flush(split, final=False)

    def _flush(self, split: str, final: bool) -> None:
        arrays = self._arrays[split]
        rows = shard_rows(arrays["images"])
        start, end = self._written[split], self._buffered[split]
        # Write whole shards only (and the tail at the end).
        stop = end if final else start + (end - start) // rows * rows
        if stop <= start:
            return
        merged = {k: np.concatenate(v) for k, v in self._buffers[split].items()}
        for key, value in merged.items():
            rows_out = value[: stop - start]
            with write_errors(self.uri, f"{split}/{key} rows {start}:{stop}"):
                arrays[key][start:stop] = rows_out
            blocks = digest_blocks(rows_out, start, rows)
            self._digests[split][key].update(blocks)
            with storage_errors(self.uri):
                self._sizes[split][key].update((k, shard_size(arrays[key], k)) for k, _ in blocks)
        self._buffers[split] = {k: [v[stop - start :]] for k, v in merged.items()}
        self._written[split] = stop

    def finish(self) -> str:
        """Flush, check every declared row was written, set fingerprint and `complete` last."""
        for split in self._arrays:
            self._flush(split, final=True)
            if self._written[split] != self.split_sizes[split]:
                raise SatpipeError(
                    f"{self.uri}: {split} has {self._written[split]} of "
                    f"{self.split_sizes[split]} rows"
                )
        self._attrs["fingerprint"] = self._fingerprint.hexdigest()
        self._attrs["shards"] = {
            split: {
                "rows": shard_rows(arrays["images"]),
                "sha256": {
                    key: [found[k] for k in sorted(found)]
                    for key, found in self._digests[split].items()
                },
                # Bytes of each shard object as written: a half-copied one is refused at open.
                "bytes": {
                    key: [found[k] for k in sorted(found)]
                    for key, found in self._sizes[split].items()
                    if None not in found.values()
                },
            }
            for split, arrays in self._arrays.items()
        }
        with write_errors(self.uri, "its attributes (zarr.json)"):
            write_attrs(self.group, self._attrs)
            self._attrs["complete"] = True
            write_attrs(self.group, self._attrs)
        self._finished = True
        self._unlock()
        return self._attrs["fingerprint"]


def compute_fingerprint(view: DatasetView, block_rows: int = 4096) -> str:
    """Recompute a dataset's fingerprint from its arrays (what `store verify` checks)."""
    fp = Fingerprint()
    for split in view.splits:
        sv = view.split(split)
        for a in range(0, len(sv), block_rows):
            fp.update(split, sv.images[a : a + block_rows], sv.labels[a : a + block_rows])
    return fp.hexdigest()
