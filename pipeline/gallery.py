"""A picture for a person: images, their object masks and the maps of several saliency stores
side by side (`satpipe show saliency`).

One row per image (the same rows for every store, spread evenly over the split), columns
image | mask | one per store. Signed maps are drawn on a diverging colour map centred at 0
(red: evidence for the class, blue: against it), each map clipped symmetrically at its own
`percentile` of |s|, so one hot pixel does not wash the rest of the map out and a map that
localises the object visibly does; the object's outline is drawn over every map. `minmax`
maps in [0, 1] have no zero to centre on: they get a sequential colour map between their own
(100 - percentile)th and percentile-th values. A store's recorded quality scores (pointing
game, relevance mass, sign agreement) are printed under its column title when it has them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.saliency_store import check_pairing, open_saliency

# Scores shown under a column's title when the store has them: (score, abbreviation).
TITLE_SCORES = (("pointing-game", "PG"), ("relevance-mass", "RM"), ("sign-agreement", "SA"))


def _label(view) -> str:
    """A store's column title: method, source, and its recorded quality when there is one."""
    attrs = view.attrs
    source = (attrs.get("source_model") or {}).get("variant")
    title = attrs.get("method", "?") + (f"\n({source})" if source else "")
    scores = ((attrs.get("quality") or {}).get("scores")) or {}
    shown = [
        f"{abbr} {scores[k]['value']:.2f}"
        for k, abbr in TITLE_SCORES
        if (scores.get(k) or {}).get("value") is not None
    ]
    if shown:
        title += "\n" + " ".join(shown)
    if not view.complete:
        title += "\nINCOMPLETE"
    return title


def _limits(smap: np.ndarray, normalization: str | None, percentile: float) -> dict[str, Any]:
    """imshow colour arguments for one 2-D map."""
    if normalization == "minmax":
        lo, hi = np.percentile(smap, [100 - percentile, percentile])
        return {"cmap": "magma", "vmin": float(lo), "vmax": float(max(hi, lo + 1e-6))}
    top = float(np.percentile(np.abs(smap), percentile))
    top = top if top > 0 else 1.0
    return {"cmap": "RdBu_r", "vmin": -top, "vmax": top}


def _read_rows(dataset, stores, split: str, n: int):
    """(rows, images, labels, masks or None, [maps (n, H, W) per store])."""
    view = dataset.split(split)
    rows = np.unique(np.linspace(0, len(view) - 1, min(n, len(view))).round().astype(int))
    images = np.asarray(view.images.get_orthogonal_selection((rows,)))
    labels = np.asarray(view.labels.get_orthogonal_selection((rows,)))
    masks = None
    if view.masks is not None:
        masks = np.asarray(view.masks.get_orthogonal_selection((rows,)))
    elif view.boxes is not None:
        boxes = np.asarray(view.boxes.get_orthogonal_selection((rows,)))
        h, w = images.shape[1:3]
        ys, xs = np.mgrid[0:h, 0:w]
        masks = np.stack(
            [(xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3]) for b in boxes]
        ).astype(np.uint8)
    maps = [
        np.asarray(s.split(split).get_orthogonal_selection((rows,)), dtype=np.float32).mean(-1)
        for s in stores
    ]
    return rows, images, labels, masks, maps


def saliency_gallery(
    saliency_uri: str | Sequence[str],
    data_uri: str | None,
    out_png: str,
    n: int = 8,
    split: str = "train",
    storage_options: Mapping[str, Any] | None = None,
    percentile: float = 99.0,
) -> str:
    """Write the PNG (see the module docstring) for one store or several, all made for the
    same dataset (`data_uri`, default: the one the first store records). Incomplete stores are
    drawn too (their title says so; undone rows show as zeros). Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uris = [saliency_uri] if isinstance(saliency_uri, str) else list(saliency_uri)
    if not uris:
        raise SatpipeError("show saliency: give at least one saliency store")
    if n < 1:
        raise SatpipeError(f"--n must be >= 1, got {n}")
    if not 50 <= percentile <= 100:
        raise SatpipeError(f"--percentile must be in [50, 100], got {percentile}")
    stores = [open_saliency(u, storage_options, require_complete=False) for u in uris]
    data_uri = data_uri or (stores[0].attrs.get("dataset") or {}).get("uri")
    if not data_uri:
        raise SatpipeError(f"{uris[0]}: records no dataset; pass --data")
    dataset = open_dataset(data_uri, storage_options)
    for store in stores:
        check_pairing(dataset, store, split)
    fig = _figure(plt, dataset.classes, stores, _read_rows(dataset, stores, split, n), percentile)
    fig.suptitle(
        f"{Path(str(data_uri)).name} ({split}): red = evidence for the class, blue = against; "
        f"each map clipped at its {percentile:g}th percentile of |s|; outline = the object",
        fontsize=6,
    )
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return str(out_png)


def _figure(plt, classes: Sequence[str], stores, read, percentile: float):
    """The gallery's matplotlib figure: a row per image of `read` (_read_rows's tuple),
    columns image | mask (when there are masks) | one per store."""
    rows, images, labels, masks, maps = read
    lead = 1 if masks is None else 2
    cols = lead + len(stores)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.25 * cols, 1.25 * len(rows) + 0.9), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, (row, image, label) in enumerate(zip(rows, images, labels, strict=True)):
        axes[i, 0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        axes[i, 0].set_ylabel(f"#{row}\n{classes[int(label)]}", fontsize=6)
        if masks is not None:
            axes[i, 1].imshow(masks[i], cmap="gray", vmin=0, vmax=1)
        for j, (store, smaps) in enumerate(zip(stores, maps, strict=True)):
            ax = axes[i, lead + j]
            ax.imshow(smaps[i], **_limits(smaps[i], store.attrs.get("normalization"), percentile))
            if masks is not None:
                ax.contour(masks[i], levels=[0.5], colors="k", linewidths=0.5)
    axes[0, 0].set_title("image", fontsize=6)
    if masks is not None:
        axes[0, 1].set_title("mask", fontsize=6)
    for j, store in enumerate(stores):
        axes[0, lead + j].set_title(_label(store), fontsize=5)
    return fig
