"""A store's metadata checked before it is trusted: milliseconds, however many rows it claims.

zarr believes every `zarr.json`: a shape of 10^9 rows, a chunk of 0 rows (a division by
zero deep in zarr), a string for a shape, a float64 labels array, JSON nested 200 000 deep
(Python's parser recurses). `check_metadata(uri)` reads the few metadata objects a satpipe
store has (the root, each split group, each array of the contract: a handful of small reads,
no listing, no chunk) and checks them against the store contract (DESIGN.md, "Stores") and
against each other before zarr parses anything:

- JSON nested at most MAX_DEPTH deep (counted without recursion);
- every array: a node of zarr format 3, its shape a list of non-negative integers of the
  contract's rank, its data type the documented one, a regular chunk grid of positive
  integers of that rank, and an inner chunk (sharding codec) of positive integers dividing
  the shard;
- the arrays of a split agree: equal row counts, masks of the images' height and width,
  boxes of 4 numbers;
- dataset stores: the shard digests recorded at write time cover exactly the rows the arrays
  claim, at the shard rows the arrays have;
- saliency stores: the recorded split shapes are the arrays' shapes, and the done/bytes
  markers have one entry per shard.

A JSON file that does not parse is left to the inventory (which names it as half-written).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError

MAX_DEPTH = 64
META = "zarr.json"
# What a metadata object may weigh before it is not even read (shard digests make the root of
# a big dataset store a few MB).
MAX_META_BYTES = 64 << 20
SPLITS = ("train", "test")
# The store contract: array -> (data type, rank, required); rank includes the row axis.
CONTRACT: dict[str, dict[str, tuple[str, int, bool]]] = {
    "dataset": {
        "images": ("uint8", 4, True),
        "labels": ("int64", 1, True),
        "masks": ("uint8", 3, False),
        "boxes": ("int32", 2, False),
    },
    "saliency": {
        "saliency": ("float16", 4, True),
        "done": ("uint8", 1, True),
        "bytes": ("int64", 1, False),
    },
}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """How deep the brackets of a JSON text nest (strings skipped), without recursion."""
    bare = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    if bare.size == 0:
        return 0
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def bounded_json(raw: bytes | str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON nested at most `max_depth` deep; deeper is a one-line SatpipeError (the
    standard parser would recurse until RecursionError). Invalid JSON raises ValueError."""
    raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    depth = json_depth(raw)
    if depth > max_depth:
        raise SatpipeError(
            f"{where}: JSON nested {depth} deep (at most {max_depth} is read); not a store's "
            "metadata"
        )
    return json.loads(raw)


def _is_count(value: Any, positive: bool) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (value > 0 if positive else value >= 0)


def _counts(value: Any, rank: int, positive: bool) -> bool:
    return (
        isinstance(value, list)
        and len(value) == rank
        and all(_is_count(v, positive) for v in value)
    )


class _Reader:
    """Reads `path/zarr.json` objects of one store: parsed, None when absent or unparseable."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None) -> None:
        from satpipe.data.outputs import _fs

        self.uri = str(uri)
        self.fs, root = _fs(self.uri, storage_options)
        self.root = root.rstrip("/")

    def read(self, path: str) -> Any:
        key = f"{self.root}/{path}/{META}" if path else f"{self.root}/{META}"
        try:
            if self.fs.size(key) > MAX_META_BYTES:
                raise SatpipeError(f"{self.uri}: {path or '.'}/{META} is larger than 64 MB")
            raw = self.fs.cat_file(key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            return bounded_json(raw, f"{self.uri}: {path + '/' if path else ''}{META}")
        except ValueError:  # half-written: the inventory names it
            return None


def _array_problem(meta: Any, path: str, dtype: str, rank: int) -> str | None:
    """Why an array's zarr.json breaks the contract, or None. Sets nothing."""
    if not isinstance(meta, dict) or meta.get("node_type") != "array":
        return f"{path}: is not an array"
    if meta.get("zarr_format") != 3:
        return f"{path}: zarr format {meta.get('zarr_format')!r}, expected 3"
    shape = meta.get("shape")
    if not _counts(shape, rank, positive=False):
        return f"{path}: shape {_show(shape)} is not {rank} non-negative integers"
    if meta.get("data_type") != dtype:
        return f"{path}: data type {_show(meta.get('data_type'))}, the contract says {dtype}"
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    outer = config.get("chunk_shape") if isinstance(config, dict) else None
    if (
        not isinstance(grid, dict)
        or grid.get("name") != "regular"
        or not _counts(outer, rank, True)
    ):
        return f"{path}: chunk shape {_show(outer)} is not {rank} positive integers"
    codecs = meta.get("codecs")
    if not isinstance(codecs, list):
        return f"{path}: codecs {_show(codecs)} is not a list"
    for codec in codecs:
        if isinstance(codec, dict) and codec.get("name") == "sharding_indexed":
            inner_config = codec.get("configuration")
            inner = inner_config.get("chunk_shape") if isinstance(inner_config, dict) else None
            if not _counts(inner, rank, True):
                return f"{path}: inner chunk shape {_show(inner)} is not {rank} positive integers"
            if any(o % i for o, i in zip(outer, inner, strict=True)):
                return f"{path}: inner chunk shape {inner} does not divide the shard {outer}"
    return None


