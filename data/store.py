"""Zarr v3 stores: the dataset and saliency store contract (see DESIGN.md, "Stores").

A store is a zarr v3 group. Arrays are row-major over samples, sharded along the sample axis
(the shard is the unit of concurrent writing) and every chunk carries a crc32c checksum.
Provenance lives in the group attribute ``satpipe``; ``complete`` is written last, so a store
that a crash interrupted is never mistaken for a finished one.

Readers need no satpipe: ``zarr.open_group(uri, mode="r")`` and
``dask.array.from_zarr(uri, component="train/images")`` work on any store written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import fsspec
import numpy as np
import zarr
import zarr.core.buffer
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from satpipe.core.errors import SatpipeError, note, quote
from satpipe.core.version import __version__
from satpipe.data.integrity import (
    DATASET_FEATURES,
    EVERY_CHUNK,
    SHARD_SHA256,
    SHARD_SIZES,
    WRITE_EVERY_CHUNK,
    ShardCheck,
    digest_blocks,
    has_feature,
    inventory_problems,
    shard_size,
)
from satpipe.data.metadata import check_metadata
from satpipe.data.outputs import prepare_output, store_lock

FORMAT = 1
ATTR = "satpipe"
SPLITS = ("train", "test")
# Target sizes: chunks small enough to read selectively, shards large enough to write in one go.
CHUNK_BYTES = 1 << 20
SHARD_BYTES = 32 << 20


# --------------------------------------------------------------------------------------------
# URIs and small helpers


def now_iso() -> str:
    """UTC timestamp for provenance; honours SOURCE_DATE_EPOCH for reproducible attrs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = float(epoch) if epoch else time.time()
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_path(uri: str) -> str:
    """`file:///x` -> `/x`; other URIs unchanged. zarr's own local store handles `/x` (it makes
    parent directories), whereas `file://` would go through fsspec's LocalFileSystem, which
    does not."""
    uri = str(uri)
    return uri[len("file://") :] if uri.startswith("file://") else uri


def is_url(uri: str) -> bool:
    """True for a remote fsspec URL (`s3://...`), False for a local path or `file://`."""
    return "://" in local_path(uri)


def _transport_errors() -> tuple[type[BaseException], ...]:
    # Errors that mean "the storage service could not be reached or refused us", as opposed to
    # the FileNotFoundError/KeyError that zarr uses to mean "no such key". botocore and aiohttp
    # come with s3fs, an optional dependency.
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, PermissionError]
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    except ImportError:
        pass
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(errors)


@contextmanager
def storage_errors(uri: str):
    """Turn an unreachable or refusing storage service into a one-line SatpipeError."""
    try:
        yield
    except SatpipeError:
        raise
    except _transport_errors() as exc:
        raise SatpipeError(f"{uri}: storage unreachable or refused ({quote(exc, 300)})") from exc
    except TypeError as exc:
        # fsspec passes storage options on as keyword arguments; an unknown one lands here.
        if "unexpected keyword" not in str(exc):
            raise
        raise SatpipeError(f"{uri}: storage option not understood ({quote(exc, 300)})") from exc


@contextmanager
def write_errors(uri: str, what: str):
    """A failed write (disk full, read-only target, permission refused, storage down) becomes
    one SatpipeError naming the store, what was being written and, when the OS names it, the
    file. Nothing is marked done or complete after a failed write: callers write markers
    only after this block succeeds."""
    try:
        yield
    except SatpipeError:
        raise
    except (OSError, *_transport_errors()) as exc:
        where = f": {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        raise SatpipeError(f"{uri}: cannot write {what}{where} ({quote(exc)})") from exc


class _FriendlyStore(zarr.storage.WrapperStore):
    """An fsspec store whose transport failures (S3 down mid-write, bad credentials) surface as
    one-line SatpipeErrors naming the store, instead of botocore tracebacks from deep inside
    zarr. Semantics are unchanged: missing keys still read as missing."""

    def __init__(self, store, uri: str = "") -> None:
        super().__init__(store)
        self._uri = uri

    def _with_store(self, store):
        return type(self)(store, self._uri)

    def __reduce__(self):
        return (type(self), (self._store, self._uri))

    async def _translate(self, agen):
        with storage_errors(self._uri):
            async for item in agen:
                yield item

    def list(self):
        return self._translate(self._store.list())

    def list_prefix(self, prefix):
        return self._translate(self._store.list_prefix(prefix))

    def list_dir(self, prefix):
        return self._translate(self._store.list_dir(prefix))


