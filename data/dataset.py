"""`SaliencyDataset`: a map-style `torch.utils.data.Dataset` over a dataset store and, optionally,
the saliency store made for it, for training loops that are not satpipe's own.

    ds = SaliencyDataset("D.zarr", "S.zarr", split="train", transform=v2.RandomCrop(32, 4))
    image, smap, label = ds[i]  # (C,H,W) f32 in [0,1], (Cs,H,W) f32 in [-1,1], int64 scalar
    loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2)

The stores are checked when the dataset is built, exactly as the trainer's loader checks them
(`satpipe.data.loader.make_loader`): both complete, their inventories whole, the saliency store
made for this dataset (fingerprint) with one map per image of the split (rows and size). Rows
are read a whole shard at a time through a per-process cache of shards (`cache_bytes`), and
each shard of images and labels is checked against the sha256 recorded when the store was
written the first time a process reads it; maps are checked finite. Nothing opened here crosses
into a DataLoader worker: each worker (fork or spawn) opens the stores itself on first use.

Transforms: `transform(image, smap)` gets the image as a `tv_tensors.Image` and the map as a
`tv_tensors.Mask`, so any `torchvision.transforms.v2` transform treats them jointly: geometric
ones (crop, flip, affine, resize) move both with the same parameters (the map with nearest
interpolation, so its values stay those of the store, and padding fills it with 0, no
evidence), photometric ones (colour jitter, normalise, blur, erasing) change the image only.
A transform whose output map differs in size from its output image is refused.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.loader import _check_saliency_done
from satpipe.data.saliency_store import check_pairing, open_saliency
from satpipe.data.storage import shard_rows
from satpipe.data.streaming import ShardReader

DEFAULT_CACHE_BYTES = 512 << 20  # per process: a CIFAR-sized split with its maps fits whole


@dataclass
class CacheStats:
    """Counters of one process's shard cache: shards read from the store, and rows served."""

    shards_read: int = 0
    rows_served: int = 0


