"""A store that describes itself: a `README.md` card and a small gallery PNG at its root.

    write_card("s3://bucket/smoothgrad.zarr", storage_options)   # what `store publish` and
                                                                  # `store score` do at the end

The card says what the store is (kind, method and parameters, normalisation, source model,
dataset and fingerprint, rows, size), its recorded quality scores with their chance values,
and how to load it with satpipe and with plain zarr, as a dataset card does on a model hub.
The gallery (`gallery.png`, saliency stores only) is `satpipe show saliency` of a few rows,
drawn when the dataset the store records can be opened from here.

Both files sit beside the root `zarr.json`; zarr and every satpipe reader ignore them (they are
not zarr keys of any array or group), so `store verify` and the inventory are unchanged.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError, note
from satpipe.data.quality_text import quality_lines
from satpipe.data.shelf import HEADLINE_SCORES, describe_store
from satpipe.data.storage import storage_errors, url_to_fs, write_errors

CARD = "README.md"
GALLERY = "gallery.png"
GALLERY_ROWS = 6


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _source_line(source: Mapping[str, Any]) -> str:
    if not source or not source.get("arch"):
        return "none (the method needs no model)"
    parts = [f"`{source['arch']}`"]
    if source.get("variant"):
        parts.append(f"trained as {source['variant']}")
    if source.get("checkpoint_sha256"):
        parts.append(f"checkpoint sha256 `{source['checkpoint_sha256']}`")
    if source.get("state_dict_sha256"):
        parts.append(f"a model in memory (`{source.get('module_class')}`), weights sha256 "
                     f"`{source['state_dict_sha256']}`")  # fmt: skip
    if source.get("weights_sha256"):
        parts.append(f"imported weights sha256 `{source['weights_sha256']}`")
    if source.get("cam_layer"):
        parts.append(f"Grad-CAM layer `{source['cam_layer']}`")
    return ", ".join(parts)


def card_text(uri: str, info: Mapping[str, Any], gallery: bool) -> str:
    """The markdown card of a store from `describe_store`'s record (plus its attrs)."""
    if info["kind"] == "saliency":
        body = _saliency_card(uri, info, gallery)
    else:
        body = _dataset_card(uri, info)
    return "\n".join([f"# {info['name']}", "", *body]) + "\n"


def _table_lines(info: Mapping[str, Any], what: str) -> tuple[str, str, str]:
    """The rows (with the shape of each `what`), size and complete lines of a card's table."""
    rows = ", ".join(f"{split} {n}" for split, n in info["rows"].items()) or "none"
    complete = "yes" if info["complete"] else "**no** (unfinished: do not train on it)"
    return (
        f"| rows | {rows}; {what} {info['map_shape']} (H, W, channels) |",
        f"| size | {_size(info['bytes'])} |",
        f"| complete | {complete} |",
    )


def _saliency_card(uri: str, info: Mapping[str, Any], gallery: bool) -> list[str]:
    """The card's lines after its title, for a saliency store."""
    attrs = info["attrs"]
    rows, size, complete = _table_lines(info, "maps")
    dataset = attrs.get("dataset") or {}
    params = json.dumps(attrs.get("params") or {}, sort_keys=True)
    lines = [
        f"A satpipe **saliency store**: one `{attrs.get('method')}` map per image of the "
        f"dataset store below, row for row (zarr v3, float16, written by satpipe "
        f"{attrs.get('satpipe_version')} on {attrs.get('created')}).",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{attrs.get('method')}` {params} |",
        f"| normalisation | `{attrs.get('normalization')}` (per image) |",
        f"| source model | {_source_line(attrs.get('source_model') or {})} |",
        f"| dataset | `{dataset.get('uri')}`, fingerprint `{dataset.get('fingerprint')}` |",
        rows,
        f"| seed | {attrs.get('seed')} |",
        size,
        complete,
        "",
        "## Quality",
        "",
    ]
    quality = quality_lines(attrs.get("quality"), indent="")
    if quality:
        lines += ["```", *quality, "```"]
    else:
        lines.append("Not scored yet (`satpipe store score STORE` records the scores).")
    if gallery:
        lines += ["", f"![a few maps of this store]({GALLERY})"]
    data = dataset.get("uri") or "DATASET.zarr"
    lines += [
        "",
        "## Load it",
        "",
        "With satpipe (`pip install satpipe`; checks the pairing and every shard it reads):",
        "",
        "```python",
        "import satpipe as sp",
        f'ds = sp.SaliencyDataset("{data}", "{uri}", split="train")',
        "image, smap, label = ds[0]  # (C,H,W) f32 [0,1], (Cs,H,W) f32, int64",
        "```",
        "",
        "With plain zarr (no satpipe):",
        "",
        "```python",
        "import zarr",
        f'g = zarr.open_group("{uri}", mode="r")',
        'maps = g["train/saliency"]  # (N, H, W, Cs) float16; row i = row i of the dataset',
        'provenance = g.attrs["satpipe"]',
        "```",
    ]
    return lines