def _friendly(name: str):
    """The store method `name`, forwarded to the wrapped store under `storage_errors`."""

    async def method(self, *args, **kwargs):
        with storage_errors(self._uri):
            return await getattr(self._store, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in ("get", "get_partial_values", "exists", "set", "set_if_not_exists", "delete",
              "is_empty"):  # fmt: skip
    setattr(_FriendlyStore, _name, _friendly(_name))


def _url_store(uri: str, storage_options: Mapping[str, Any] | None, read_only: bool):
    store = zarr.storage.FsspecStore.from_url(
        str(uri), storage_options=dict(storage_options or {}), read_only=read_only
    )
    return _FriendlyStore(store, str(uri))


def url_to_fs(uri: str, storage_options: Mapping[str, Any] | None = None):
    """(fsspec filesystem, path) of a store; storage options only reach URL filesystems."""
    if is_url(uri):
        return fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))
    return fsspec.core.url_to_fs(local_path(uri))


def store_exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when anything is present at `uri` (local path or fsspec URL)."""
    with storage_errors(uri):
        fs, path = url_to_fs(uri, storage_options)
        return fs.exists(path)


def remove_store(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    with storage_errors(uri):
        fs, path = url_to_fs(uri, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def open_group(uri: str, mode: str = "r", storage_options: Mapping[str, Any] | None = None):
    """Open a satpipe store group; a missing or non-zarr path is a one-line SatpipeError.

    `uri` is a local path, `file://` or any fsspec URL (`s3://bucket/x.zarr`, with
    `storage_options` such as key, secret, endpoint_url, or the usual AWS env vars).
    """
    # zarr wants storage_options only for URLs; plain paths must not get them.
    target = _url_store(uri, storage_options, mode == "r") if is_url(uri) else local_path(uri)
    try:
        with storage_errors(uri):
            # Before zarr believes a shape, a chunk or a nesting depth (satpipe.data.metadata).
            check_metadata(uri, storage_options)
            return zarr.open_group(target, mode=mode, zarr_format=3)
    except SatpipeError:
        raise
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise SatpipeError(f"{uri}: no zarr v3 store here") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise SatpipeError(f"{uri}: cannot open as a zarr v3 store ({exc})") from exc


def create_group(
    uri: str,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None = None,
    kind: str | None = None,
    inputs: Sequence[str | None] = (),
):
    """Create a new store group; refuse an existing path unless `overwrite`, and even then
    anything but a satpipe store of `kind` (None: any kind), an input of the command, a link
    or a chained URL (satpipe.data.outputs.prepare_output)."""
    with storage_errors(uri), write_errors(uri, "over the existing store (removing it)"):
        prepare_output(uri, kind, overwrite, inputs, storage_options)
    target = _url_store(uri, storage_options, False) if is_url(uri) else local_path(uri)
    try:
        with write_errors(uri, "the store's root"):
            return zarr.create_group(target, zarr_format=3)
    except SatpipeError:
        # Nothing was there before: leave nothing (an empty folder would block the rerun).
        with contextlib.suppress(Exception):
            remove_store(uri, storage_options)
        raise


def unfinished_dataset(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when `uri` holds a satpipe dataset store its writer did not finish (a crash, a
    full disk): such a store is never valid, so an import may replace it without --overwrite
    and a rerun after the fault simply works."""
    if not store_exists(uri, storage_options):
        return False
    try:
        group = open_group(uri, "r", storage_options)
    except SatpipeError:
        return False
    attrs = dict(group.attrs.get(ATTR) or {})
    return attrs.get("kind") == "dataset" and attrs.get("complete") is False


