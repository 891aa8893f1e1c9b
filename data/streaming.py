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

from satpipe.data.store import open_group
from satpipe.errors import SatpipeError

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
    """

    def __init__(
        self,
        dataset_uri: str,
        saliency_uri: str | None,
        split: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.dataset_uri = dataset_uri
        self.saliency_uri = saliency_uri
        self.split = split
        self.storage_options = dict(storage_options or {})
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
        x = read_rows(images, start, stop, self.dataset_uri)
        y = read_rows(labels, start, stop, self.dataset_uri).astype(np.int64, copy=False)
        s = None
        if maps is not None:
            s = read_rows(maps, start, stop, self.saliency_uri)
            check_finite(s, self.saliency_uri, self.split, start)
        return x, s, y


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


def stream_batches(
    reader: ShardReader,
    segments: Sequence[tuple[int, int]],
    batch_size: int,
    *,
    drop_last: bool = False,
    shuffle: bool = True,
    generator: np.random.Generator | None = None,
    buffer_shards: int = 4,
    prefetch_shards: int = 4,
    io_threads: int = 4,
    queue_batches: int = 4,
    pin_memory: bool = False,
    stats: StreamStats | None = None,
) -> Iterator[Batch]:
    """Yield CPU batches (images uint8 (B,H,W,C), maps float16 (B,H,W,Cs) or None, labels int64
    (B,)) from `segments` in plan order, shuffled within windows of `buffer_shards` segments.

    The order depends only on `segments` and `generator`, never on thread timing. Rows that do
    not fill a batch at the end of a window are carried into the next window; the very last
    partial batch is dropped when `drop_last`.
    """
    if shuffle and generator is None:
        raise ValueError("stream_batches: shuffle needs a generator")
    stats = stats if stats is not None else StreamStats()
    out: queue.Queue = queue.Queue(maxsize=max(1, queue_batches))
    stop = threading.Event()

    def put(item) -> bool:
        # Blocking put that gives up when the consumer went away.
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def emit(arrays, n_batches: int, order: np.ndarray | None) -> bool:
        for i in range(n_batches):
            idx = slice(i * batch_size, (i + 1) * batch_size)
            rows = order[idx] if order is not None else idx
            batch = tuple(None if a is None else torch.from_numpy(a[rows]) for a in arrays)
            if pin_memory:
                batch = tuple(None if t is None else t.pin_memory() for t in batch)
            if not put(batch):
                return False
        return True

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="satpipe-io") as pool:
                plan = iter(segments)
                pending: deque = deque()

                def fill() -> None:
                    while len(pending) < max(1, prefetch_shards) and not stop.is_set():
                        seg = next(plan, None)
                        if seg is None:
                            return
                        stats.acquire()
                        pending.append(pool.submit(reader.read, *seg))

                fill()
                carry: list | None = None  # fewer than batch_size rows left from a window
                while pending and not stop.is_set():
                    window = []
                    while pending and len(window) < max(1, buffer_shards):
                        window.append(pending.popleft().result())
                        stats.segments_read += 1
                        fill()
                    parts = ([carry] if carry is not None else []) + window
                    arrays = [
                        None if parts[0][j] is None else np.concatenate([p[j] for p in parts])
                        for j in range(3)
                    ]
                    del parts, window
                    n = len(arrays[2])
                    order = generator.permutation(n) if shuffle else None
                    last = not pending
                    full = n // batch_size
                    if not emit(arrays, full, order):
                        return
                    rest = order[full * batch_size :] if order is not None else None
                    tail = slice(full * batch_size, n)
                    carry = None
                    if n > full * batch_size:
                        carry = [
                            None if a is None else (a[rest] if rest is not None else a[tail])
                            for a in arrays
                        ]
                    del arrays
                    stats.release(stats.held - len(pending))
                    if last and carry is not None and not drop_last and not emit(carry, 1, None):
                        return
                put(_DONE)
        except BaseException as exc:  # hand every failure to the consumer thread
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="satpipe-assembler", daemon=True)
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
