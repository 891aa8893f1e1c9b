"""Saliency stores (DESIGN.md, "Stores"): the read side (`open_saliency`, the normalisations
and their ranges, the pairing with a dataset) and the write side (attributes, creation or
resumption of a store for one run, shard markers, completion), both halves of one contract.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import Crc32cCodec

from satpipe.core.errors import SatpipeError, note
from satpipe.core.version import __version__
from satpipe.data.dataset_store import DatasetView
from satpipe.data.integrity import SALIENCY_FEATURES, refuse_older_store, writable
from satpipe.data.inventory import (
    refuse_missing,
    saliency_inventory,
    shard_key,
    shard_size,
    shard_span,
    stored_shards,
)
from satpipe.data.storage import (
    ATTR,
    FORMAT,
    SPLITS,
    create_group,
    create_rows_array,
    now_iso,
    open_group,
    read_attrs,
    shard_rows,
    shard_slices,
    store_exists,
    write_attrs,
    write_errors,
)
from satpipe.data.zarr_internals import delete_key


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


# How long a run waits for a store another process is creating to get its attributes.
CREATION_WAIT_S = 30.0
# Keys that must match for a run to continue an existing store (everything but timestamps).
IDENTITY = (
    "method",
    "params",
    "normalization",
    "seed",
    "source_model",
    "dataset",
    "compute",
    "splits",
)


def saliency_attrs(
    *,
    method: str,
    params: Mapping[str, Any],
    normalization: str,
    seed: int,
    source_model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    splits: Mapping[str, Sequence[int]],
    compute: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `satpipe` attribute of a new saliency store (complete=False).

    source_model: {arch, checkpoint_sha256, variant} (None values for model-free methods);
    dataset: {uri, fingerprint}; splits: {split: (N, H, W, Cs)}; compute: settings that change
    the bytes (batch size, bf16 autocast), recorded so a resume cannot silently mix them.
    """
    return {
        "kind": "saliency",
        "format": FORMAT,
        "features": list(SALIENCY_FEATURES),
        "method": method,
        "params": dict(params),
        "normalization": normalization,
        "seed": int(seed),
        "source_model": dict(source_model),
        "dataset": dict(dataset),
        "splits": {k: [int(v) for v in shape] for k, shape in splits.items()},
        "compute": dict(compute or {}),
        "complete": False,
        "created": now_iso(),
        "satpipe_version": __version__,
    }


def create_saliency_store(
    uri: str,
    attrs: Mapping[str, Any],
    rows_per_shard: Mapping[str, int],
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    inputs: Sequence[str | None] = (),
):
    """Create the group, the `saliency` and `done` arrays of each split, then the attrs.
    `overwrite` replaces only a saliency store, never one of `inputs` (the dataset, the
    model): satpipe.data.outputs."""
    group = create_group(uri, overwrite, storage_options, "saliency", inputs)
    with write_errors(uri, "its arrays and attributes"):
        _create_arrays(group, attrs, rows_per_shard)
        # Attributes last: a store without them is not mistaken for one that can be resumed.
        write_attrs(group, attrs)
    return group


def _create_arrays(group, attrs: Mapping[str, Any], rows_per_shard: Mapping[str, int]) -> None:
    for split, (n, h, w, cs) in attrs["splits"].items():
        maps = create_rows_array(
            group, f"{split}/saliency", n, (h, w, cs), "float16", rows_per_shard[split]
        )
        n_shards = len(shard_slices(n, shard_rows(maps)))
        # One chunk per shard: each worker writes only its own marker objects.
        for name, dtype in (("done", "uint8"), ("bytes", "int64")):
            group.create_array(
                f"{split}/{name}",
                shape=(n_shards,),
                dtype=dtype,
                chunks=(1,),
                compressors=[Crc32cCodec()],
                fill_value=0,
            )


