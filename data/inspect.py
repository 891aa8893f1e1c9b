"""`store info` and `store verify`: describe and check any satpipe store with plain zarr.

`verify_store` reads every chunk of every array, so zarr checks each chunk's crc32c checksum;
a corrupted chunk is reported with the array and rows it belongs to. A shard with no stored
object reads back as the fill value (zeros) without any error, so verify also checks that
every shard of the images, masks, boxes and saliency arrays exists. Labels are not checked
that way: an all-class-0 shard is legitimately elided by zarr, and the fingerprint covers
labels anyway.

Dataset stores: fingerprint recomputed and compared, labels in [0, classes), masks in {0, 1},
boxes inside the image with x0 < x1 and y0 < y1, `complete` set. Saliency stores: every shard
done, no NaN/Inf, values inside the normalisation's range ([-1, 1] signed-maxabs, [0, 1]
minmax, {-1, 0, 1} sign), `complete` set, and with `data` the dataset's fingerprint, rows and
image size match. Nothing here imports satpipe.pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.core.sync import sync

from satpipe.data.quality_text import quality_lines
from satpipe.data.store import (
    NORMALIZATION_RANGES,
    SPLITS,
    Fingerprint,
    open_group,
    read_attrs,
    shard_rows,
    shard_slices,
)
from satpipe.errors import SatpipeError
from satpipe.progress import progress

# At most this many example rows are named in one problem line.
EXAMPLES = 3


# --------------------------------------------------------------------------------------------
# info


def _array_info(arr) -> dict[str, Any]:
    rows = shard_rows(arr)
    return {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "n_shards": len(shard_slices(int(arr.shape[0]), rows)) if arr.ndim else 1,
        "compressors": [type(c).__name__ for c in arr.compressors],
    }


def _arrays(group) -> dict[str, Any]:
    """{"split/name": zarr array} for every array under the split groups, in a stable order."""
    found = {}
    for split in SPLITS:
        if split in group:
            sub = group[split]
            for name in sorted(sub.array_keys()):
                found[f"{split}/{name}"] = sub[name]
    return found


def store_info(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe a satpipe store: kind, complete, arrays (shape, dtype, chunks, shards,
    compressors), classes (datasets), done shards per split (saliency) and the provenance
    attributes as stored. JSON-serialisable."""
    group = open_group(uri, "r", storage_options)
    attrs = read_attrs(group, uri)
    arrays = _arrays(group)
    info: dict[str, Any] = {
        "uri": str(uri),
        "kind": attrs.get("kind"),
        "format": attrs.get("format"),
        "complete": bool(attrs.get("complete")),
        "arrays": {path: _array_info(arr) for path, arr in arrays.items()},
    }
    if attrs.get("kind") == "dataset":
        info["name"] = attrs.get("name")
        info["classes"] = list(attrs.get("classes") or [])
        info["num_classes"] = len(info["classes"])
        info["fingerprint"] = attrs.get("fingerprint")
        info["rows"] = {
            p.split("/")[0]: int(a.shape[0]) for p, a in arrays.items() if p.endswith("/images")
        }
    elif attrs.get("kind") == "saliency":
        info["method"] = attrs.get("method")
        info["normalization"] = attrs.get("normalization")
        info["dataset"] = attrs.get("dataset")
        info["rows"] = {
            p.split("/")[0]: int(a.shape[0]) for p, a in arrays.items() if p.endswith("/saliency")
        }
        info["done"] = {
            p.split("/")[0]: [int(np.count_nonzero(a[:])), int(a.shape[0])]
            for p, a in arrays.items()
            if p.endswith("/done")
        }
    info["attrs"] = attrs
    return info


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_info(info: Mapping[str, Any]) -> str:
    """`store_info` as lines for a person."""
    state = "complete" if info["complete"] else "INCOMPLETE"
    attrs = info["attrs"]
    lines = [f"{info['uri']}: {info['kind']} store (format {info['format']}), {state}"]
    if info["kind"] == "dataset":
        lines.append(f"  name: {info['name']}")
        classes = info["classes"]
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        lines.append(f"  classes ({len(classes)}): {shown}")
        lines.append(f"  rows: {', '.join(f'{k} {v}' for k, v in info['rows'].items())}")
        lines.append(f"  fingerprint: {info['fingerprint']}")
        lines.append(f"  source: {_short(attrs.get('source', {}))}")
    elif info["kind"] == "saliency":
        lines.append(f"  method: {info['method']} {_short(attrs.get('params', {}))}")
        lines.append(f"  normalization: {info['normalization']}, seed {attrs.get('seed')}")
        lines.append(f"  source model: {_short(attrs.get('source_model', {}))}")
        lines.append(f"  dataset: {_short(info['dataset'] or {})}")
        done = ", ".join(f"{k} {d}/{n}" for k, (d, n) in info["done"].items())
        lines.append(f"  shards done: {done}")
        lines += quality_lines(attrs.get("quality"))
    lines.append(f"  created: {attrs.get('created')}, satpipe {attrs.get('satpipe_version')}")
    width = max((len(p) for p in info["arrays"]), default=0)
    for path, a in info["arrays"].items():
        shards = f" shards {tuple(a['shards'])}" if a["shards"] else ""
        lines.append(
            f"  {path:<{width}}  {a['dtype']:<7} {tuple(a['shape'])} chunks {tuple(a['chunks'])}"
            f"{shards} [{'+'.join(a['compressors'])}]"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# verify


def missing_shards(arr) -> list[int]:
    """Indices (along rows) of the shards of `arr` that have no stored object."""
    rows = shard_rows(arr)
    store, base = arr.store_path.store, arr.store_path.path
    zeros = (0,) * (arr.ndim - 1)
    missing = []
    for k in range(len(shard_slices(int(arr.shape[0]), rows))):
        key = arr.metadata.encode_chunk_key((k, *zeros))
        if not sync(store.exists(f"{base}/{key}" if base else key)):
            missing.append(k)
    return missing


def _examples(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:EXAMPLES])
    return shown + (", ..." if len(rows) > EXAMPLES else "")


