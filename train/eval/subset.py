"""The images an evaluation attacks: the test split, or a seeded class-stratified subset of it.

`stratified_order(labels, seed)` orders the split so that *every prefix* is class-stratified:
class c's rows are shuffled and spread evenly over [0, 1) (row k of class c sits at
(k + u_c) / n_c, u_c a seeded offset), then all rows are sorted by position. The first n rows
then hold each class within one or two images of n * n_c / N (RobustBench draws its ImageNet
subset the same way, stratified by class). `--n-examples N` evaluates the first N; an attack
given fewer (`--attack-examples autoattack=100`) the first 100 of those, so its images are a
stratified subset too, and every model evaluated with the same subset seed sees the same
images in the same order: the pairing the paired tests need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from satpipe.core.errors import SatpipeError
from satpipe.core.seeding import derive_seed

SUBSET_STREAM = 0x5B5E  # tags the subset's random stream apart from every other stream


def stratified_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A permutation of range(len(labels)) whose every prefix is class-stratified (int64)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(derive_seed(seed, SUBSET_STREAM))
    position = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        position[rows] = (np.arange(len(rows)) + rng.random()) / len(rows)
    return np.lexsort((labels, position)).astype(np.int64)  # position, then class: no ties left


@dataclass
class EvalSet:
    """x (N, C, H, W) float32 in [0, 1] (channels_last on CUDA) and y (N,) int64 on the
    device, in evaluation order; `indices` (N,) int64: the test-split row of each;
    `split_size`: rows in the split."""

    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray
    split_size: int

    def __len__(self) -> int:
        return len(self.y)


def check_n_examples(n_examples: int | None, split_size: int, where: str) -> int:
    """The number of images to evaluate; a one-line error outside [1, split size]."""
    if n_examples is None:
        return split_size
    if not 1 <= n_examples <= split_size:
        raise SatpipeError(
            f"{where}: --n-examples {n_examples} is outside [1, {split_size}] "
            f"(the test split has {split_size} images)"
        )
    return int(n_examples)


def _channels_last(x: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) batch is laid out channels_last (and not also plain NCHW, as a
    one-channel or 1x1 batch is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def load_eval_set(loader, n_examples: int | None = None, seed: int = 0) -> EvalSet:
    """The first `n_examples` (default: all) rows of the loader's split in stratified order.

    `loader`: a non-shuffled, non-augmented PairLoader; only the chosen rows are kept."""
    labels = np.asarray(loader.dataset.split(loader.split).labels[:], dtype=np.int64)
    n = check_n_examples(n_examples, len(labels), str(loader.dataset.uri))
    chosen = stratified_order(labels, seed)[:n]
    where = np.full(len(labels), -1, dtype=np.int64)
    where[chosen] = np.arange(n)
    x = y = None
    offset = 0
    for xb, _, yb in loader:
        rows = where[offset : offset + len(yb)]
        offset += len(yb)
        keep = np.flatnonzero(rows >= 0)
        if x is None:  # in the batches' layout (channels_last on CUDA: the model's)
            layout = torch.channels_last if _channels_last(xb) else torch.contiguous_format
            x = torch.empty(
                (n, *xb.shape[1:]), dtype=xb.dtype, device=xb.device, memory_format=layout
            )
            y = torch.empty((n,), dtype=yb.dtype, device=yb.device)
        if len(keep):
            dest = torch.as_tensor(rows[keep], device=xb.device)
            src = torch.as_tensor(keep, device=xb.device)
            x[dest], y[dest] = xb[src], yb[src]
    return EvalSet(x, y, chosen, len(labels))
