"""What a store is missing or has damaged, read from its metadata and markers: the partial
copy, the half-written zarr.json, the shard marked done whose chunks are gone. Every reader
refuses a store with a problem here in one line (`refuse_missing`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.integrity import inventory_problems
from satpipe.data.storage import SPLITS, storage_errors
from satpipe.data.zarr_internals import list_keys, read_key


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