class _Findings:
    """Rows that fail one check, gathered block by block and reported as one line."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self.rows: list[np.ndarray] = []

    def add(self, bad: np.ndarray, start: int) -> None:
        self.rows.append(np.flatnonzero(bad) + start)

    def report(self, problems: list[str], noun: str = "rows") -> None:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        if len(rows):
            problems.append(f"{self.path}: {len(rows)} {noun} {self.what} (rows {_examples(rows)})")


class _Reader:
    """Reads arrays block by block; an unreadable block becomes a problem, not a crash."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.failed: set[str] = set()

    def read(self, path: str, arr, block: slice) -> np.ndarray | None:
        try:
            return np.asarray(arr[block])
        except SatpipeError:
            raise  # the storage itself is unreachable: not a property of the store
        except Exception as exc:  # zarr raises ValueError for checksums, others for garbage
            msg = " ".join(str(exc).split()) or type(exc).__name__
            # Blocks are whole shards, so the object to look at (or delete and recompute) is
            # the shard's key under the array: c/<shard>/0/0/...
            key = "c/" + "/".join([str(block.start // shard_rows(arr))] + ["0"] * (arr.ndim - 1))
            self.problems.append(
                f"{path}: rows {block.start}:{block.stop} unreadable, object {path}/{key} "
                f"({msg[:200]})"
            )
            self.failed.add(path)
            return None


def _expect(problems: list[str], path: str, arr, dtype: str, shape: tuple) -> bool:
    ok = str(arr.dtype) == dtype and tuple(arr.shape) == tuple(shape)
    if not ok:
        problems.append(
            f"{path}: expected {dtype} {tuple(shape)}, found {arr.dtype} {tuple(arr.shape)}"
        )
    return ok


def _check_missing(problems: list[str], path: str, arr) -> None:
    missing = missing_shards(arr)
    if missing:
        rows, n = shard_rows(arr), int(arr.shape[0])
        shown = ", ".join(
            f"{k} (rows {k * rows}:{min((k + 1) * rows, n)})" for k in missing[:EXAMPLES]
        )
        more = ", ..." if len(missing) > EXAMPLES else ""
        problems.append(
            f"{path}: {len(missing)} of {len(shard_slices(n, rows))} shards have no stored data "
            f"(they read as zeros): {shown}{more}"
        )


def _plan_dataset_split(g, split: str, problems: list[str]) -> dict[str, Any] | None:
    """The arrays of one split that have the contract's dtype and shape; None if unusable."""
    if "images" not in g or "labels" not in g:
        problems.append(f"{split}: needs images and labels arrays (has {sorted(g.array_keys())})")
        return None
    images = g["images"]
    if images.ndim != 4 or str(images.dtype) != "uint8":
        problems.append(
            f"{split}/images: expected uint8 (N, H, W, C), found {images.dtype} {images.shape}"
        )
        return None
    n, h, w = (int(v) for v in images.shape[:3])
    arrays = {"images": images}
    wanted = {"labels": ("int64", (n,)), "masks": ("uint8", (n, h, w)), "boxes": ("int32", (n, 4))}
    for name, (dtype, shape) in wanted.items():
        if name in g and _expect(problems, f"{split}/{name}", g[name], dtype, shape):
            arrays[name] = g[name]
    if "labels" not in arrays:
        return None
    for name, arr in arrays.items():
        if name != "labels":  # an all-zero labels shard is legitimately not stored
            _check_missing(problems, f"{split}/{name}", arr)
    return arrays


def _verify_dataset(group, attrs: dict, problems: list[str]) -> None:
    classes = list(attrs.get("classes") or [])
    if not classes:
        problems.append("attrs: no classes")
    splits = [s for s in SPLITS if s in group]
    if not splits:
        problems.append("no train or test split")
    plans = {}
    for split in splits:
        arrays = _plan_dataset_split(group[split], split, problems)
        if arrays is not None:
            plans[split] = arrays
    fingerprint = Fingerprint()
    reader = _Reader(problems)
    blocks = {
        s: shard_slices(int(a["images"].shape[0]), shard_rows(a["images"]))
        for s, a in plans.items()
    }
    with progress("verify", sum(len(b) for b in blocks.values())) as advance:
        for split, arrays in plans.items():
            h, w = (int(v) for v in arrays["images"].shape[1:3])
            labels = _Findings(f"{split}/labels", f"outside [0, {len(classes)})")
            masks = _Findings(f"{split}/masks", "not in {0, 1}")
            boxes = _Findings(f"{split}/boxes", f"outside the {w}x{h} image or empty")
            for block in blocks[split]:
                data = {k: reader.read(f"{split}/{k}", a, block) for k, a in arrays.items()}
                advance()
                if data["images"] is not None and data["labels"] is not None:
                    fingerprint.update(split, data["images"], data["labels"])
                if data["labels"] is not None:
                    lab = data["labels"]
                    labels.add((lab < 0) | (lab >= len(classes)), block.start)
                if data.get("masks") is not None:
                    m = data["masks"]
                    masks.add((m > 1).reshape(len(m), -1).any(1), block.start)
                if data.get("boxes") is not None:
                    b = data["boxes"]
                    ok = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
                    ok &= (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])
                    boxes.add(~ok, block.start)
            for findings in (labels, masks, boxes):
                findings.report(problems)

    stored = attrs.get("fingerprint")
    unusable = [s for s in splits if s not in plans]
    unread = sorted(p for p in reader.failed if p.endswith(("/images", "/labels")))
    if not stored:
        problems.append("attrs: no fingerprint recorded")
    elif unusable or unread:
        problems.append(f"fingerprint not checked: {', '.join(unusable + unread)} unreadable")
    elif fingerprint.hexdigest() != stored:
        problems.append(
            f"fingerprint mismatch: recorded {stored[:23]}..., the data hashes to "
            f"{fingerprint.hexdigest()[:23]}... (images or labels changed)"
        )


def _plan_saliency_split(g, split: str, reader: _Reader, problems: list[str]):
    """The saliency array of one split after the done-marker checks; None if unusable."""
    if "saliency" not in g or "done" not in g:
        problems.append(f"{split}: needs saliency and done arrays (has {sorted(g.array_keys())})")
        return None
    maps, done_arr = g["saliency"], g["done"]
    if maps.ndim != 4 or str(maps.dtype) != "float16":
        problems.append(
            f"{split}/saliency: expected float16 (N, H, W, Cs), found {maps.dtype} {maps.shape}"
        )
        return None
    n_shards = len(shard_slices(int(maps.shape[0]), shard_rows(maps)))
    if _expect(problems, f"{split}/done", done_arr, "uint8", (n_shards,)):
        done = reader.read(f"{split}/done", done_arr, slice(0, n_shards))
        if done is not None and not (done == 1).all():
            left = np.flatnonzero(done != 1)
            problems.append(
                f"{split}/done: {len(left)} of {n_shards} shards not done "
                f"(shards {_examples(left)})"
            )
    _check_missing(problems, f"{split}/saliency", maps)
    return maps


def _verify_saliency(group, attrs: dict, problems: list[str]) -> dict[str, Any]:
    """Checks of a saliency store on its own; returns {split: saliency array} for pairing."""
    norm = attrs.get("normalization")
    if norm not in NORMALIZATION_RANGES:
        valid = ", ".join(NORMALIZATION_RANGES)
        problems.append(f"attrs: unknown normalization {norm!r} (expected one of {valid})")
    lo, hi = NORMALIZATION_RANGES.get(norm, (-1.0, 1.0))
    if not (attrs.get("dataset") or {}).get("fingerprint"):
        problems.append("attrs: no dataset fingerprint recorded")
    if "train" not in group:
        problems.append("no train split")
    reader = _Reader(problems)
    plans = {}
    for split in (s for s in SPLITS if s in group):
        maps = _plan_saliency_split(group[split], split, reader, problems)
        if maps is not None:
            plans[split] = maps
    blocks = {s: shard_slices(int(m.shape[0]), shard_rows(m)) for s, m in plans.items()}
    allowed = f"[{lo:g}, {hi:g}]" + (" or not in {-1, 0, 1}" if norm == "sign" else "")
    with progress("verify", sum(len(b) for b in blocks.values())) as advance:
        for split, maps in plans.items():
            nonfinite = _Findings(f"{split}/saliency", "with NaN or Inf")
            outside = _Findings(f"{split}/saliency", f"with values outside {norm} range {allowed}")
            for block in blocks[split]:
                s = reader.read(f"{split}/saliency", maps, block)
                advance()
                if s is None:
                    continue
                s = s.astype(np.float32).reshape(len(s), -1)
                finite = np.isfinite(s)
                nonfinite.add(~finite.all(1), block.start)
                s = np.where(finite, s, 0.0)
                off = (s < lo) | (s > hi)
                if norm == "sign":
                    off |= (s != -1) & (s != 0) & (s != 1)
                outside.add(off.any(1), block.start)
            nonfinite.report(problems, "maps")
            outside.report(problems, "maps")
    return plans


def _check_pairing(
    plans: Mapping[str, Any], dataset: dict, data: str, storage_options, problems: list[str]
) -> None:
    """The saliency store belongs to dataset store `data`: fingerprint, rows, image size."""
    dgroup = open_group(data, "r", storage_options)
    dattrs = read_attrs(dgroup, data)
    if dattrs.get("kind") != "dataset":
        raise SatpipeError(f"{data}: is a {dattrs.get('kind')} store, not a dataset store")
    if not dattrs.get("complete"):
        problems.append(f"{data}: dataset store is incomplete")
    want = dataset.get("fingerprint")
    if want != dattrs.get("fingerprint"):
        problems.append(
            f"dataset fingerprint mismatch: made for {str(want)[:23]}..., "
            f"{data} is {str(dattrs.get('fingerprint'))[:23]}..."
        )
    for split, maps in plans.items():
        if split not in dgroup or "images" not in dgroup[split]:
            problems.append(f"{split}/saliency: {data} has no {split} split")
            continue
        images = dgroup[split]["images"]
        if maps.shape[:3] != images.shape[:3] or maps.shape[3] not in (1, images.shape[3]):
            problems.append(
                f"{split}/saliency: shape {tuple(maps.shape)} does not match images "
                f"{tuple(images.shape)} of {data}"
            )


def verify_store(
    uri: str,
    data: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Check a dataset or saliency store; returns one line per problem (empty: all good).

    Reads every chunk (crc32c checked). `data`: a dataset store the saliency store must
    belong to (saliency stores only). A store that cannot be opened, or is not a satpipe
    store, is a SatpipeError rather than a problem list.
    """
    group = open_group(uri, "r", storage_options)
    attrs = read_attrs(group, uri)
    kind = attrs.get("kind")
    problems: list[str] = []
    if kind == "dataset":
        if data is not None:
            raise SatpipeError(f"{uri}: --data applies to saliency stores; this is a dataset store")
        _verify_dataset(group, attrs, problems)
    elif kind == "saliency":
        plans = _verify_saliency(group, attrs, problems)
        if data is not None:
            _check_pairing(plans, attrs.get("dataset") or {}, str(data), storage_options, problems)
    else:
        raise SatpipeError(f"{uri}: unknown store kind {kind!r} (expected dataset or saliency)")
    if not attrs.get("complete"):
        problems.append("not marked complete (its writer did not finish)")
    return problems
