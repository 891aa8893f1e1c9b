"""`store info` and `store verify`: describe and check any satpipe store with plain zarr.

`verify_store` reads every chunk of every array, so zarr checks each chunk's crc32c checksum;
a corrupted chunk is reported with the array and rows it belongs to. A shard with no stored
object reads back as the fill value (zeros) without any error, so verify also checks that
every shard exists (one listing per array, `satpipe.data.integrity`). `store_info` runs the
same inventory and never calls a store that lacks shards complete. Both refuse, in one line, a
store written by an older satpipe (`satpipe.data.integrity.refuse_older_store`).

Dataset stores: fingerprint recomputed and compared, every shard against its recorded sha256,
labels in [0, classes), masks in {0, 1}, boxes inside the image
with x0 < x1 and y0 < y1, `complete` set. Saliency stores: every shard
done, no NaN/Inf, values inside the normalisation's range ([-1, 1] signed-maxabs, [0, 1]
minmax, {-1, 0, 1} sign), `complete` set, and with `data` the dataset's fingerprint, rows and
image size match. Nothing here imports satpipe.pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.data.dataset_store import boxes_valid
from satpipe.data.fingerprint import Fingerprint
from satpipe.data.integrity import shard_digest
from satpipe.data.inventory import (
    EXAMPLES,
    dataset_inventory,
    inventory_problems,
    missing_shards,
    saliency_inventory,
    unreadable_metadata,
)
from satpipe.data.metadata import metadata_problems
from satpipe.data.quality_text import quality_lines
from satpipe.data.saliency_store import NORMALIZATION_RANGES, pairing_problems
from satpipe.data.storage import (
    SPLITS,
    open_group,
    read_attrs,
    shard_rows,
    shard_slices,
    storage_errors,
)

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
    broken = unreadable_metadata(group, uri)
    arrays = {} if broken else _arrays(group)
    missing = broken or _inventory(group, attrs)
    info: dict[str, Any] = {
        "uri": str(uri),
        "kind": attrs.get("kind"),
        "format": attrs.get("format"),
        # Complete only when the writer said so AND every shard is there (a partial copy of a
        # finished store carries its `complete: true`).
        "complete": bool(attrs.get("complete")) and not missing,
        "marked_complete": bool(attrs.get("complete")),
        "missing": missing,
        "features": list(attrs.get("features") or []),
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
            p.split("/")[0]: [_count_done(a), int(a.shape[0])]
            for p, a in arrays.items()
            if p.endswith("/done")
        }
    info["attrs"] = attrs
    return info


def _count_done(done) -> int:
    """Shards marked done; markers that cannot be read (a damaged copy) count as not done."""
    try:
        return int(np.count_nonzero(done[:] == 1))
    except (ValueError, RuntimeError, OSError):
        return sum(_count_one(done, k) for k in range(int(done.shape[0])))


def _count_one(done, k: int) -> int:
    try:
        return int(done[k] == 1)
    except (ValueError, RuntimeError, OSError):
        return 0


def _inventory(group, attrs: Mapping[str, Any]) -> list[str]:
    if attrs.get("kind") == "dataset":
        return dataset_inventory(group, attrs) if attrs.get("complete") else []
    if attrs.get("kind") == "saliency":
        return saliency_inventory(group, attrs)
    return []


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_info(info: Mapping[str, Any]) -> str:
    """`store_info` as lines for a person."""
    state = "complete" if info["complete"] else "INCOMPLETE"
    if info["missing"]:
        more = f" (+{len(info['missing']) - 1} more)" if len(info["missing"]) > 1 else ""
        state += f", though marked complete: {info['missing'][0]}{more}"
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
    lines.append(f"  features: {', '.join(info['features'])}")
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


def _check_missing(problems: list[str], path: str, arr, sizes=None) -> set[int]:
    """Shards of `arr` with no stored object, or (with the recorded `sizes`) one of another
    size than was written, as problem lines; returns the missing shards."""
    problems += inventory_problems({path: (arr, None, sizes)})
    return set(missing_shards(arr))


def _plan_dataset_split(
    g, split: str, problems: list[str], attrs: Mapping[str, Any], missing: dict[str, set]
) -> dict[str, Any] | None:
    """The arrays of one split that have the contract's dtype and shape; None if unusable.
    Shards with no stored object go into `missing` (array name -> shard indices)."""
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
    recorded = ((attrs.get("shards") or {}).get(split) or {}).get("sha256") or {}
    for name in recorded:
        if name not in g:
            problems.append(f"{split}/{name}: array missing (its zarr.json is not in the store)")
    if "labels" not in arrays:
        return None
    sizes = ((attrs.get("shards") or {}).get(split) or {}).get("bytes") or {}
    for name, arr in arrays.items():
        missing[name] = _check_missing(problems, f"{split}/{name}", arr, sizes.get(name))
    return arrays


class _Digests:
    """Shards whose rows differ from the sha256 recorded when the store was written."""

    def __init__(
        self, attrs: Mapping[str, Any], split: str, arrays: Mapping[str, Any], skip: Mapping
    ) -> None:
        recorded = (attrs.get("shards") or {}).get(split)
        self.split, self.recorded = split, {}
        self.rows = int((recorded or {}).get("rows") or 0)
        for name, digests in ((recorded or {}).get("sha256") or {}).items():
            if name in arrays:
                self.recorded[name] = list(digests)
        self.bad: dict[str, list[int]] = {name: [] for name in self.recorded}
        self.skip = skip

    def add(self, data: Mapping[str, np.ndarray | None], block: slice) -> None:
        for name, digests in self.recorded.items():
            k = block.start // self.rows
            values = data.get(name)
            if values is None or k in self.skip.get(name, ()):
                continue  # unreadable or missing: reported already
            if k >= len(digests) or shard_digest(values) != digests[k]:
                self.bad[name].append(k)

    def report(self, problems: list[str], n: int) -> None:
        for name, bad in self.bad.items():
            if bad:
                shown = ", ".join(
                    f"{k} (rows {k * self.rows}:{min((k + 1) * self.rows, n)})"
                    for k in bad[:EXAMPLES]
                )
                more = ", ..." if len(bad) > EXAMPLES else ""
                total = -(-n // self.rows)
                problems.append(
                    f"{self.split}/{name}: {len(bad)} of {total} shards differ from the sha256 "
                    f"recorded when the store was written: {shown}{more}"
                )


def _verify_dataset(group, attrs: dict, problems: list[str]) -> None:
    classes = list(attrs.get("classes") or [])
    if not classes:
        problems.append("attrs: no classes")
    splits = [s for s in SPLITS if s in group]
    if not splits:
        problems.append("no train or test split")
    for split in attrs.get("shards") or ():
        if split not in group:
            problems.append(f"{split}: split group missing (its zarr.json is not in the store)")
    plans, missing = {}, {}
    for split in splits:
        missing[split] = {}
        arrays = _plan_dataset_split(group[split], split, problems, attrs, missing[split])
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
            # A missing shard is reported once, not again as a digest mismatch.
            digests = _Digests(attrs, split, arrays, missing[split])
            for block in blocks[split]:
                data = {k: reader.read(f"{split}/{k}", a, block) for k, a in arrays.items()}
                digests.add(data, block)
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
                    boxes.add(~boxes_valid(data["boxes"], w, h), block.start)
            for findings in (labels, masks, boxes):
                findings.report(problems)
            digests.report(problems, int(arrays["images"].shape[0]))

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
    sizes = None
    if "bytes" not in g:
        problems.append(f"{split}/bytes: array missing (its zarr.json is not in the store)")
    else:
        sizes = reader.read(f"{split}/bytes", g["bytes"], slice(0, n_shards))
    _check_missing(problems, f"{split}/saliency", maps, None if sizes is None else sizes.tolist())
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
    images = {s: dgroup[s]["images"] for s in plans if s in dgroup and "images" in dgroup[s]}
    problems += pairing_problems(
        dataset.get("fingerprint"), dattrs.get("fingerprint"), data, plans, images
    )


def verify_store(
    uri: str,
    data: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Check a dataset or saliency store; returns one line per problem (empty: all good).

    Reads every chunk (crc32c checked). `data`: a dataset store the saliency store must
    belong to (saliency stores only). A store that cannot be opened, or is not a satpipe
    store, is a SatpipeError rather than a problem list. Metadata that breaks the contract
    (satpipe.data.metadata) is the whole list: nothing else is read from such a store.
    """
    with storage_errors(uri):
        problems = metadata_problems(uri, storage_options)
    if problems:
        return problems
    group = open_group(uri, "r", storage_options)
    attrs = read_attrs(group, uri)
    kind = attrs.get("kind")
    problems = unreadable_metadata(group, uri)
    if problems:
        return problems  # nothing below can be read safely
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