def open_saliency_for_write(
    uri: str,
    attrs: Mapping[str, Any],
    rows_per_shard: Mapping[str, int],
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    inputs: Sequence[str | None] = (),
) -> tuple[Any, dict[str, Any]]:
    """(group, attrs in the store): a new store, or an existing one made for the same run.

    An existing store for another dataset/method/params/normalisation/seed/source/compute is a
    SatpipeError unless `overwrite` (then it is replaced, if it is a saliency store and not
    one of `inputs`). The caller holds the store's lock (satpipe.data.outputs.store_lock).
    """
    if overwrite or not store_exists(uri, storage_options):
        try:
            group = create_saliency_store(
                uri, attrs, rows_per_shard, overwrite, storage_options, inputs
            )
            return group, dict(attrs)
        except (SatpipeError, zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
            # Another process created it between our check and our create: join its store.
            if overwrite or not store_exists(uri, storage_options):
                raise
    group, found = _open_when_attributed(uri, storage_options)
    if found.get("kind") != "saliency" or found.get("format") != FORMAT:
        what = found.get("kind") or "non-satpipe"
        raise SatpipeError(
            f"{uri}: exists and is a {what} store, not a saliency store "
            "(pass --overwrite to replace it)"
        )
    refuse_older_store(uri, found)
    wanted = _jsonish(attrs)
    found_j = _jsonish(found)
    # The dataset is identified by its fingerprint; it may have moved since the first run.
    for j in (wanted, found_j):
        j["dataset"] = (j.get("dataset") or {}).get("fingerprint")
    for key in IDENTITY:
        if found_j.get(key) != wanted.get(key):
            raise SatpipeError(
                f"{uri}: exists with {key}={_short(found_j.get(key))}, this run has "
                f"{key}={_short(wanted.get(key))} (pass --overwrite to replace it)"
            )
    for split in attrs["splits"]:
        maps = group[f"{split}/saliency"]
        if shard_rows(maps) != rows_per_shard[split]:
            raise SatpipeError(
                f"{uri}: {split} shards hold {shard_rows(maps)} rows, this run wants "
                f"{rows_per_shard[split]} (pass --overwrite to replace it)"
            )
    return group, found


def _open_when_attributed(
    uri: str, storage_options: Mapping[str, Any] | None, timeout_s: float = CREATION_WAIT_S
) -> tuple[Any, dict[str, Any]]:
    """(group, attrs) of an existing store. One without attrs yet is being created by another
    process (attrs are written last), so wait for them, up to `timeout_s`, before calling it
    foreign."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            group = open_group(uri, "r+", storage_options)
        except SatpipeError:
            # The group's own metadata may not be written yet either.
            if time.monotonic() > deadline:
                raise
            group = None
        found = dict(group.attrs.get(ATTR) or {}) if group is not None else {}
        if found or (group is not None and time.monotonic() > deadline):
            return group, found
        time.sleep(0.2)


def shard_plan(group, split: str) -> list[slice]:
    """Row slices of the shards of `split` (shard k = slice k)."""
    maps = group[f"{split}/saliency"]
    return shard_slices(int(maps.shape[0]), shard_rows(maps))


def done_shards(group, split: str) -> np.ndarray:
    """uint8 (n_shards,): 1 where the shard is fully written."""
    return np.asarray(group[f"{split}/done"][:])


def write_shard(group, split: str, k: int, maps: np.ndarray, uri: str = "") -> None:
    """Write the float16 (rows, H, W, Cs) maps of shard k, then mark it done (in that order).

    Every chunk is stored, even an all-zero one, so readers can tell a lost shard from an
    elided one. A failed write (disk full, read-only target) is a one-line SatpipeError naming
    the store `uri` and the shard, and the shard is not marked done."""
    rows = shard_plan(group, split)[k]
    arr = writable(group[f"{split}/saliency"])
    expected = (rows.stop - rows.start, *arr.shape[1:])
    if maps.shape != expected:
        raise SatpipeError(f"{split} shard {k}: maps {maps.shape}, expected {expected}")
    with write_errors(uri, f"{split}/saliency rows {rows.start}:{rows.stop} (shard {k})"):
        arr[rows] = maps.astype(np.float16, copy=False)
    with write_errors(uri, f"{split}/bytes of shard {k} (its maps are written)"):
        group[f"{split}/bytes"][k] = shard_size(arr, k) or 0
    with write_errors(uri, f"{split}/done marker of shard {k} (its maps are written)"):
        group[f"{split}/done"][k] = 1


def unmark_lost_shards(group, uri: str) -> int:
    """Clear the done marker of every shard whose maps have no stored object, or one of
    another size than was written (deleted, lost or half-written in a copy), so a rerun
    computes them again; returns how many. A complete store that lost shards stops being
    complete."""
    attrs = dict(group.attrs[ATTR])
    lost = 0
    for split in attrs["splits"]:
        done = done_shards(group, split)
        have = stored_shards(group[f"{split}/saliency"])
        sizes = np.asarray(group[f"{split}/bytes"][:])
        gone = [
            k
            for k in np.flatnonzero(done == 1).tolist()
            if k not in have or have[k] not in (None, int(sizes[k]))
        ]
        if not gone:
            continue
        maps = group[f"{split}/saliency"]
        rows, n = shard_rows(maps), int(maps.shape[0])
        shown = ", ".join(f"{shard_span(k, rows, n)} (shard {k})" for k in gone[:3])
        more = ", ..." if len(gone) > 3 else ""
        note(
            f"{uri}: {split}/saliency rows {shown}{more} are marked done but their maps are "
            "missing or cut short (deleted, or lost in a copy); computing them again"
        )
        with write_errors(uri, f"{split}/done markers"):
            for k in gone:
                group[f"{split}/done"][k] = 0
                # A cut-short object would be read back (and fail its checksum) by the
                # sharding codec when the shard is written again: remove it first.
                if k in have:
                    delete_key(group.store, shard_key(maps, k))
        lost += len(gone)
    if lost and attrs.get("complete"):
        attrs["complete"] = False
        with write_errors(uri, "its attributes (zarr.json)"):
            write_attrs(group, attrs)
    return lost


def mark_complete(group, uri: str) -> dict[str, Any]:
    """Set `complete` once every shard of every split is done; returns the attrs."""
    attrs = dict(group.attrs[ATTR])
    for split in attrs["splits"]:
        done = done_shards(group, split)
        if not done.all():
            missing = np.flatnonzero(done == 0).tolist()
            raise SatpipeError(f"{uri}: {split} shards {missing[:10]} are not done")
    attrs["complete"] = True
    with write_errors(uri, "its attributes (zarr.json)"):
        write_attrs(group, attrs)
    return attrs


def _jsonish(value: Any) -> Any:
    """Tuples -> lists and so on, as the attrs read back from zarr.json."""
    if isinstance(value, Mapping):
        return {str(k): _jsonish(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonish(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def write_quality(
    uri: str,
    quality: Mapping[str, Any],
    scored_attrs: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record `quality` under the store's provenance key `quality`, replacing any earlier one;
    returns the new attrs. Maps and every other attribute are left as they are.

    `scored_attrs`: the attrs the scores were computed from; a store that changed since (made
    again, or no longer complete) is refused rather than labelled with another store's scores.
    The attrs live in the group's zarr.json, which zarr replaces in one write (a temporary file
    renamed over it on local disk, one PUT on object storage): readers see the old scores or
    the new ones, never half of either.
    """
    group = open_group(uri, "r+", storage_options)
    attrs = dict(group.attrs.get(ATTR) or {})
    for key in ("created", "complete", *IDENTITY):
        if _jsonish(attrs.get(key)) != _jsonish(scored_attrs.get(key)):
            raise SatpipeError(f"{uri}: changed while it was being scored ({key}); score it again")
    attrs["quality"] = _jsonish(dict(quality))
    write_attrs(group, attrs)
    return attrs
