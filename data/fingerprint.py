"""A dataset store's fingerprint: sha256 over its images and labels, split by split, computed
while writing and checked by `satpipe store verify` (readers check the shard digests)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


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
