"""Where stores live and how their arrays are laid out: paths and fsspec URLs, the errors
storage raises turned into one line, zarr groups opened and created (metadata checked before
zarr parses it, outputs prepared by satpipe.data.outputs), row-sharded arrays with a crc32c
checksum on every chunk, and the `satpipe` provenance attribute.

A store is a zarr v3 group. Arrays are row-major over samples, sharded along the sample axis
(the shard is the unit of concurrent writing) and every chunk carries a crc32c checksum.
Provenance lives in the group attribute ``satpipe``; ``complete`` is written last, so a store
that a crash interrupted is never mistaken for a finished one. Readers need no satpipe:
``zarr.open_group(uri, mode="r")`` and ``dask.array.from_zarr(uri, component="train/images")``
work on any store written here (DESIGN.md, "Stores").
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.integrity import WRITE_EVERY_CHUNK, refuse_older_store
from satpipe.data.metadata import check_metadata
from satpipe.data.outputs import prepare_output
from satpipe.data.zarr_internals import TranslatingStore

FORMAT = 1

ATTR = "satpipe"

SPLITS = ("train", "test")

# Target sizes: chunks small enough to read selectively, shards large enough to write in one go.
CHUNK_BYTES = 1 << 20

SHARD_BYTES = 32 << 20


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


def _url_store(uri: str, storage_options: Mapping[str, Any] | None, read_only: bool):
    """An fsspec store whose transport failures (S3 down mid-write, bad credentials) surface
    as one-line SatpipeErrors naming the store, not botocore tracebacks from deep in zarr."""
    store = zarr.storage.FsspecStore.from_url(
        str(uri), storage_options=dict(storage_options or {}), read_only=read_only
    )
    return TranslatingStore(store, functools.partial(storage_errors, str(uri)))


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
    """The `satpipe` attrs of an opened store; a SatpipeError for anything but a satpipe store
    of this format that records every feature this version's writer records for its kind
    (an older store is refused with the command that rebuilds it: satpipe.data.integrity)."""
    attrs = dict(group.attrs.get(ATTR) or {})
    if not attrs:
        raise SatpipeError(f"{uri}: not a satpipe store (no '{ATTR}' attribute)")
    if attrs.get("format") != FORMAT:
        raise SatpipeError(f"{uri}: unsupported satpipe store format {attrs.get('format')!r}")
    refuse_older_store(uri, attrs)
    return attrs


def write_attrs(group, attrs: Mapping[str, Any]) -> None:
    group.attrs[ATTR] = dict(attrs)
