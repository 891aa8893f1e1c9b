"""What a reader checks before it trusts a store's data: the features it must record (or be
refused as older) and the shard digests (the inventory, what is missing: satpipe.data.inventory).

Digests. Dataset stores record (feature `shard-sha256`), per split and array, the sha256 of
every shard's rows (the decoded values, little-endian, C order), computed while writing.
`ShardCheck` checks each shard as a reader reads it, in whatever order: that is how the
trainer's shuffled streaming reads and the saliency runner's per-shard tasks check the data in
flight with no extra pass. The whole-store `fingerprint` (a sequential sha256 over each split,
see `satpipe.data.fingerprint.Fingerprint`) stays the store's identity; the digests are
computed from the same rows by the same writer and recorded in the same `zarr.json`, so a copy
that mixes objects of two versions of a store fails them.

Features. A store lists what its writer guaranteed in `features`; a store that lacks one that
this version's writer records for its kind was written by an older satpipe, and every open
refuses it in one line that says how to rebuild it (`refuse_older_store`): the checks above
hold for every store that opens, with no branch for stores without them. The format number
stays 1 (the stores before these checks are format 1 too: the features tell them apart).

Nothing here imports the rest of satpipe.data; `satpipe.data.storage` uses it at every open.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from satpipe.core.errors import SatpipeError

# Recorded in a store's `satpipe` attributes, list `features`.
EVERY_CHUNK = "every-chunk"  # every chunk is stored, even one equal to the fill value
SHARD_SHA256 = "shard-sha256"  # `shards` holds the sha256 of every shard of every array
SHARD_SIZES = "shard-bytes"  # saliency stores: `<split>/bytes` holds each shard's object size
# What the writers of this version record (saliency stores have no digests: their shards are
# written by many workers at once, and attributes have a single writer).
DATASET_FEATURES = (EVERY_CHUNK, SHARD_SHA256)
SALIENCY_FEATURES = (EVERY_CHUNK, SHARD_SIZES)
# zarr's runtime setting that makes an array store chunks equal to the fill value.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


# What a store lacking each feature misses, as the refusal names it.
_LACKS = {
    EVERY_CHUNK: "all-zero shards not stored",
    SHARD_SHA256: "no shard digests",
    SHARD_SIZES: "no shard sizes",
}
REQUIRED_FEATURES = {"dataset": DATASET_FEATURES, "saliency": SALIENCY_FEATURES}


def refuse_older_store(uri: str, attrs: Mapping) -> None:
    """Refuse a store whose `satpipe` attrs lack a feature this version's writer records for
    its kind: one SatpipeError that names what it lacks and the command that rebuilds it.
    Every open calls it (satpipe.data.storage.read_attrs, and a saliency run resuming a store)."""
    required = REQUIRED_FEATURES.get(str(attrs.get("kind")), ())
    have = attrs.get("features") or ()
    lacking = [_LACKS[f] for f in required if f not in have]
    if lacking:
        raise SatpipeError(
            f"{uri}: written by an older satpipe ({', '.join(lacking)}); rebuild it: "
            f"{_rebuild_command(uri, attrs)}"
        )


def _rebuild_command(uri: str, attrs: Mapping) -> str:
    """The command that writes the store at `uri` again, from what its attrs recorded."""
    if attrs.get("kind") == "dataset":
        source = attrs.get("source") or {}
        fmt, src = source.get("format") or "FORMAT", source.get("path") or "SRC"
        return f"satpipe data import {fmt} {src} --out {uri} --overwrite"
    method = attrs.get("method") or "METHOD"
    data = (attrs.get("dataset") or {}).get("uri") or "DATASET"
    extra = " --model CHECKPOINT" if (attrs.get("source_model") or {}).get("arch") else ""
    if attrs.get("normalization") not in (None, "signed-maxabs"):  # the CLI's defaults
        extra += f" --normalization {attrs['normalization']}"
    if attrs.get("seed"):
        extra += f" --seed {attrs['seed']}"
    return f"satpipe saliency --method {method} --data {data}{extra} --out {uri} --overwrite"


def writable(array):
    """`array` set to store every chunk, even one equal to the fill value (zarr's default
    elides those, and a reader could not tell an elided chunk from a lost one). zarr keeps this
    setting per opened array, not in the metadata, so every write path opens its arrays
    through here."""
    return array.with_config(WRITE_EVERY_CHUNK)


# --------------------------------------------------------------------------------------------
# Digests


def shard_digest(values: np.ndarray) -> str:
    """Hex sha256 of an array's rows: its values in C order, little-endian."""
    values = np.asarray(values)
    values = values.astype(values.dtype.newbyteorder("<"), copy=False)  # no copy on x86/ARM
    return hashlib.sha256(np.ascontiguousarray(values).reshape(-1).view(np.uint8)).hexdigest()


def digest_blocks(values: np.ndarray, start: int, rows: int) -> list[tuple[int, str]]:
    """(shard index, digest) of each whole shard in `values`, the rows from `start` on (a
    multiple of `rows`); a trailing partial shard is digested too (the writer calls this with
    whole shards and, at the end, the tail)."""
    out = []
    for a in range(0, len(values), rows):
        out.append(((start + a) // rows, shard_digest(values[a : a + rows])))
    return out


class ShardCheck:
    """Checks the shards of one split against the digests recorded when it was written.

    `pending` holds the shards still to check (all of them at first; a caller that reads only
    some, a rank of a multi-process run say, narrows it). `verify` checks the full rows of
    shard k of one array and `done(k)` retires the shard; both are thread-safe, since reader
    threads share one check."""

    def __init__(
        self,
        uri: str,
        split: str,
        n_rows: int,
        rows_per_shard: int,
        digests: Mapping[str, Sequence[str]],
    ) -> None:
        self.uri, self.split = str(uri), split
        self.n_rows, self.rows = int(n_rows), int(rows_per_shard)
        self.digests = {name: list(d) for name, d in digests.items()}
        self.n_shards = -(-self.n_rows // self.rows) if self.n_rows else 0
        for name, d in self.digests.items():
            if len(d) != self.n_shards:
                raise SatpipeError(
                    f"{uri}: {split}/{name} records {len(d)} shard digests for "
                    f"{self.n_shards} shards (the attributes do not belong to these arrays)"
                )
        self.pending: set[int] = set(range(self.n_shards))
        self.checked = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.rows, min((k + 1) * self.rows, self.n_rows)

    def shards(self, start: int, stop: int) -> range:
        """Indices of the shards that rows [start, stop) touch."""
        if stop <= start:
            return range(0)
        return range(start // self.rows, (stop - 1) // self.rows + 1)

    def wants(self, k: int) -> bool:
        with self._lock:
            return k in self.pending

    def restrict(self, shards: Iterable[int]) -> None:
        """Check only these shards (the ones this reader is responsible for)."""
        with self._lock:
            self.pending &= set(shards)

    def verify(self, name: str, k: int, values: np.ndarray) -> None:
        """Refuse shard k of array `name` (all its rows) when it is not what was written."""
        recorded = self.digests.get(name)
        if recorded is None:
            return
        if shard_digest(values) != recorded[k]:
            a, b = self.bounds(k)
            raise SatpipeError(
                f"{self.uri}: {self.split}/{name} rows {a}:{b} (shard {k}) differ from the "
                "data this store was written with (sha256 recorded at write time); it was "
                "changed or mixed with another copy since; run `satpipe store verify` on it"
            )

    def done(self, k: int) -> None:
        with self._lock:
            if k in self.pending:
                self.pending.discard(k)
                self.checked += 1

    @property
    def finished(self) -> bool:
        with self._lock:
            return not self.pending
