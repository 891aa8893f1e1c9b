"""(image, saliency, label) batches on the training device: resident or streaming.

    loader = make_loader("D.zarr", "train", "S.zarr", batch_size=128, augment=True, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, s, y in loader:   # x (B,C,H,W) f32 in [0,1], s (B,Cs,H,W) f32 or None, y (B,) i64
            ...

Resident mode (the split fits `memory_budget_bytes`): images (uint8) and maps (float16) are
loaded once onto the device; each epoch is a permutation and index_select on the device, as in
airbench. Streaming mode: whole shards are read by threads (`satpipe.data.streaming`), shard
order is shuffled per epoch, rows are shuffled within a window of a few shards.

Checked in flight (`verify=True`, the default): each shard of images and labels is checked
against the sha256 recorded when the store was written, as it is first read: in the resident
load, or in the first streaming epoch (shuffled order does not matter, each shard is checked
on its own). `finish_check()` checks whatever this loader has not read yet (normally nothing
after one epoch) and ends the checking; the trainer calls it before its first checkpoint.
Under `world_size > 1` a streaming rank checks the shards whose first row falls in its share
of the first epoch (plus, on the last rank, shards that drop_last leaves to no one).

Order is a function of (seed, epoch, rank) only. Under `world_size > 1` every rank gets the same
number of rows per epoch, disjoint from the other ranks' rows:
- resident: the epoch permutation is strided, `perm[rank::world_size]`;
- streaming: the epoch's shard sequence is cut into `world_size` equal contiguous blocks of rows
  (whole shards except at block edges), so ranks read disjoint shards and stay balanced even when
  shards differ in size.
`exclude_rows` (sorted row indices of the split) are never yielded: the rest of the split is
what an epoch covers, in both modes (the trainer holds the overfitting guard's rows out so).
When the split does not divide evenly, `drop_last=False` pads every rank to ceil(N / world_size)
rows by wrapping around to the start of the epoch sequence (at most world_size - 1 rows are
seen twice, as torch's DistributedSampler does); `drop_last=True` drops the tail to
floor(N / world_size) rows per rank and drops each rank's last partial batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice
from satpipe.core.progress import progress
from satpipe.core.seeding import derive_seed, generator
from satpipe.data.augment import crop_flip, draw_crop_flip
from satpipe.data.dataset_store import DatasetView, open_dataset
from satpipe.data.saliency_store import SaliencyView, check_pairing, open_saliency
from satpipe.data.storage import shard_rows, shard_slices
from satpipe.data.streaming import (
    ShardReader,
    StreamSettings,
    StreamStats,
    plan_segments,
    stream_batches,
)


class LoaderMode(str, Enum):
    """Where a split lives while training: on the device, streamed, or whichever fits."""

    auto = "auto"
    resident = "resident"
    streaming = "streaming"


CPU_BUDGET_BYTES = 2 << 30  # resident on CPU up to 2 GiB (and at most 25% of free RAM)
CUDA_BUDGET_FRACTION = 0.25  # resident on CUDA up to 25% of free device memory

# Purposes of the seeded streams drawn per epoch (kept apart so one never shifts another).
_ORDER, _AUGMENT, _WINDOW = 0, 1, 2


def _generator(seed: int, epoch: int, purpose: int, rank: int = 0) -> torch.Generator:
    return generator(seed, epoch, purpose, rank)


def default_budget(device: torch.device) -> int:
    """Bytes the resident copy may take: 25% of free CUDA memory, or min(2 GiB, 25% free RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    import psutil

    return int(min(CPU_BUDGET_BYTES, psutil.virtual_memory().available // 4))


def rows_per_rank(n: int, world_size: int, drop_last: bool) -> int:
    """Rows each rank sees per epoch: ceil(N/W) (padded) or floor(N/W) (tail dropped)."""
    return n // world_size if drop_last else -(-n // world_size)


@dataclass(frozen=True)
class LoaderOptions:
    """How a PairLoader batches, orders and reads a split; checked when made (one-line errors).

    Batches: x float32 (B, C, H, W) in [0, 1], s float32 (B, Cs, H, W) as stored (Cs = 1 or C)
    or None, y int64 (B,), all on `device`.

    batch_size: rows per batch B, at least 1. shuffle: a new order every epoch, drawn from
    (seed, epoch) (False: the split's order). augment: RandomCrop(pad 4) + horizontal flip,
    applied jointly to image and map, drawn from (seed, epoch, rank). seed: any int.
    device: where batches and a resident copy live ("cpu", "cuda:1" or a torch.device; kept
    as a torch.device). mode: "resident", "streaming", or "auto": resident when the split fits
    `memory_budget_bytes` (None: 25% of free CUDA memory, or min(2 GiB, 25% of free RAM)).
    drop_last: floor(N / world_size) rows per rank and no partial last batch (False: pad to
    ceil(N / world_size) by wrapping around). rank, world_size: this process's share under
    data parallelism, 0 <= rank < world_size (see the module docstring).
    Streaming keeps at most `prefetch_shards + buffer_shards` shards in memory (rows are
    shuffled within `buffer_shards` of them), read by `io_threads` threads. `verify` checks the
    data in flight against the digests recorded at write time (see the module docstring); off
    only to measure what it costs. `channels_last` (None: on CUDA only): batches in the
    channels_last layout (the same values, strides (HWC, 1, WC, C)), the layout satpipe's
    models run in on a GPU.
    """

    batch_size: int = 128
    shuffle: bool = True
    augment: bool = False
    seed: int = 0
    device: str | torch.device = "cpu"
    mode: str = "auto"
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    memory_budget_bytes: int | None = None
    buffer_shards: int = 4
    prefetch_shards: int = 4
    io_threads: int = 4
    verify: bool = True
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        # frozen: the normalised values are set once, here
        object.__setattr__(self, "mode", check_choice(self.mode, LoaderMode, "loader mode"))
        if self.batch_size < 1:
            raise SatpipeError(f"batch size must be at least 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise SatpipeError(f"rank {self.rank} is not in [0, world size {self.world_size})")
        object.__setattr__(self, "device", torch.device(self.device))

    def with_keywords(self, **given: Any) -> LoaderOptions:
        """These options with each keyword that is not None filled in; a keyword for a field
        these options set to other than its default is a one-line SatpipeError."""
        given = {name: value for name, value in given.items() if value is not None}
        default = LoaderOptions()
        both = [name for name in given if getattr(self, name) != getattr(default, name)]
        if both:
            raise SatpipeError(
                f"make_loader: {', '.join(both)} given both in options and as a keyword; "
                "set each in one place"
            )
        return replace(self, **given) if given else self


def choose_mode(
    dataset: DatasetView, split: str, saliency: SaliencyView | None, options: LoaderOptions
) -> str:
    """The mode `mode="auto"` picks: resident when the split fits the memory budget."""
    budget = options.memory_budget_bytes
    if budget is None:
        budget = default_budget(options.device)
    return "resident" if resident_bytes(dataset, split, saliency) <= budget else "streaming"


class PairLoader:
    """Iterable of (x, s, y) batches for one split; see the module docstring for modes and order.

    Made by `make_loader` (which checks the stores) or from open views and a LoaderOptions;
    `options.mode="auto"` is settled here. Attributes: options; its batch_size, shuffle,
    augment, seed, device, drop_last, rank, world_size, buffer_shards, prefetch_shards and
    io_threads; channels_last (None settled by the device), mode ("resident"|"streaming"),
    num_classes, image_shape (H, W, C), num_rows (rows of the split), excluded (rows never
    yielded, sorted int64), rows_per_epoch (rows this rank sees per epoch), saliency_channels
    (Cs or None), dataset (DatasetView), saliency_view (SaliencyView or None), stats
    (StreamStats of the last streaming epoch).
    """

    def __init__(
        self,
        dataset: DatasetView,
        split: str,
        saliency_view: SaliencyView | None,
        options: LoaderOptions,
        *,
        exclude_rows: Any = None,
        map_rows: Any = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        o = self.options = options
        self.dataset, self.split, self.saliency_view = dataset, split, saliency_view
        self.batch_size, self.shuffle, self.augment = o.batch_size, o.shuffle, o.augment
        self.seed, self.device, self.drop_last = o.seed, o.device, o.drop_last
        self.rank, self.world_size = o.rank, o.world_size
        self.buffer_shards, self.prefetch_shards = o.buffer_shards, o.prefetch_shards
        self.io_threads = o.io_threads
        # The layout the model takes its batches in (channels_last on CUDA): made here, in the
        # one copy that turns bytes into floats, so the trainer copies nothing more.
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if o.channels_last is None else o.channels_last
        self.storage_options = dict(storage_options or {})
        self.epoch = 0
        self.stats = StreamStats()
        # In-flight check of the data against the digests recorded at write time (None: not
        # verified); `_checked` once every shard this loader answers for has been checked.
        self._check = dataset.shard_check(split) if o.verify else None
        self._checked = not o.verify
        self._owned = o.world_size == 1  # streaming ranks narrow the check to their own shards

        sv = dataset.split(split)
        self._images_array = sv.images
        self.num_rows = len(sv)
        self.num_classes = dataset.num_classes
        self.image_shape = tuple(int(v) for v in sv.images.shape[1:])
        maps = saliency_view.split(split) if saliency_view is not None else None
        self.saliency_channels = int(maps.shape[3]) if maps is not None else None
        self.excluded = _excluded_rows(exclude_rows, self.num_rows, dataset.uri, split)
        self.map_rows = _map_rows(map_rows, self.num_rows, dataset.uri, split)
        # The rows an epoch covers (None: all); a permutation of positions maps through it.
        self._kept = None
        if len(self.excluded):
            kept = np.setdiff1d(np.arange(self.num_rows), self.excluded)
            self._kept = torch.from_numpy(kept)
        used = self.num_rows - len(self.excluded)
        self.rows_per_epoch = rows_per_rank(used, o.world_size, o.drop_last)
        self.mode = o.mode if o.mode != "auto" else choose_mode(dataset, split, saliency_view, o)
        self._resident: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        if self.mode == "resident":
            self._resident = self._load_resident()

    # ---- common --------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (order = f(seed, epoch))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.rows_per_epoch // self.batch_size
        return math.ceil(self.rows_per_epoch / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        batches = self._resident_batches() if self.mode == "resident" else self._stream()
        params = None
        if self.augment:
            # One draw per epoch and rank, sliced per batch: identical on any device.
            gen = _generator(self.seed, self.epoch, _AUGMENT, self.rank)
            params = draw_crop_flip(self.rows_per_epoch, gen).to(self.device)
        offset = 0
        with closing(batches):  # an abandoned epoch stops its reader threads at once
            for images, maps, labels in batches:
                b = len(labels)
                if params is not None:
                    images, maps = crop_flip([images, maps], params[offset : offset + b])
                offset += b
                x, s = to_float_batch(images, maps, self.channels_last)
                yield x, s, labels

    # ---- resident ------------------------------------------------------------------------

    def _reader(self, permuted: bool = True) -> ShardReader:
        """A reader of this split; `permuted`: maps through `map_rows` (streaming reads them
        so, row by row; the resident copy reads them in order and permutes once)."""
        return ShardReader(
            self.dataset.uri,
            self.saliency_view.uri if self.saliency_view is not None else None,
            self.split,
            self.storage_options,
            check=None if self._checked else self._check,
            map_rows=self.map_rows if permuted else None,
        )

    def finish_check(self) -> None:
        """Check against the store's recorded digests every shard this loader answers for that
        it has not read yet (normally none after one epoch), then stop checking. A shard that
        differs is a one-line SatpipeError; the trainer calls this before its first
        checkpoint."""
        if self._checked:
            return
        reader = self._reader()
        for k in sorted(self._check.pending):
            reader.read(*self._check.bounds(k))
        self._checked = True

    def _load_resident(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        reader = self._reader(permuted=False)
        slices = shard_slices(self.num_rows, shard_rows(self._images_array))
        h, w, c = self.image_shape
        images = torch.empty((self.num_rows, h, w, c), dtype=torch.uint8, device=self.device)
        labels = torch.empty((self.num_rows,), dtype=torch.int64, device=self.device)
        maps = None
        if self.saliency_channels is not None:
            shape = (self.num_rows, h, w, self.saliency_channels)
            maps = torch.empty(shape, dtype=torch.float16, device=self.device)
        with progress(f"loading {self.split} onto {self.device}", len(slices)) as advance:
            for sl in slices:
                x, s, y = reader.read(sl.start, sl.stop)
                images[sl] = torch.from_numpy(x)
                labels[sl] = torch.from_numpy(y)
                if maps is not None:
                    maps[sl] = torch.from_numpy(s)
                advance()
        if maps is not None and self.map_rows is not None:
            maps = maps[torch.from_numpy(self.map_rows).to(self.device)]
        return images, maps, labels

    def _resident_order(self) -> torch.Tensor:
        n = self.num_rows if self._kept is None else len(self._kept)
        world = self.world_size
        if self.shuffle:
            perm = torch.randperm(n, generator=_generator(self.seed, self.epoch, _ORDER))
        else:
            perm = torch.arange(n)
        if self._kept is not None:
            perm = self._kept[perm]
        total = self.rows_per_epoch * world
        if total > n:  # pad by wrapping around (repeat if the split is tiny)
            perm = perm.repeat(-(-total // n))
        return perm[:total][self.rank :: world]

    def _resident_batches(self):
        images, maps, labels = self._resident
        order = self._resident_order().to(self.device)
        b = self.batch_size
        for i in range(len(self)):
            idx = order[i * b : (i + 1) * b]
            yield images[idx], None if maps is None else maps[idx], labels[idx]

    # ---- streaming -----------------------------------------------------------------------

    def epoch_segments(self) -> list[tuple[int, int]]:
        """Row ranges this rank reads this epoch, in reading order (before window shuffles)."""
        slices = shard_slices(self.num_rows, shard_rows(self._images_array))
        if self.shuffle:
            gen = _generator(self.seed, self.epoch, _ORDER)
            slices = [slices[int(k)] for k in torch.randperm(len(slices), generator=gen)]
        if len(self.excluded):
            slices = [piece for sl in slices for piece in _without(sl, self.excluded)]
        start = self.rank * self.rows_per_epoch
        return plan_segments(slices, start, start + self.rows_per_epoch)

    def _owned_shards(self, segments: list[tuple[int, int]]) -> set[int]:
        """Shards a streaming rank checks: those whose first row starts one of its segments,
        and on the last rank those that drop_last leaves to no rank."""
        rows = shard_rows(self._images_array)
        owned = {a // rows for a, _ in segments if a % rows == 0}
        covered = self.rows_per_epoch * self.world_size
        if self.rank == self.world_size - 1 and covered < self.num_rows:
            slices = shard_slices(self.num_rows, rows)
            if self.shuffle:
                gen = _generator(self.seed, self.epoch, _ORDER)
                slices = [slices[int(k)] for k in torch.randperm(len(slices), generator=gen)]
            tail = plan_segments(slices, covered, self.num_rows)
            owned |= {a // rows for a, _ in tail if a % rows == 0}
        return owned

    def _stream(self):
        segments = self.epoch_segments()
        if self._check is not None and not self._checked and not self._owned:
            self._check.restrict(self._owned_shards(segments))
            self._owned = True
        reader = self._reader()
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, _WINDOW, self.rank))
        self.stats = StreamStats()
        settings = StreamSettings(
            self.batch_size,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
            buffer_shards=self.buffer_shards,
            prefetch_shards=self.prefetch_shards,
            io_threads=self.io_threads,
            pin_memory=self.device.type == "cuda",
        )
        batches = stream_batches(reader, segments, settings, generator=rng, stats=self.stats)
        with closing(batches):
            for images, maps, labels in batches:
                yield (
                    images.to(self.device, non_blocking=True),
                    None if maps is None else maps.to(self.device, non_blocking=True),
                    labels.to(self.device, non_blocking=True),
                )


def _excluded_rows(rows: Any, n: int, uri: str, split: str) -> np.ndarray:
    """Sorted unique row indices to leave out of every epoch; they must leave a row."""
    out = np.unique(np.asarray([] if rows is None else rows, dtype=np.int64))
    if len(out) and (out[0] < 0 or out[-1] >= n):
        raise SatpipeError(f"{uri}: excluded rows must lie in [0, {n}) of split '{split}'")
    if len(out) >= n:
        raise SatpipeError(f"{uri}: excluding {len(out)} rows leaves none of split '{split}'")
    return out


def _map_rows(rows: Any, n: int, uri: str, split: str) -> np.ndarray | None:
    """The map row of every image (a permutation of the split's rows), or None: its own."""
    if rows is None:
        return None
    out = np.asarray(rows, dtype=np.int64)
    if out.shape != (n,) or not np.array_equal(np.sort(out), np.arange(n)):
        raise SatpipeError(f"{uri}: map_rows must be a permutation of the {n} rows of '{split}'")
    return out


def _without(sl: slice, excluded: np.ndarray) -> list[slice]:
    """The runs of rows of `sl` (one shard) that are not in `excluded` (sorted)."""
    lo, hi = np.searchsorted(excluded, [sl.start, sl.stop])
    pieces, start = [], sl.start
    for row in excluded[lo:hi].tolist():
        if row > start:
            pieces.append(slice(start, row))
        start = row + 1
    if start < sl.stop:
        pieces.append(slice(start, sl.stop))
    return pieces


def resident_bytes(dataset: DatasetView, split: str, saliency: SaliencyView | None) -> int:
    """Device bytes of a resident split: uint8 images, float16 maps, int64 labels."""
    images = dataset.split(split).images
    n = int(images.shape[0])
    total = int(np.prod(images.shape)) + 8 * n
    if saliency is not None:
        total += 2 * int(np.prod(saliency.split(split).shape))
    return total


def _check_saliency_done(view: SaliencyView, split: str) -> None:
    if split in view.group and "done" in view.group[split]:
        done = view.done(split)
        if not done.all():
            raise SatpipeError(
                f"{view.uri}: saliency store is incomplete ({int(done.sum())} of {len(done)} "
                f"{split} shards done)"
            )


def unit_range_(x: torch.Tensor) -> torch.Tensor:
    """x / 255 in place, correctly rounded on every device (float x holding byte values).

    The divisor is a 0-dim tensor on x's device: CUDA divides by a Python (CPU) scalar as a
    multiply by its reciprocal, one ulp off the true quotient for 126 of the 256 byte values,
    while the CPU divides; with a device tensor both divide, so CPU and CUDA agree bit for bit."""
    return x.div_(torch.full((), 255.0, dtype=x.dtype, device=x.device))


def to_float_batch(
    images: torch.Tensor, maps: torch.Tensor | None, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NHWC uint8 images -> (B, C, H, W) float32 in [0, 1], maps as stored -> (B, Cs, H, W)
    float32: one float-sized copy each. The permute happens while values are one byte: a view
    that is already channels_last when the NHWC input is contiguous; NCHW-contiguous output
    (channels_last False) makes one uint8 copy first.

    The division is a true division (x / 255 rounded once), computed the same way on every
    device, so CPU and CUDA batches are equal bit for bit."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = unit_range_(images.permute(0, 3, 1, 2).contiguous(memory_format=layout).float())
    s = None
    if maps is not None:
        s = maps.permute(0, 3, 1, 2).contiguous(memory_format=layout).float()
    return x, s


def make_loader(
    dataset: str,
    split: str = "train",
    saliency: str | None = None,
    options: LoaderOptions | None = None,
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    augment: bool | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    mode: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    exclude_rows: Any = None,
    map_rows: Any = None,
) -> PairLoader:
    """Open `dataset` (and `saliency`, checked complete and paired row for row) as a PairLoader.

    `options` (LoaderOptions: batches, order, mode, streaming, ranks) with the everyday
    keywords filled in: `make_loader(d, "train", s, batch_size=256, device="cuda")`, or
    `make_loader(d, "train", s, LoaderOptions(rank=1, world_size=2), device="cuda")`; a field
    set both ways is a one-line error. Batches: x float32 (B, C, H, W) in [0, 1], s float32
    (B, Cs, H, W) or None, y int64 (B,). `exclude_rows`: row indices of the split never
    yielded. `map_rows`: (N,) permutation of the split's rows, image i paired with the map of
    row `map_rows[i]` (the shuffled pairing, satpipe.train.pairing); None: each image its own
    map. `storage_options`: fsspec options of both stores (s3://, gs://).
    """
    everyday = dict(batch_size=batch_size, shuffle=shuffle, augment=augment, seed=seed)
    options = (options or LoaderOptions()).with_keywords(**everyday, device=device, mode=mode)
    view = open_dataset(dataset, storage_options, require_complete=True)
    view.split(split)  # a missing split is a one-line error here, not deep in a thread
    sal = None
    if saliency is not None:
        sal = open_saliency(saliency, storage_options, require_complete=True)
        _check_saliency_done(sal, split)
        check_pairing(view, sal, split)
    if len(view.split(split)) == 0:
        raise SatpipeError(f"{dataset}: split '{split}' has no rows")
    return PairLoader(
        view,
        split,
        sal,
        options,
        exclude_rows=exclude_rows,
        map_rows=map_rows if sal is not None else None,
        storage_options=storage_options,
    )
