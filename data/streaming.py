"""Streaming reads of (image, saliency, label) rows, shard by shard, in bounded memory.

Pipeline (all threads, no processes, so no store handle ever crosses a fork):

    segment plan  ->  reader pool (`io_threads`, each opens the stores lazily on first use and
                      reads whole shards; zarr decodes with the GIL released)
                  ->  assembler thread (takes results in plan order, so the output never
                      depends on thread timing; shuffles within a window of `buffer_shards`
                      shards; cuts batches; pins them when the consumer is on CUDA)
                  ->  bounded queue of ready batches  ->  consumer (the loader, on its device)

Memory bound: at most `prefetch_shards` shards in flight plus `buffer_shards` in the shuffle
window (plus `queue_batches` ready batches and fewer than one batch carried between windows).
`StreamStats.max_shards_held` records the most ever held, so tests can check the bound.
"""

from __future__ import annotations

import bisect
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.data.integrity import ShardCheck
from satpipe.data.storage import open_group

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]  # images, maps, labels (NHWC)


def check_finite(maps: np.ndarray, uri: str, split: str, start: int) -> None:
    """Refuse NaN/Inf saliency: one line naming the store, the rows read and the first bad row."""
    finite = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
    if not finite.all():
        bad = start + int(np.argmin(finite))
        raise SatpipeError(
            f"{uri}: {split}/saliency rows {start}..{start + len(maps) - 1} contain NaN/Inf "
            f"(first at row {bad})"
        )