def shard_rows_of(meta: Mapping[str, Any]) -> int:
    """Rows per shard (the outer chunk) of a checked array's metadata."""
    return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def metadata_problems(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """One line per way the store's metadata breaks the contract (empty: none found). A store
    that is not (yet) a satpipe store gets only the generic checks of what is there."""
    reader = _Reader(uri, storage_options)
    root = reader.read("")
    if root is None:
        return []  # no store, or a half-written root: open_group says so
    if not isinstance(root, dict):
        return [f"{META}: is not a JSON object"]
    attrs = (root.get("attributes") or {}) if isinstance(root.get("attributes"), dict) else {}
    attrs = attrs.get("satpipe")
    kind = attrs.get("kind") if isinstance(attrs, dict) else None
    if kind not in CONTRACT:
        return []  # not a satpipe store: read_attrs refuses it in its own words
    problems: list[str] = []
    for split in SPLITS:
        if reader.read(split) is None:
            continue
        metas = {}
        for name, (dtype, rank, _required) in CONTRACT[kind].items():
            meta = reader.read(f"{split}/{name}")
            if meta is None:
                continue  # missing arrays are the inventory's to name
            problem = _array_problem(meta, f"{split}/{name}", dtype, rank)
            if problem:
                problems.append(problem)
            else:
                metas[name] = meta
        if problems:
            continue
        check = _dataset_split if kind == "dataset" else _saliency_split
        problems += check(split, metas, attrs)
    return problems


def _dataset_split(split: str, metas: dict[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    problems = []
    rows = {name: meta["shape"][0] for name, meta in metas.items()}
    if len(set(rows.values())) > 1:
        shown = ", ".join(f"{name} {n}" for name, n in rows.items())
        problems.append(f"{split}: arrays disagree on the row count ({shown})")
    images = metas.get("images")
    if (
        images is not None
        and "masks" in metas
        and metas["masks"]["shape"][1:] != images["shape"][1:3]
    ):
        problems.append(
            f"{split}/masks: shape {metas['masks']['shape']} does not match images "
            f"{images['shape']}"
        )
    if "boxes" in metas and metas["boxes"]["shape"][1] != 4:
        problems.append(f"{split}/boxes: shape {metas['boxes']['shape']}, expected (N, 4)")
    shards = (attrs.get("shards") or {}) if isinstance(attrs.get("shards"), dict) else {}
    recorded = shards.get(split)
    if images is None or not isinstance(recorded, dict) or problems:
        return problems
    n, per = images["shape"][0], recorded.get("rows")
    if not _is_count(per, positive=True):
        return [f"{split}: recorded shard rows {_show(per)} is not a positive integer"]
    for name, meta in metas.items():
        if shard_rows_of(meta) != per:
            problems.append(
                f"{split}/{name}: shards of {shard_rows_of(meta)} rows, the store recorded {per}"
            )
    expected = -(-n // per)
    digests = recorded.get("sha256") if isinstance(recorded.get("sha256"), dict) else {}
    for name, found in digests.items():
        count = len(found) if isinstance(found, list) else None
        if count != expected:
            problems.append(
                f"{split}/{name}: claims {n} rows ({expected} shards of {per}), but the store "
                f"recorded {count} shard digests when it was written"
            )
    return problems


def _saliency_split(split: str, metas: dict[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    maps = metas.get("saliency")
    if maps is None:
        return []
    problems = []
    recorded = (attrs.get("splits") or {}) if isinstance(attrs.get("splits"), dict) else {}
    if split in recorded and recorded[split] != maps["shape"]:
        problems.append(
            f"{split}/saliency: shape {maps['shape']}, the store recorded {_show(recorded[split])}"
        )
    if maps["shape"][3] < 1:
        problems.append(f"{split}/saliency: shape {maps['shape']} has no channel")
    shards = -(-maps["shape"][0] // shard_rows_of(maps))
    for name in ("done", "bytes"):
        meta = metas.get(name)
        if meta is not None and meta["shape"][0] != shards:
            problems.append(
                f"{split}/{name}: {meta['shape'][0]} entries, but {split}/saliency claims "
                f"{maps['shape'][0]} rows in {shards} shards"
            )
    return problems


def check_metadata(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse, in one line naming the store, a store whose metadata breaks the contract."""
    problems = metadata_problems(uri, storage_options)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SatpipeError(f"{uri}: metadata breaks the store contract: {problems[0]}{more}")