def row_layout(row_bytes: int, n_rows: int, rows_per_shard: int | None = None) -> tuple[int, int]:
    """(rows_per_chunk, rows_per_shard) for arrays of `n_rows` rows of `row_bytes` each.

    Chunk rows are a power of two near CHUNK_BYTES; shard rows a multiple of chunk rows.
    """
    chunk = 1
    while chunk * 2 * row_bytes <= CHUNK_BYTES and chunk * 2 <= max(n_rows, 1):
        chunk *= 2
    if rows_per_shard is None:
        rows_per_shard = max(chunk, (SHARD_BYTES // max(row_bytes, 1)) // chunk * chunk)
        rows_per_shard = min(rows_per_shard, -(-max(n_rows, 1) // chunk) * chunk)
    if rows_per_shard < chunk or rows_per_shard % chunk:
        # An explicit shard size wins; the chunk shrinks to a divisor of it.
        chunk = int(np.gcd(chunk, rows_per_shard))
    return chunk, rows_per_shard


def create_rows_array(
    group,
    path: str,
    n_rows: int,
    row_shape: Sequence[int],
    dtype: str | np.dtype,
    rows_per_shard: int | None = None,
    fill_value: Any = 0,
):
    """A sample-major array, sharded along rows, zstd + crc32c on every chunk."""
    dtype = np.dtype(dtype)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    chunk, shard = row_layout(row_bytes, n_rows, rows_per_shard)
    return group.create_array(
        path,
        shape=(n_rows, *row_shape),
        dtype=dtype,
        chunks=(chunk, *row_shape),
        shards=(shard, *row_shape),
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        fill_value=fill_value,
        # Store every chunk, even one equal to the fill value, so that a reader can tell a
        # lost object from an elided one (see satpipe.data.integrity).
        config=WRITE_EVERY_CHUNK,
    )


def shard_rows(array) -> int:
    """Rows per shard (the write unit) of an array made by `create_rows_array`."""
    return int((array.shards or array.chunks)[0])


def shard_slices(n_rows: int, rows_per_shard: int) -> list[slice]:
    return [slice(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def read_attrs(group, uri: str) -> dict[str, Any]:
    attrs = dict(group.attrs.get(ATTR) or {})
    if not attrs:
        raise SatpipeError(f"{uri}: not a satpipe store (no '{ATTR}' attribute)")
    if attrs.get("format") != FORMAT:
        raise SatpipeError(f"{uri}: unsupported satpipe store format {attrs.get('format')!r}")
    return attrs


def write_attrs(group, attrs: Mapping[str, Any]) -> None:
    group.attrs[ATTR] = dict(attrs)


# --------------------------------------------------------------------------------------------
# Fingerprint


class Fingerprint:
    """sha256 over images and labels of every split, fed row blocks in order while writing.

    Images and labels are hashed in separate streams per split so the digest does not depend
    on how rows were batched; the final digest binds split names, row counts and shapes too.
    """

    def __init__(self) -> None:
        self._parts: dict[str, list] = {}

    def update(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        part = self._parts.setdefault(split, [hashlib.sha256(), hashlib.sha256(), 0, None])
        part[0].update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        part[1].update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
        part[2] += len(labels)
        part[3] = tuple(images.shape[1:])

    def part(self, split: str) -> tuple[str, str, int, tuple]:
        """(images sha256, labels sha256, rows, image shape) of one split, as hashed so far."""
        img, lab, n, shape = self._parts[split]
        return img.hexdigest(), lab.hexdigest(), n, shape

    @staticmethod
    def combine(parts: Mapping[str, tuple[str, str, int, tuple]]) -> str:
        """The fingerprint of a store from the `part` of each of its splits."""
        final = hashlib.sha256(b"satpipe-fingerprint-v1\n")
        for split in sorted(parts):
            img, lab, n, shape = parts[split]
            final.update(f"{split}:{n}:{'x'.join(map(str, shape))}:{img}:{lab}\n".encode())
        return "sha256:" + final.hexdigest()

    def hexdigest(self) -> str:
        return self.combine({split: self.part(split) for split in self._parts})


# Older stores record no shard digests, only the whole-store fingerprint, which can be checked
# only by reading every split whole and in row order. Resident loads do exactly that; they
# leave their split's part here, and once every split of a store has been read in this process
# (the trainer loads train and test), the parts are combined and compared.
_WHOLE_READS: dict[tuple[str, str], dict[str, tuple]] = {}
_WHOLE_READS_LOCK = threading.Lock()


def record_whole_split(view: DatasetView, split: str, fingerprint: Fingerprint) -> None:
    """Leave the fingerprint part of `split`, read whole and in order, for `check_whole_reads`."""
    with _WHOLE_READS_LOCK:
        _WHOLE_READS.setdefault((view.uri, view.fingerprint), {})[split] = fingerprint.part(split)


def check_whole_reads(view: DatasetView) -> bool:
    """True when every split of `view` was read whole in this process and the reads hash to
    its recorded fingerprint; False when some split was not read whole (nothing checked).
    Data that hashes to something else is a SatpipeError naming the store."""
    with _WHOLE_READS_LOCK:
        parts = dict(_WHOLE_READS.get((view.uri, view.fingerprint), {}))
    if set(parts) != set(view.splits):
        return False
    found = Fingerprint.combine(parts)
    if found != view.fingerprint:
        raise SatpipeError(
            f"{view.uri}: the images and labels read hash to {found[:19]}..., not the "
            f"fingerprint {str(view.fingerprint)[:19]}... recorded when the store was written "
            "(it was changed, or a copy mixed two versions); run `satpipe store verify` on it"
        )
    return True


# --------------------------------------------------------------------------------------------
# Dataset stores


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

    @property
    def has_shard_digests(self) -> bool:
        """True for stores that record the sha256 of every shard (checked in flight)."""
        return has_feature(self.attrs, SHARD_SHA256)

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

    def shard_check(self, split: str) -> ShardCheck | None:
        """A ShardCheck of `split` against the digests recorded at write time; None for
        stores made before digests were recorded (see `legacy_note`)."""
        shards = (self.attrs.get("shards") or {}).get(split)
        if not self.has_shard_digests or not shards:
            return None
        n = len(self.split(split))
        return ShardCheck(self.uri, split, n, int(shards["rows"]), shards["sha256"])

    def legacy_note(self) -> str | None:
        """What cannot be checked in a store made before these checks existed (None if all)."""
        if self.has_shard_digests and has_feature(self.attrs, EVERY_CHUNK):
            return None
        return (
            f"{self.uri} was written before satpipe stored every chunk and recorded shard "
            "digests: its labels cannot be inventoried (a labels shard of class 0 may be "
            "legitimately absent), and its data is checked against its fingerprint only "
            "when loaded whole (resident); `satpipe store verify` checks everything"
        )


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
        legacy = view.legacy_note()
        if legacy:
            note(legacy)
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


class _BrokenNode(Exception):
    """A node whose zarr.json cannot be parsed (half-written by an interrupted copy)."""


def _node(group, path: str):
    """The array or group at `path`, or None when the store has none (a partial copy)."""
    try:
        return group[path]
    except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, invalid metadata
        raise _BrokenNode(
            f"{path}: metadata unreadable ({quote(exc, 120)}; a half-written zarr.json?)"
        ) from exc


def unreadable_metadata(group, uri: str = "") -> list[str]:
    """One line per zarr.json under the root that does not parse (an interrupted copy can
    leave one half-written): one listing and a read of each metadata object."""
    store, base = group.store_path.store, group.store_path.path
    prefix = f"{base}/" if base else ""

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(prefix) if k.endswith("zarr.json")]

    problems = []
    with storage_errors(uri or str(group.store_path)):
        for key in sorted(sync(keys())):
            rel = key[len(prefix) :]
            if rel == "zarr.json":
                continue  # the root: opened already
            raw = sync(store.get(key, zarr.core.buffer.default_buffer_prototype()))
            try:
                json.loads(raw.to_bytes() if raw is not None else b"")
            except ValueError as exc:
                problems.append(
                    f"{rel}: metadata unreadable ({quote(exc, 80)}; a half-written copy?)"
                )
    return problems


def _unbroken(inventory):
    """An inventory whose broken metadata is one more problem line, not an exception."""

    def checked(group, attrs: Mapping[str, Any]) -> list[str]:
        try:
            return inventory(group, attrs)
        except _BrokenNode as exc:
            return [str(exc)]

    return checked


def dataset_inventory(group, attrs: Mapping[str, Any], uri: str = "") -> list[str]:
    """Inventory problems of a dataset store (empty: every array and shard is there, each
    shard object of the size it was written with, where the store recorded sizes).

    Stores with shard digests name the arrays each split must have; older ones are checked
    for the arrays they have (their labels not at all: see satpipe.data.integrity)."""
    with storage_errors(uri or str(group.store_path)):
        return _unbroken(_dataset_inventory)(group, attrs)


def _dataset_inventory(group, attrs: Mapping[str, Any]) -> list[str]:
    recorded = attrs.get("shards") if has_feature(attrs, SHARD_SHA256) else None
    every = has_feature(attrs, EVERY_CHUNK)
    splits = list(recorded) if recorded else [s for s in SPLITS if _node(group, s) is not None]
    if not splits:
        return ["no train or test split"]
    problems, wanted = [], {}
    for split in splits:
        if _node(group, split) is None:
            problems.append(f"{split}: split group missing (its zarr.json is not in the store)")
            continue
        if recorded:
            names = list(recorded[split]["sha256"])
        else:
            names = ["images", "labels"] + [
                n for n in ("masks", "boxes") if _node(group, f"{split}/{n}") is not None
            ]
        sizes = ((recorded or {}).get(split) or {}).get("bytes") or {}
        for name in names:
            if name == "labels" and not every and _node(group, f"{split}/{name}") is not None:
                continue  # an all-class-0 labels shard is legitimately absent in older stores
            wanted[f"{split}/{name}"] = (_node(group, f"{split}/{name}"), None, sizes.get(name))
    return problems + inventory_problems(wanted)


def saliency_inventory(group, attrs: Mapping[str, Any], uri: str = "") -> list[str]:
    """Inventory problems of a saliency store: every shard marked done has its maps stored,
    and in a store marked complete every shard is marked done."""
    with storage_errors(uri or str(group.store_path)):
        return _unbroken(_saliency_inventory)(group, attrs)


def _saliency_inventory(group, attrs: Mapping[str, Any]) -> list[str]:
    splits = list(attrs.get("splits") or [s for s in SPLITS if _node(group, s) is not None])
    problems, wanted = [], {}
    for split in splits:
        maps, done = _node(group, f"{split}/saliency"), _node(group, f"{split}/done")
        if maps is None or done is None:
            what = "saliency" if maps is None else "done"
            problems.append(f"{split}/{what}: array missing (its zarr.json is not in the store)")
            continue
        try:
            flags = np.asarray(done[:])
        except (ValueError, RuntimeError, OSError) as exc:  # a damaged or half-copied marker
            problems.append(f"{split}/done: unreadable ({quote(exc, 120)})")
            continue
        if attrs.get("complete") and not (flags == 1).all():
            left = np.flatnonzero(flags != 1).tolist()
            problems.append(
                f"{split}/done: {len(flags) - len(left)} of {len(flags)} shards done, though the "
                f"store is marked complete (not done: {left[:3]}{' ...' if len(left) > 3 else ''})"
            )
        sizes = None
        if has_feature(attrs, SHARD_SIZES):
            sizes_array = _node(group, f"{split}/bytes")
            if sizes_array is None:
                problems.append(f"{split}/bytes: array missing (its zarr.json is not in the store)")
                continue
            try:
                sizes = np.asarray(sizes_array[:]).tolist()
            except (ValueError, RuntimeError, OSError) as exc:
                problems.append(f"{split}/bytes: unreadable ({quote(exc, 120)})")
                continue
        wanted[f"{split}/saliency"] = (maps, np.flatnonzero(flags == 1).tolist(), sizes)
    return problems + inventory_problems(wanted)


def refuse_missing(uri: str, problems: Sequence[str]) -> None:
    """Raise the first inventory problem as the one-line refusal of a store."""
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SatpipeError(
            f"{uri}: incomplete or damaged store (an interrupted copy?): {problems[0]}{more}"
        )


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


# --------------------------------------------------------------------------------------------
# Saliency stores (read side; the pipeline owns writing)


class Normalization(str, Enum):
    """How a saliency store's maps were normalised per image (satpipe.pipeline.normalize)."""

    signed_maxabs = "signed-maxabs"
    minmax = "minmax"
    sign = "sign"


# The values each normalisation can produce: part of the store contract, checked by verify.
NORMALIZATION_RANGES = {
    Normalization.signed_maxabs.value: (-1.0, 1.0),
    Normalization.minmax.value: (0.0, 1.0),
    Normalization.sign.value: (-1.0, 1.0),
}


@dataclass(frozen=True)
class SaliencyView:
    """A saliency store opened read-only. `split(name)` is the (N,H,W,Cs) float16 array in
    [-1, 1] (or [0, 1] for `minmax`); row i belongs to row i of the dataset split."""

    uri: str
    group: Any
    attrs: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def method(self) -> str:
        return self.attrs["method"]

    @property
    def dataset_fingerprint(self) -> str:
        return self.attrs["dataset"]["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.group]

    def split(self, name: str):
        if name not in self.group:
            raise SatpipeError(
                f"{self.uri}: saliency store has no '{name}' split (has {self.splits})"
            )
        return self.group[name]["saliency"]

    def done(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name]["done"][:])


def open_saliency(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    require_complete: bool = True,
    check_inventory: bool = True,
) -> SaliencyView:
    """Open a saliency store read-only (local path or fsspec URL).

    Every shard marked done must have its maps stored (one listing per array), else a
    SatpipeError naming the array and the rows."""
    group = open_group(uri, "r", storage_options)
    attrs = read_attrs(group, uri)
    if attrs.get("kind") != "saliency":
        raise SatpipeError(f"{uri}: is a {attrs.get('kind')} store, not a saliency store")
    if require_complete and not attrs.get("complete"):
        raise SatpipeError(f"{uri}: saliency store is incomplete (not every shard is done)")
    if check_inventory:
        refuse_missing(uri, saliency_inventory(group, attrs, uri))
        if not has_feature(attrs, EVERY_CHUNK):
            note(
                f"{uri} was written before satpipe stored every chunk and recorded shard "
                "sizes: a shard of maps that was all zeros was not stored there (if one is "
                "reported missing, rerun `satpipe saliency` to store it), and a half-copied "
                "shard is found only when it is read"
            )
    return SaliencyView(uri=str(uri), group=group, attrs=attrs)


def pairing_problems(
    made_for: str | None, fingerprint: str | None, data_uri: str, maps_by_split, images_by_split
) -> list[str]:
    """Why a saliency store does not belong row for row to a dataset: its recorded dataset
    fingerprint `made_for` against the dataset's, and each split's maps (N, H, W, Cs) against
    the images (N, H, W, C) (Cs in {1, C}). Empty when it belongs."""
    problems = []
    if made_for != fingerprint:
        problems.append(
            f"dataset fingerprint mismatch: made for {str(made_for)[:19]}…, "
            f"but {data_uri} is {str(fingerprint)[:19]}…"
        )
    for split, maps in maps_by_split.items():
        images = images_by_split.get(split)
        if images is None:
            problems.append(f"{split}/saliency: {data_uri} has no {split} split")
        elif maps.shape[:3] != images.shape[:3] or maps.shape[3] not in (1, images.shape[3]):
            problems.append(
                f"{split}/saliency shape {tuple(maps.shape)} does not match images "
                f"{tuple(images.shape)} of {data_uri}"
            )
    return problems


def check_pairing(dataset: DatasetView, saliency: SaliencyView, split: str = "train") -> None:
    """Refuse a saliency store that does not belong row for row to this dataset split."""
    problems = pairing_problems(
        saliency.dataset_fingerprint, dataset.fingerprint, dataset.uri,
        {split: saliency.split(split)}, {split: dataset.split(split).images},
    )  # fmt: skip
    if problems:
        raise SatpipeError(f"{saliency.uri}: {problems[0]}")
