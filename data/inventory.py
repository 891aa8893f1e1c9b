"""What a store is missing or has damaged, read from its metadata and markers: the partial
copy, the half-written zarr.json, the shard marked done whose chunks are gone. Every reader
refuses a store with a problem here in one line (`refuse_missing`).

zarr reads a shard that has no stored object as its fill value, without an error,
so a deleted object or a copy that stopped half-way reads as zeros. Readers therefore list the
objects of each array once (`stored_shards`: one listing per array, which object storage
answers with one paginated LIST, sizes included) and refuse a store that lacks a shard that
must exist. Stores also record the size of every shard object as written (dataset stores in
their attributes, saliency stores in a `<split>/bytes` array that each worker fills for its
shard before marking it done), so a shard that a copy left half-written (`cp -r` killed
mid-file) is refused at open too.
Every chunk is stored, even one equal to the fill value (feature `every-chunk`), so every
shard of every array must exist: a lost labels shard of class 0 is as missing as any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.storage import SPLITS, shard_rows, storage_errors
from satpipe.data.zarr_internals import key_size, list_keys, listing_with_sizes, read_key

# --------------------------------------------------------------------------------------------
# Shards and their objects

# Shards named in one line.
EXAMPLES = 3


def n_shards_of(array) -> int:
    rows = shard_rows(array)
    return -(-int(array.shape[0]) // rows) if array.shape[0] else 0


def shard_key(array, k: int) -> str:
    """The store key of shard k of a row-sharded array: `<array path>/c/k/0/.../0`."""
    base = array.store_path.path
    key = array.metadata.encode_chunk_key((k,) + (0,) * (array.ndim - 1))
    return f"{base}/{key}" if base else key


def stored_shards(array) -> dict[int, int | None]:
    """{shard index: object size in bytes (None: unknown)} of the shards of a row-sharded
    array that have a stored object: one listing.

    Arrays made by `satpipe.data.storage.create_rows_array` have one shard across every axis
    but the first, so shard k is the object `c/k/0/.../0`. Anything else under `c/` (zarr's
    `.partial` temporaries, stray files) does not count."""
    base = array.store_path.path
    expected = {shard_key(array, k): k for k in range(n_shards_of(array))}
    listed = listing_with_sizes(array.store_path.store, f"{base}/c/" if base else "c/")
    return {expected[key]: size for key, size in listed.items() if key in expected}


def missing_shards(array) -> list[int]:
    """Indices of the shards of a row-sharded array that have no stored object (one listing)."""
    have = stored_shards(array)
    return [k for k in range(n_shards_of(array)) if k not in have]


def shard_size(array, k: int) -> int:
    """Bytes of the stored object of shard k (one stat or HEAD)."""
    return key_size(array.store_path.store, shard_key(array, k))


def shard_span(k: int, rows: int, n: int) -> str:
    return f"{k * rows}:{min((k + 1) * rows, n)}"


def missing_line(path: str, missing: Sequence[int], rows: int, n: int, total: int) -> str:
    """`train/images rows 0:8 (shard 0), ... have no stored data (2 of 4 shards missing...)`."""
    shown = ", ".join(f"{shard_span(k, rows, n)} (shard {k})" for k in missing[:EXAMPLES])
    more = ", ..." if len(missing) > EXAMPLES else ""
    return (
        f"{path} rows {shown}{more} have no stored data ({len(missing)} of {total} shards "
        "missing; zarr would read them as zeros)"
    )


def inventory_problems(arrays: Mapping[str, tuple]) -> list[str]:
    """One line per array that is absent, lacks shards or holds a shard object of another size
    than was written: `arrays` maps "split/name" to (the zarr array, or None when the group
    has no such array; the shard indices that must be stored, or None for all; the recorded
    object sizes, or None)."""
    problems = []
    for path, (array, wanted, sizes) in arrays.items():
        if array is None:
            problems.append(f"{path}: array missing (its zarr.json is not in the store)")
            continue
        total, rows, n = n_shards_of(array), shard_rows(array), int(array.shape[0])
        wanted = range(total) if wanted is None else wanted
        have = stored_shards(array)
        missing = sorted(k for k in wanted if k not in have)
        if missing:
            problems.append(missing_line(path, missing, rows, n, total))
        if sizes is not None and len(sizes) == total:
            wanted = set(wanted)
            short = [
                k
                for k in sorted(have)
                # 0 recorded: not written yet (a saliency shard not done)
                if k in wanted and have[k] is not None and sizes[k] and have[k] != sizes[k]
            ]
            if short:
                k = short[0]
                more = f" (and {len(short) - 1} more shards)" if len(short) > 1 else ""
                problems.append(
                    f"{path} rows {shard_span(k, rows, n)} (shard {k}): object is {have[k]} "
                    f"bytes, {sizes[k]} were written (a truncated or altered copy){more}"
                )
    return problems


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
    problems = []
    with storage_errors(uri or str(group.store_path)):
        for key in sorted(k for k in list_keys(store, prefix) if k.endswith("zarr.json")):
            rel = key[len(prefix) :]
            if rel == "zarr.json":
                continue  # the root: opened already
            try:
                json.loads(read_key(store, key) or b"")
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
    shard object of the size it was written with, where the store recorded sizes). The shard
    digests in the attrs name the splits and the arrays each split must have."""
    with storage_errors(uri or str(group.store_path)):
        return _unbroken(_dataset_inventory)(group, attrs)


def _dataset_inventory(group, attrs: Mapping[str, Any]) -> list[str]:
    recorded = attrs.get("shards") or {}
    present = [s for s in SPLITS if _node(group, s) is not None]
    if not recorded and not present:
        return ["no train or test split"]
    problems = [f"{s}: no shard digests recorded for it" for s in present if s not in recorded]
    wanted = {}
    for split, record in recorded.items():
        if _node(group, split) is None:
            problems.append(f"{split}: split group missing (its zarr.json is not in the store)")
            continue
        sizes = record.get("bytes") or {}
        for name in record["sha256"]:
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