def _dataset_card(uri: str, info: Mapping[str, Any]) -> list[str]:
    """The card's lines after its title, for a dataset store."""
    attrs = info["attrs"]
    rows, size, complete = _table_lines(info, "images")
    classes = list(attrs.get("classes") or [])
    shown = ", ".join(classes[:10]) + (" ..." if len(classes) > 10 else "")
    return [
        f"A satpipe **dataset store** (zarr v3, uint8 images; written by satpipe "
        f"{attrs.get('satpipe_version')} on {attrs.get('created')}).",
        "",
        "| | |",
        "|---|---|",
        f"| name | {attrs.get('name')} |",
        f"| classes | {len(classes)}: {shown} |",
        rows,
        f"| fingerprint | `{attrs.get('fingerprint')}` |",
        f"| source | `{json.dumps(attrs.get('source') or {}, sort_keys=True)}` |",
        size,
        complete,
        "",
        "## Load it",
        "",
        "```python",
        "import satpipe as sp",
        f'ds = sp.SaliencyDataset("{uri}", split="train")  # (image, label) rows',
        "",
        "import zarr  # or with plain zarr",
        f'g = zarr.open_group("{uri}", mode="r")',
        'images, labels = g["train/images"], g["train/labels"]  # (N,H,W,C) uint8, (N,)',
        "```",
    ]


def _gallery_png(uri: str, info: Mapping[str, Any], options: Mapping[str, Any] | None):
    """PNG bytes of the store's gallery, or None (with a note) when it cannot be drawn."""
    from satpipe.pipeline.gallery import saliency_gallery

    data = (info["attrs"].get("dataset") or {}).get("uri")
    split = next(iter(info["rows"]), "train")
    with tempfile.TemporaryDirectory(prefix="satpipe-card-") as tmp:
        png = Path(tmp) / GALLERY
        try:
            saliency_gallery(uri, data, str(png), n=GALLERY_ROWS, split=split,
                             storage_options=options)  # fmt: skip
        except SatpipeError as exc:
            note(f"{uri}: card without a gallery ({exc})")
            return None
        return png.read_bytes()


def write_card(
    uri: str, storage_options: Mapping[str, Any] | None = None, gallery: bool = True
) -> str:
    """Write `README.md` (and, for saliency stores, `gallery.png`) at the root of the store
    `uri` (path or fsspec URL), replacing earlier ones; returns the card's path."""
    info = describe_store(uri, storage_options)
    picture = None
    if gallery and info["kind"] == "saliency":
        picture = _gallery_png(uri, info, storage_options)
    text = card_text(uri, info, picture is not None)
    with storage_errors(uri), write_errors(uri, f"its card ({CARD})"):
        fs, root = url_to_fs(uri, storage_options)
        root = root.rstrip("/")
        if picture is not None:
            fs.pipe_file(f"{root}/{GALLERY}", picture)
        fs.pipe_file(f"{root}/{CARD}", text.encode())
    return f"{str(uri).rstrip('/')}/{CARD}"


__all__ = ["CARD", "GALLERY", "HEADLINE_SCORES", "card_text", "write_card"]
