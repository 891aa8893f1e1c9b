"""Which saliency map each training image gets: its own (`matched`), or for the content control
(`shuffled`) the map of another image of the same split.

The shuffled pairing is a seeded derangement of the split's rows, a function of the run's seed
and the split's size only: image i gets map `map_rows[i]`, never its own, every map used
exactly once (the same multiset of maps, so the same magnitudes: only the correspondence with
the image is gone). The loader reads maps through it in both modes; the run directory records
it (RUN/pairing.json) and a resumed run checks it is still the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.core.seeding import derive_seed

PAIRING_FILE = "pairing.json"
PAIRING_STREAM = 0x9A1  # tags the pairing's stream apart from every other seeded stream


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point, (n,) int64; n >= 2.

    A uniform permutation whose fixed points are then moved: several are rotated among
    themselves, a single one swaps with a seeded other row (neither ends where it started).
    """
    if n < 2:
        raise SatpipeError(f"a shuffled pairing needs at least 2 images in the split, got {n}")
    rng = np.random.default_rng(derive_seed(seed, PAIRING_STREAM, n))
    perm = rng.permutation(n).astype(np.int64)
    fixed = np.flatnonzero(perm == np.arange(n))
    if len(fixed) > 1:
        perm[fixed] = np.roll(fixed, -1)
    elif len(fixed) == 1:
        i = int(fixed[0])
        j = int(rng.integers(n - 1))
        j += j >= i  # any row but i
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def digest(map_rows: np.ndarray) -> str:
    data = np.ascontiguousarray(map_rows, np.int64).tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pairing_record(map_rows: np.ndarray, seed: int, split: str = "train") -> dict[str, Any]:
    """What RUN/pairing.json holds: the pairing, its seed and split, its digest, and the map
    row of every image (`map_rows[i]`: the row whose map image i is trained with)."""
    return {
        "pairing": "shuffled",
        "split": split,
        "seed": int(seed),
        "rows": len(map_rows),
        "sha256": digest(map_rows),
        "map_rows": [int(v) for v in map_rows],
    }


def run_pairing(pairing: str, n_rows: int, seed: int, uri: str = "") -> np.ndarray | None:
    """The map row of every image of a run's training split: None for `matched`, the seeded
    derangement for `shuffled` (a split of fewer than 2 images is a one-line error)."""
    if pairing == "matched":
        return None
    if n_rows < 2:
        raise SatpipeError(
            f"{uri}: --saliency-pairing shuffled needs at least 2 training images (another "
            f"image's map for each), the split has {n_rows}"
        )
    return derangement(n_rows, seed)


def check_recorded(run_dir: str | Path, map_rows: np.ndarray | None) -> None:
    """On resume: the pairing recorded in RUN/pairing.json must be the one the run uses now."""
    path = Path(run_dir) / PAIRING_FILE
    if map_rows is None:
        if path.is_file():
            raise SatpipeError(
                f"{path}: the run trained with a shuffled pairing; this one is matched"
            )
        return
    if not path.is_file():
        raise SatpipeError(f"{path}: missing: the run trained with a matched pairing")
    try:
        recorded = json.loads(path.read_text()).get("sha256")
    except (json.JSONDecodeError, AttributeError):
        raise SatpipeError(f"{path}: not a pairing record (invalid JSON)") from None
    if recorded != digest(map_rows):
        raise SatpipeError(f"{path}: records another pairing than this run's ({recorded})")
