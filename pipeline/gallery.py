"""A picture for a person: dataset images next to their saliency maps (`satpipe show saliency`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.data.store import check_pairing, open_dataset, open_saliency
from satpipe.errors import SatpipeError


def saliency_gallery(
    saliency_uri: str,
    data_uri: str,
    out_png: str,
    n: int = 16,
    split: str = "train",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a PNG grid of `n` images (evenly spread over the split) each followed by its map.

    Maps are averaged over colour channels and drawn with a diverging colour map centred on 0
    (blue = evidence against the class, red = for it); `minmax` maps in [0, 1] are centred on
    0.5. Incomplete stores are drawn too (title says so; undone rows show as zeros).
    Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise SatpipeError(f"--n must be >= 1, got {n}")
    saliency = open_saliency(saliency_uri, storage_options, require_complete=False)
    dataset = open_dataset(data_uri, storage_options)
    check_pairing(dataset, saliency, split)
    view = dataset.split(split)
    maps_arr = saliency.split(split)
    rows = np.unique(np.linspace(0, len(view) - 1, min(n, len(view))).round().astype(int))
    images = np.asarray(view.images.get_orthogonal_selection((rows,)))
    labels = np.asarray(view.labels.get_orthogonal_selection((rows,)))
    maps = np.asarray(maps_arr.get_orthogonal_selection((rows,)), dtype=np.float32).mean(-1)
    lo, hi = (0.0, 1.0) if saliency.attrs.get("normalization") == "minmax" else (-1.0, 1.0)

    cols = min(4, len(rows))
    grid_rows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(
        grid_rows, 2 * cols, figsize=(2 * cols * 1.6, grid_rows * 1.8), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    classes = dataset.classes
    for i, (row, image, label, smap) in enumerate(zip(rows, images, labels, maps, strict=True)):
        r, c = divmod(i, cols)
        ax_img, ax_map = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_img.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        ax_img.set_title(f"#{row} {classes[int(label)]}", fontsize=7)
        ax_map.imshow(smap, cmap="RdBu_r", vmin=lo, vmax=hi)
        ax_map.set_title(saliency.attrs.get("method", "?"), fontsize=7)
    state = "" if saliency.complete else " (INCOMPLETE)"
    fig.suptitle(
        f"{Path(str(saliency_uri)).name}: {saliency.attrs.get('method')}, "
        f"{saliency.attrs.get('normalization')}{state}",
        fontsize=9,
    )
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return str(out_png)