class ShardReader:
    """Reads row ranges of one split from a dataset store and an optional saliency store.

    Stores are opened lazily, once per reading thread (zarr groups are not shared between
    threads, and a pickled reader carries only URIs, so it is safe to hand to a spawned worker).
    With a `check` (satpipe.data.integrity.ShardCheck), images and labels of each shard it still
    wants are checked against the digests recorded at write time as they are read.
    """

    def __init__(
        self,
        dataset_uri: str,
        saliency_uri: str | None,
        split: str,
        storage_options: Mapping[str, Any] | None = None,
        check: ShardCheck | None = None,
        map_rows: np.ndarray | None = None,
    ) -> None:
        self.dataset_uri = dataset_uri
        self.map_rows = map_rows
        self.saliency_uri = saliency_uri
        self.split = split
        self.storage_options = dict(storage_options or {})
        self.check = check
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _arrays(self):
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            group = open_group(self.dataset_uri, "r", self.storage_options)
            images, labels = group[f"{self.split}/images"], group[f"{self.split}/labels"]
            maps = None
            if self.saliency_uri is not None:
                sal = open_group(self.saliency_uri, "r", self.storage_options)
                maps = sal[f"{self.split}/saliency"]
            arrays = self._local.arrays = (images, maps, labels)
        return arrays

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Rows [start, stop): images (n,H,W,C) uint8, maps (n,H,W,Cs) float16 or None,
        labels (n,) int64. Saliency rows are checked finite."""
        images, maps, labels = self._arrays()
        rows = read_checked(
            {"images": images, "labels": labels}, start, stop, self.dataset_uri, self.check
        )
        x, y = rows["images"], rows["labels"].astype(np.int64, copy=False)
        s = None
        if maps is not None and self.map_rows is not None:
            s = read_permuted(maps, self.map_rows[start:stop], self.saliency_uri)
            check_finite(s, self.saliency_uri, self.split, start)
        elif maps is not None:
            s = read_rows(maps, start, stop, self.saliency_uri)
            check_finite(s, self.saliency_uri, self.split, start)
        return x, s, y


def read_permuted(array, rows: np.ndarray, uri: str) -> np.ndarray:
    """Rows `rows` (any order) of a store array, in that order: the maps of a shuffled
    pairing. Each chunk they touch is read once per call (scattered rows cost more chunk
    reads than a contiguous range: the price of the content control when streaming)."""
    order = np.argsort(rows, kind="stable")
    try:
        picked = np.asarray(array.get_orthogonal_selection((rows[order],)))
    except (ValueError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SatpipeError(
            f"{uri}: {array.path} rows unreadable ({reason}); run `satpipe store verify` on it"
        ) from exc
    out = np.empty_like(picked)
    out[order] = picked
    return out


def read_rows(array, start: int, stop: int, uri: str) -> np.ndarray:
    """Rows [start, stop) of a store array; a chunk that fails its checksum or cannot be
    decoded is a one-line SatpipeError naming the store, the array and the rows."""
    try:
        return np.asarray(array[start:stop])
    except SatpipeError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SatpipeError(
            f"{uri}: {array.path} rows {start}:{stop} unreadable ({reason}); "
            "run `satpipe store verify` on it"
        ) from exc


def read_checked(
    arrays: Mapping[str, Any], start: int, stop: int, uri: str, check: ShardCheck | None
) -> dict[str, np.ndarray]:
    """Rows [start, stop) of each named array of one split (`read_rows` each).

    Shards that `check` still wants are read whole, checked against their recorded digests
    (a SatpipeError naming the store, array and rows when they differ) and retired; rows of
    other shards are read as asked. Reads inside one shard, the usual case, cost nothing
    extra; a range that cuts a wanted shard (a rank's share ending mid-shard) reads the rest
    of that shard once."""
    if check is None or check.finished:
        return {name: read_rows(arr, start, stop, uri) for name, arr in arrays.items()}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
    for k in check.shards(start, stop):
        a, b = check.bounds(k)
        lo, hi = max(start, a), min(stop, b)
        if check.wants(k):
            for name, arr in arrays.items():
                whole = read_rows(arr, a, b, uri)
                check.verify(name, k, whole)
                parts[name].append(whole[lo - a : hi - a])
            check.done(k)
        else:
            for name, arr in arrays.items():
                parts[name].append(read_rows(arr, lo, hi, uri))
    return {name: p[0] if len(p) == 1 else np.concatenate(p) for name, p in parts.items()}


def plan_segments(slices: Sequence[slice], start: int, stop: int) -> list[tuple[int, int]]:
    """Row ranges covering positions [start, stop) of the sequence `slices` laid end to end.

    Positions past the end wrap around to the beginning (that is how a rank pads its share
    when the split does not divide evenly). Every range lies inside one slice (one shard).
    """
    lengths = [s.stop - s.start for s in slices]
    total = sum(lengths)
    if total == 0 or stop <= start:
        return []
    cum = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    out: list[tuple[int, int]] = []
    pos = start
    while pos < stop:
        q = pos % total
        k = bisect.bisect_right(cum, q) - 1
        off = q - cum[k]
        take = min(lengths[k] - off, stop - pos)
        a = slices[k].start + off
        out.append((a, a + take))
        pos += take
    return out


@dataclass
class StreamStats:
    """Counters of one stream: shards (segments) currently held and the most ever held."""

    held: int = 0
    max_shards_held: int = 0
    segments_read: int = 0

    def acquire(self, n: int = 1) -> None:
        self.held += n
        self.max_shards_held = max(self.max_shards_held, self.held)

    def release(self, n: int = 1) -> None:
        self.held -= n


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


@dataclass(frozen=True)
class StreamSettings:
    """How `stream_batches` cuts and bounds a stream.

    batch_size: rows per batch (>= 1). drop_last: drop the very last partial batch. shuffle:
    permute the rows of each window (needs a generator). buffer_shards: segments per shuffle
    window; prefetch_shards: segments read ahead; io_threads: reader threads; queue_batches:
    ready batches held (each at least 1: memory is bounded by their sum, see the module
    docstring). pin_memory: pin batches for a CUDA consumer.
    """

    batch_size: int
    drop_last: bool = False
    shuffle: bool = True
    buffer_shards: int = 4
    prefetch_shards: int = 4
    io_threads: int = 4
    queue_batches: int = 4
    pin_memory: bool = False


class _Assembler:
    """The assembler thread's work: read segments through a pool in plan order, shuffle each
    window of `buffer_shards` segments, cut batches, hand them to `out` (see stream_batches)."""

    def __init__(self, reader, segments, settings: StreamSettings, generator, stats, out, stop):
        self.reader, self.plan = reader, iter(segments)
        self.batch_size, self.drop_last = settings.batch_size, settings.drop_last
        self.shuffle, self.pin_memory = settings.shuffle, settings.pin_memory
        self.generator, self.stats = generator, stats
        self.buffer_shards = max(1, settings.buffer_shards)
        self.prefetch_shards = max(1, settings.prefetch_shards)
        self.io_threads, self.out, self.stop = max(1, settings.io_threads), out, stop
        self.pending: deque = deque()

    def put(self, item) -> bool:
        """Blocking put that gives up when the consumer went away."""
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def emit(self, arrays, n_batches: int, order: np.ndarray | None) -> bool:
        b = self.batch_size
        for i in range(n_batches):
            rows = order[i * b : (i + 1) * b] if order is not None else slice(i * b, (i + 1) * b)
            batch = tuple(None if a is None else torch.from_numpy(a[rows]) for a in arrays)
            if self.pin_memory:
                batch = tuple(None if t is None else t.pin_memory() for t in batch)
            if not self.put(batch):
                return False
        return True

    def fill(self, pool) -> None:
        while len(self.pending) < self.prefetch_shards and not self.stop.is_set():
            seg = next(self.plan, None)
            if seg is None:
                return
            self.stats.acquire()
            self.pending.append(pool.submit(self.reader.read, *seg))

    def window(self, pool, carry: list | None) -> list:
        """The next window's arrays (images, maps, labels), after the rows `carry`ed over."""
        parts = [carry] if carry is not None else []
        while self.pending and len(parts) < self.buffer_shards + (carry is not None):
            parts.append(self.pending.popleft().result())
            self.stats.segments_read += 1
            self.fill(pool)
        return [
            None if parts[0][j] is None else np.concatenate([p[j] for p in parts]) for j in range(3)
        ]

    def run(self) -> None:
        try:
            with ThreadPoolExecutor(self.io_threads, thread_name_prefix="satpipe-io") as pool:
                self.fill(pool)
                carry: list | None = None  # fewer than batch_size rows left from a window
                while self.pending and not self.stop.is_set():
                    arrays = self.window(pool, carry)
                    n = len(arrays[2])
                    order = self.generator.permutation(n) if self.shuffle else None
                    full = n // self.batch_size
                    if not self.emit(arrays, full, order):
                        return
                    carry = None
                    if n > full * self.batch_size:
                        rest = (order[full * self.batch_size :] if order is not None
                                else slice(full * self.batch_size, n))  # fmt: skip
                        carry = [None if a is None else a[rest] for a in arrays]
                    del arrays
                    self.stats.release(self.stats.held - len(self.pending))
                    last = not self.pending
                    tail = last and carry is not None and not self.drop_last
                    if tail and not self.emit(carry, 1, None):
                        return
                self.put(_DONE)
        except BaseException as exc:  # hand every failure to the consumer thread
            self.put(_Failure(exc))


def stream_batches(
    reader: ShardReader,
    segments: Sequence[tuple[int, int]],
    settings: StreamSettings,
    *,
    generator: np.random.Generator | None = None,
    stats: StreamStats | None = None,
) -> Iterator[Batch]:
    """Yield CPU batches (images uint8 (B,H,W,C), maps float16 (B,H,W,Cs) or None, labels int64
    (B,)) from `segments` in plan order, shuffled within windows of `settings.buffer_shards`
    segments; `stats` (a fresh StreamStats if None) counts the shards held.

    The order depends only on `segments` and `generator`, never on thread timing. Rows that do
    not fill a batch at the end of a window are carried into the next window; the very last
    partial batch is dropped when `drop_last`.
    """
    if settings.shuffle and generator is None:
        raise ValueError("stream_batches: shuffle needs a generator")
    out: queue.Queue = queue.Queue(maxsize=max(1, settings.queue_batches))
    stop = threading.Event()
    stats = stats if stats is not None else StreamStats()
    assembler = _Assembler(reader, segments, settings, generator, stats, out, stop)
    thread = threading.Thread(target=assembler.run, name="satpipe-assembler", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
