"""What a shelf of stores holds: one record per store under a prefix (local folder or
`s3://bucket/prefix`), read from the stores' metadata alone (`satpipe store ls`).

    for row in list_stores("s3://bucket/stores", storage_options):
        row["name"], row["kind"], row["method"], row["rows"], row["complete"], row["quality"]

A store is a folder directly under the prefix (or the prefix itself) whose root `zarr.json`
carries satpipe's attributes. Only metadata is read: the root `zarr.json` and each split's
main array's `zarr.json`, a few small objects per store, fetched together, never a chunk.
`complete` is the flag its writer set (`satpipe store verify` checks the data behind it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.data.storage import ATTR, SPLITS, storage_errors, url_to_fs
from satpipe.data.zarr_internals import strip_protocol

ROOT_META = "zarr.json"
# The score a one-line listing shows, the first a store has.
HEADLINE_SCORES = ("pointing-game", "relevance-mass", "deletion", "insertion", "sign-agreement")


def _main_array(kind: str | None) -> str:
    return "saliency" if kind == "saliency" else "images"


def _headline(quality: Mapping[str, Any] | None) -> dict[str, Any] | None:
    scores = (quality or {}).get("scores") or {}
    for name in (*HEADLINE_SCORES, *scores):
        s = scores.get(name) or {}
        if s.get("value") is not None:
            return {"score": name, "value": s["value"], "low": s.get("low"),
                    "high": s.get("high"), "chance": s.get("chance")}  # fmt: skip
    return None


def _record(uri: str, name: str, attrs: Mapping[str, Any], shapes: Mapping[str, list]) -> dict:
    kind = attrs.get("kind")
    source = attrs.get("source_model") or {}
    first = next(iter(shapes.values()), None)
    return {
        "name": name,
        "uri": uri,
        "kind": kind,
        "method": attrs.get("method") if kind == "saliency" else None,
        "params": attrs.get("params") if kind == "saliency" else None,
        "normalization": attrs.get("normalization"),
        "source_model": source.get("arch"),
        "source_variant": source.get("variant"),
        "dataset": attrs.get("name") if kind == "dataset" else (attrs.get("dataset") or {}),
        "rows": {split: int(shape[0]) for split, shape in shapes.items()},
        "map_shape": list(first[1:]) if first else None,
        "complete": bool(attrs.get("complete")),
        "quality": _headline(attrs.get("quality")),
        "attrs": dict(attrs),
    }


def _read_json(fs, paths: list[str]) -> dict[str, Any]:
    """{path: parsed JSON} of the paths that exist and parse (one batched read)."""
    if not paths:
        return {}
    found = fs.cat(paths, on_error="omit")
    if not isinstance(found, dict):
        found = {paths[0]: found}
    out = {}
    for path, raw in found.items():
        try:
            out[strip_protocol(fs, path)] = json.loads(raw)
        except ValueError:
            continue  # a half-written zarr.json: not listed as a store
    return out


def _shapes(fs, roots: dict[str, Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """{root: {split: shape of its main array}} for every store root (one batched read)."""
    wanted = {
        f"{root}/{split}/{_main_array(attrs.get('kind'))}/{ROOT_META}": (root, split)
        for root, attrs in roots.items()
        for split in SPLITS
    }
    metas = _read_json(fs, list(wanted))
    out: dict[str, dict[str, list]] = {root: {} for root in roots}
    for path, (root, split) in wanted.items():
        meta = metas.get(strip_protocol(fs, path))
        if meta and "shape" in meta:
            out[root][split] = list(meta["shape"])
    return out


def _satpipe_attrs(meta: Any) -> dict[str, Any] | None:
    attrs = ((meta or {}).get("attributes") or {}).get(ATTR) if isinstance(meta, dict) else None
    return dict(attrs) if isinstance(attrs, dict) and attrs.get("kind") else None


def _uri_of(prefix: str, root: str, base: str) -> str:
    """The URI a user would type for `root`, in the prefix's own spelling."""
    rel = root[len(base) :].lstrip("/")
    return prefix.rstrip("/") + (f"/{rel}" if rel else "")


def list_stores(prefix: str, storage_options: Mapping[str, Any] | None = None) -> list[dict]:
    """One record per satpipe store at `prefix` or directly under it, sorted by name: name,
    uri, kind, method, params, normalization, source_model (arch), source_variant, dataset,
    rows {split: N}, map_shape, complete (the writer's flag), quality (the headline score:
    {score, value, low, high, chance} or None) and the store's attrs."""
    with storage_errors(prefix):
        fs, base = url_to_fs(prefix, storage_options)
        base = base.rstrip("/")
        if not fs.exists(base):
            raise SatpipeError(f"{prefix}: no such folder or prefix")
        candidates = [f"{base}/{ROOT_META}"] + [
            p for p in fs.glob(f"{base}/*/{ROOT_META}") if p.rstrip("/") != f"{base}/{ROOT_META}"
        ]
        metas = _read_json(fs, candidates)
        roots = {}
        for path in candidates:
            attrs = _satpipe_attrs(metas.get(strip_protocol(fs, path)))
            if attrs is not None:
                roots[strip_protocol(fs, path).rsplit("/", 1)[0]] = attrs
        shapes = _shapes(fs, roots)
    records = [
        _record(
            _uri_of(prefix, root, strip_protocol(fs, base)),
            root.rsplit("/", 1)[-1],
            attrs,
            shapes[root],
        )  # fmt: skip
        for root, attrs in roots.items()
    ]
    return sorted(records, key=lambda r: r["name"])


def describe_store(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict:
    """`list_stores`' record of the one store at `uri`, plus `bytes`: the size of all its
    objects (one listing)."""
    with storage_errors(uri):
        fs, root = url_to_fs(uri, storage_options)
        root = strip_protocol(fs, root.rstrip("/"))
        attrs = _satpipe_attrs(_read_json(fs, [f"{root}/{ROOT_META}"]).get(f"{root}/{ROOT_META}"))
        if attrs is None:
            raise SatpipeError(
                f"{uri}: not a satpipe store (no root zarr.json with its attributes)"
            )
        record = _record(str(uri), root.rsplit("/", 1)[-1], attrs, _shapes(fs, {root: attrs})[root])
        record["bytes"] = int(fs.du(root, total=True))
    return record


def _quality_text(q: Mapping[str, Any] | None) -> str:
    if not q:
        return "-"
    chance = "" if q.get("chance") is None else f" (chance {q['chance']:.2f})"
    return f"{q['score']} {q['value']:.2f}{chance}"


def _source_text(r: Mapping[str, Any]) -> str:
    variant = f" ({r['source_variant']})" if r["source_variant"] else ""
    return (r["source_model"] or "-") + variant


def format_listing(records: list[Mapping[str, Any]]) -> str:
    """One aligned line per store: name, kind, method, source model, rows, complete, quality."""
    header = ("name", "kind", "method", "source model", "rows", "complete", "quality")
    rows = [header] + [
        (
            r["name"], str(r["kind"]), r["method"] or "-",
            _source_text(r),
            " ".join(f"{s}:{n}" for s, n in r["rows"].items()) or "-",
            "yes" if r["complete"] else "NO", _quality_text(r["quality"]),
        )
        for r in records
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
