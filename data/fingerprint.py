"""A dataset store's fingerprint: sha256 over its images and labels, split by split, computed
while writing and checked when a split is read whole."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from satpipe.core.errors import SatpipeError

if TYPE_CHECKING:  # annotations only: dataset_store imports this module
    from satpipe.data.dataset_store import DatasetView


class Fingerprint:
    """sha256 over images and labels of every split, fed row blocks in order while writing.

    Images and labels are hashed in separate streams per split so the digest does not depend
    on how rows were batched; the final digest binds split names, row counts and shapes too.
    """

    def __init__(self) -> None:
        self._parts: dict[str, list] = {}

    def update(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        part = self._parts.setdefault(split, [hashlib.sha256(), hashlib.sha256(), 0, None])
        part[0].update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        part[1].update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
        part[2] += len(labels)
        part[3] = tuple(images.shape[1:])

    def part(self, split: str) -> tuple[str, str, int, tuple]:
        """(images sha256, labels sha256, rows, image shape) of one split, as hashed so far."""
        img, lab, n, shape = self._parts[split]
        return img.hexdigest(), lab.hexdigest(), n, shape

    @staticmethod
    def combine(parts: Mapping[str, tuple[str, str, int, tuple]]) -> str:
        """The fingerprint of a store from the `part` of each of its splits."""
        final = hashlib.sha256(b"satpipe-fingerprint-v1\n")
        for split in sorted(parts):
            img, lab, n, shape = parts[split]
            final.update(f"{split}:{n}:{'x'.join(map(str, shape))}:{img}:{lab}\n".encode())
        return "sha256:" + final.hexdigest()

    def hexdigest(self) -> str:
        return self.combine({split: self.part(split) for split in self._parts})


# Older stores record no shard digests, only the whole-store fingerprint, which can be checked
# only by reading every split whole and in row order. Resident loads do exactly that; they
# leave their split's part here, and once every split of a store has been read in this process
# (the trainer loads train and test), the parts are combined and compared.
_WHOLE_READS: dict[tuple[str, str], dict[str, tuple]] = {}

_WHOLE_READS_LOCK = threading.Lock()


def record_whole_split(view: DatasetView, split: str, fingerprint: Fingerprint) -> None:
    """Leave the fingerprint part of `split`, read whole and in order, for `check_whole_reads`."""
    with _WHOLE_READS_LOCK:
        _WHOLE_READS.setdefault((view.uri, view.fingerprint), {})[split] = fingerprint.part(split)


def check_whole_reads(view: DatasetView) -> bool:
    """True when every split of `view` was read whole in this process and the reads hash to
    its recorded fingerprint; False when some split was not read whole (nothing checked).
    Data that hashes to something else is a SatpipeError naming the store."""
    with _WHOLE_READS_LOCK:
        parts = dict(_WHOLE_READS.get((view.uri, view.fingerprint), {}))
    if set(parts) != set(view.splits):
        return False
    found = Fingerprint.combine(parts)
    if found != view.fingerprint:
        raise SatpipeError(
            f"{view.uri}: the images and labels read hash to {found[:19]}..., not the "
            f"fingerprint {str(view.fingerprint)[:19]}... recorded when the store was written "
            "(it was changed, or a copy mixed two versions); run `satpipe store verify` on it"
        )
    return True