class SaliencyDataset(torch.utils.data.Dataset):
    """(image, saliency, label) rows of one split; (image, label) when `saliency` is None.

    Args:
        data: dataset store (path or fsspec URL, e.g. `s3://bucket/d.zarr`).
        saliency: saliency store made for `data`, or None for images and labels only.
        split: "train" or "test".
        transform: called as `transform(image, smap)` (or `transform(image)` without maps) on
            tv_tensors (see the module docstring); returns the same structure.
        storage_options: fsspec options for URL stores (key, secret, endpoint_url, ...).
        cache_bytes: bytes of decoded shards each process keeps (least recently used out).
            A shuffled epoch reads each shard once per process when the split fits.
        verify: check each shard against its recorded digest on first read (the default).

    Items: image float32 (C, H, W) in [0, 1]; smap float32 (Cs, H, W) as stored (Cs = 1 or
    C; [-1, 1], or [0, 1] for `minmax` stores); label int64 scalar tensor.
    Attributes: classes, num_classes, image_shape (H, W, C), saliency_channels (None without
    maps), attrs (the dataset store's provenance), saliency_attrs (the saliency store's),
    stats (this process's shard reads and rows served).
    """

    def __init__(
        self,
        data: str,
        saliency: str | None = None,
        split: str = "train",
        transform: Callable[..., Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        verify: bool = True,
    ) -> None:
        options = dict(storage_options or {})
        view = open_dataset(str(data), options, require_complete=True)
        sv = view.split(split)  # a missing split: one line naming the store
        self.saliency_attrs: dict[str, Any] | None = None
        self.saliency_channels: int | None = None
        if saliency is not None:
            sal = open_saliency(str(saliency), options, require_complete=True)
            _check_saliency_done(sal, split)
            check_pairing(view, sal, split)
            self.saliency_attrs = dict(sal.attrs)
            self.saliency_channels = int(sal.split(split).shape[3])
        if len(sv) == 0:
            raise SatpipeError(f"{data}: split '{split}' has no rows")
        self.data, self.split = str(data), split
        self.saliency = None if saliency is None else str(saliency)
        self.transform = transform
        self.storage_options = options
        self.attrs = dict(view.attrs)
        self.classes = view.classes
        self.num_classes = view.num_classes
        self.image_shape = tuple(int(v) for v in sv.images.shape[1:])
        self._len = len(sv)
        self._rows = shard_rows(sv.images)
        self._check = view.shard_check(split) if verify else None
        h, w, c = self.image_shape
        row_bytes = h * w * c + 8 + 2 * h * w * (self.saliency_channels or 0)
        self._cache_shards = max(1, int(cache_bytes) // max(1, row_bytes * self._rows))
        self._reset()

    # ---- per process state (never pickled, rebuilt after a fork) ----------------------------

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._reader: ShardReader | None = None
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_reader", "_cache", "_lock", "stats", "_pid"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if self._pid != os.getpid():  # a forked DataLoader worker: open the stores afresh
            self._reset()
        with self._lock:
            found = self._cache.get(k)
            if found is not None:
                self._cache.move_to_end(k)
                return found
            if self._reader is None:
                self._reader = ShardReader(
                    self.data, self.saliency, self.split, self.storage_options, self._check
                )
            start = k * self._rows
            found = self._reader.read(start, min(start + self._rows, self._len))
            self.stats.shards_read += 1
            self._cache[k] = found
            while len(self._cache) > self._cache_shards:
                self._cache.popitem(last=False)
            return found

    # ---- the Dataset protocol ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int):
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(
                f"{self.data}: row {index} outside split '{self.split}' of {self._len}"
            )
        x, s, y = self._shard(i // self._rows)
        row = i % self._rows
        self.stats.rows_served += 1
        image = torch.from_numpy(np.ascontiguousarray(x[row])).permute(2, 0, 1).float().div_(255)
        label = torch.tensor(int(y[row]), dtype=torch.int64)
        if s is None:
            if self.transform is not None:
                image = _plain(self.transform(_image(image)))
            return image, label
        smap = torch.from_numpy(s[row].astype(np.float32)).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image, smap = _joint(self.transform, image, smap)
        return image, smap, label

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        """The items of `indices`, as `[self[i] for i in indices]`; what a DataLoader asks for
        per batch. Without a transform the rows of each shard are gathered and converted in
        one go (a transform is per item, so then it is item by item)."""
        if self.transform is not None:
            return [self[i] for i in indices]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self._len, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= self._len):
            bad = int(idx[(idx < 0) | (idx >= self._len)][0])
            raise IndexError(f"{self.data}: row {bad} outside split '{self.split}' of {self._len}")
        h, w, c = self.image_shape
        x = np.empty((len(idx), h, w, c), np.uint8)
        y = np.empty(len(idx), np.int64)
        s = None if self.saliency is None else np.empty((len(idx), h, w, self.saliency_channels),
                                                        np.float16)  # fmt: skip
        shards = idx // self._rows
        for k in np.unique(shards).tolist():
            at = np.flatnonzero(shards == k)
            xs, ss, ys = self._shard(k)
            rows = idx[at] - k * self._rows
            x[at], y[at] = xs[rows], ys[rows]
            if s is not None:
                s[at] = ss[rows]
        self.stats.rows_served += len(idx)
        images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).unbind(0)
        labels = torch.from_numpy(y).unbind(0)
        if s is None:
            return list(zip(images, labels, strict=True))
        maps = torch.from_numpy(s).permute(0, 3, 1, 2).float().unbind(0)
        return list(zip(images, maps, labels, strict=True))

    def __repr__(self) -> str:
        maps = f", saliency={self.saliency!r}" if self.saliency else ""
        return f"SaliencyDataset({self.data!r}{maps}, split={self.split!r}, rows={self._len})"


def _image(t: torch.Tensor):
    from torchvision import tv_tensors

    return tv_tensors.Image(t)


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def _name(transform: Any) -> str:
    return type(transform).__name__


def _joint(transform: Callable[..., Any], image: torch.Tensor, smap: torch.Tensor):
    """transform(Image, Mask) -> plain (image, map), refusing outputs of different sizes."""
    from torchvision import tv_tensors

    out = transform(tv_tensors.Image(image), tv_tensors.Mask(smap))
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise SatpipeError(
            f"transform {_name(transform)} must return (image, map) when given (image, map), got "
            f"{type(out).__name__}"
        )
    image, smap = (_plain(t) for t in out)
    if image.shape[-2:] != smap.shape[-2:]:
        raise SatpipeError(
            f"transform {_name(transform)} changed the map's size to {tuple(smap.shape[-2:])} but "
            f"the image's to {tuple(image.shape[-2:])}; geometric transforms must take both"
        )
    return image, smap
