"""Per-image correctness bits of an evaluation: `RUN/correct.npz`, and its public loader.

Every paired test (claims.md), and anything that relates robustness to another per-image
quantity, needs to know *which* test images a model got right under each attack, not only how
many. `satpipe eval` writes them beside results.json (which references the file)::

    from satpipe.train.eval.per_image import load_correct
    c = load_correct("runs/pgd-sat/seed0")        # a run folder, or the .npz itself
    c.indices                   # (N,) int64: the test-split row of each evaluated image
    c.labels                    # (N,) int64
    c.clean                     # (N,) bool
    c.get("pgd", 8, seed=0)     # (n,) bool: right clean AND under PGD at 8/255, seed 0
    c.runs("pgd", 8)            # (S, n) bool: every seed of that attack, in seed order
    c.robust(8)                 # (n,) bool: the worst case over every attack run at 8/255
    c.measurements()            # [(attack, eps_key, seed), ...]

Images are stored in evaluation order, a class-stratified seeded order of the test split
(`satpipe.train.eval.subset`): every prefix of it is itself a class-stratified subset, so a
measurement made on fewer images (`--attack-examples autoattack=100`) covers the first n of
them and two models evaluated with the same subset seed are paired image for image.

File format 1 (numpy .npz, no pickles; `np.load(path)` reads it without satpipe):
  format   ()      int64   1
  indices  (N,)    int64   test-split rows, in evaluation order
  labels   (N,)    int64
  keys     (M,)    str     "attack|eps|seed": eps as in results.json ("8", "0.5"); seed "-" for a
                           deterministic attack and for the worst case ("robust|8|-"); ensemble
                           stages as "autoattack/apgd-ce|8|0" (robust after that stage);
                           the L2 attacks' worst case as "robust-l2|127.5|-" (radius /255)
  lengths  (M,)    int64   n of each measurement (a prefix of the N images)
  bits     (M, ceil(N/8)) uint8  np.packbits(correct, bitorder="little"), zero-padded to N
  clean    (ceil(N/8),)   uint8  packed clean correctness, same order
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satpipe.core.errors import SatpipeError

FORMAT = 1
FILENAME = "correct.npz"
ROBUST = "robust"  # the attack name of the per-image worst case over all L-inf attacks
ROBUST_L2 = "robust-l2"  # ... and over all L2 attacks (an L2 radius is another threat model)
_BITORDER = "little"

Key = tuple[str, str, "int | None"]


def eps_key(eps: float | str) -> str:
    """eps (/255 units) as results.json writes it: "8", "0.5"."""
    value = float(eps)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _key_text(attack: str, eps: str, seed: int | None) -> str:
    return f"{attack}|{eps}|{'-' if seed is None else int(seed)}"


def _parse_key(text: str) -> Key:
    attack, eps, seed = str(text).split("|")
    return attack, eps, None if seed == "-" else int(seed)


def _pack(bits: np.ndarray, n: int) -> np.ndarray:
    padded = np.zeros(n, dtype=bool)
    padded[: len(bits)] = bits
    return np.packbits(padded, bitorder=_BITORDER)


def write_correct(
    path: str | os.PathLike,
    indices: np.ndarray,
    labels: np.ndarray,
    clean: np.ndarray,
    measurements: Mapping[Key, np.ndarray],
) -> str:
    """Write correct.npz atomically (a temporary file, then a rename); returns its sha256.

    measurements: (attack, eps_key, seed or None) -> (n,) bool with n <= N."""
    path = Path(path)
    n = len(indices)
    keys = list(measurements)
    if any(len(measurements[k]) > n for k in keys):
        raise ValueError("a measurement covers more images than were evaluated")
    bits = (
        np.stack([_pack(np.asarray(measurements[k], bool), n) for k in keys])
        if keys
        else (np.zeros((0, (n + 7) // 8), np.uint8))
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            format=np.int64(FORMAT),
            indices=np.asarray(indices, np.int64),
            labels=np.asarray(labels, np.int64),
            keys=np.array([_key_text(*k) for k in keys], dtype=str),
            lengths=np.array([len(measurements[k]) for k in keys], np.int64),
            bits=bits,
            clean=_pack(np.asarray(clean, bool), n),
        )
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return digest


@dataclass(frozen=True)
class Correctness:
    """The contents of one correct.npz (see the module docstring)."""

    path: str
    indices: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    entries: dict[Key, np.ndarray]

    def measurements(self) -> list[Key]:
        return list(self.entries)

    def get(self, attack: str, eps: float | str, seed: int | None = None) -> np.ndarray:
        """(n,) bool of one measurement; `seed` may be omitted for a deterministic attack."""
        key = (attack, eps_key(eps), seed)
        if key not in self.entries and seed is None:
            seeds = self.seeds(attack, eps)
            if len(seeds) == 1:
                key = (attack, eps_key(eps), seeds[0])
        if key not in self.entries:
            raise SatpipeError(
                f"{self.path}: no measurement {attack} at {eps_key(eps)}/255 seed {seed}"
            )
        return self.entries[key]

    def seeds(self, attack: str, eps: float | str) -> list[int | None]:
        k = eps_key(eps)
        found = [s for a, e, s in self.entries if a == attack and e == k]
        return sorted(found, key=lambda s: -1 if s is None else s)

    def runs(self, attack: str, eps: float | str) -> np.ndarray:
        """(S, n) bool: every seed of (attack, eps), in seed order (S = 1 if deterministic)."""
        seeds = self.seeds(attack, eps)
        if not seeds:
            raise SatpipeError(f"{self.path}: no measurement {attack} at {eps_key(eps)}/255")
        return np.stack([self.entries[(attack, eps_key(eps), s)] for s in seeds])

    def robust(self, eps: float | str) -> np.ndarray:
        """(n,) bool: right under every attack (and seed) run at eps."""
        return self.get(ROBUST, eps, None)


def load_correct(path: str | os.PathLike) -> Correctness:
    """Read a correct.npz (or RUN/correct.npz for a run folder); one-line errors naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise SatpipeError(f"{path}: no per-image correctness file (evaluate the run first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise SatpipeError(f"{path}: not a readable correctness file ({exc})") from None
    need = {"format", "indices", "labels", "keys", "lengths", "bits", "clean"}
    if not need <= set(data) or int(data["format"]) != FORMAT:
        raise SatpipeError(f"{path}: not a satpipe correctness file of format {FORMAT}")
    n = len(data["indices"])
    unpack = lambda packed, k: np.unpackbits(packed, count=n, bitorder=_BITORDER)[:k]  # noqa: E731
    entries = {
        _parse_key(key): unpack(row, int(length)).astype(bool)
        for key, length, row in zip(data["keys"], data["lengths"], data["bits"], strict=True)
    }
    return Correctness(
        str(path), data["indices"], data["labels"], unpack(data["clean"], n).astype(bool), entries
    )
