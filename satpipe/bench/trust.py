"""What trusting nothing costs when reading: a checkpoint's digest, a store's metadata.

Part of `satpipe bench integrity`:

- `checkpoint_costs`: a checkpoint of random float32 tensors the size of a ResNet-50
  (`mb` MB, default 100; no model is downloaded or built) written by `save_checkpoint`, then
  timed: `torch.load` alone (what an unchecked reader pays), `state_digest` of what it loaded
  (the check's computation), `load_checkpoint` (load + digest + finite weights: what every
  reader pays now) and `file_sha256` (one plain read of the file, the issue's yardstick);
- `metadata_costs`: `check_metadata` of a small dataset store as written, and of the same store
  whose images and labels `zarr.json` claim 10^9 rows (refused), and `store info`'s refusal of
  it: milliseconds, however many rows a store claims.

Every figure is the best of `rounds` calls (wall time).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from satpipe.core.errors import SatpipeError
from satpipe.data.inspect import store_info
from satpipe.data.metadata import check_metadata
from satpipe.data.synthetic import write_random_dataset
from satpipe.train.checkpoint import file_sha256, load_checkpoint, save_checkpoint, state_digest

RESNET50_PARAMS = 25_557_032  # float32: 102 MB
CLAIMED_ROWS = 10**9


def _best(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _random_state(mb: float) -> dict[str, Any]:
    """A checkpoint body of random float32 tensors totalling `mb` MB, in ResNet-like pieces
    (many small tensors and a few large ones: per-tensor costs count too)."""
    gen = torch.Generator().manual_seed(0)
    left = int(mb * 1e6 / 4)
    tensors, i = {}, 0
    sizes = [64 * 64 * 9, 128 * 128 * 9, 256 * 256 * 9, 512 * 512 * 9, 2048 * 512, 256, 512]
    while left > 0:
        n = min(left, sizes[i % len(sizes)])
        tensors[f"layer{i}.weight"] = torch.randn(n, generator=gen)
        left -= n
        i += 1
    return {"model": {"arch": "bench", "num_classes": 1000, "in_channels": 3,
                      "state_dict": tensors}}  # fmt: skip


def checkpoint_costs(mb: float = RESNET50_PARAMS * 4 / 1e6, rounds: int = 3) -> dict[str, Any]:
    """Seconds to load a checkpoint of `mb` MB with and without its digest check."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        state = _random_state(mb)
        save_checkpoint(path, state)
        del state
        size = path.stat().st_size
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        unchecked = _best(lambda: torch.load(path, map_location="cpu", weights_only=True), rounds)
        digest = _best(lambda: state_digest(loaded), rounds)
        checked = _best(lambda: load_checkpoint(path), rounds)
        read = _best(lambda: file_sha256(path), rounds)
        tensors = len(loaded["model"]["state_dict"])
    return {
        "bytes": size,
        "tensors": tensors,
        "load_unchecked_s": unchecked,
        "digest_s": digest,
        "load_checked_s": checked,
        "file_sha256_s": read,
        "checked_over_unchecked": checked / unchecked,
        "digest_over_file_read": digest / read,
    }


def _claim_rows(store: str, rows: int) -> None:
    for node in ("train/images", "train/labels"):
        meta_path = Path(store) / node / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["shape"][0] = rows
        meta_path.write_text(json.dumps(meta))


def metadata_costs(rounds: int = 5) -> dict[str, Any]:
    """Seconds to check a store's metadata as written, and to refuse one claiming 10^9 rows."""
    with tempfile.TemporaryDirectory() as tmp:
        store = write_random_dataset(str(Path(tmp) / "d.zarr"), 256, 16, rows_per_shard=64)
        honest = _best(lambda: check_metadata(store), rounds)
        _claim_rows(store, CLAIMED_ROWS)

        def refused(fn: Callable[[], Any]) -> Callable[[], None]:
            def call() -> None:
                try:
                    fn()
                except SatpipeError:
                    return
                raise RuntimeError("a store claiming 10^9 rows was not refused")

            return call

        crafted = _best(refused(lambda: check_metadata(store)), rounds)
        info = _best(refused(lambda: store_info(store)), rounds)
    return {
        "claimed_rows": CLAIMED_ROWS,
        "check_honest_s": honest,
        "refuse_claim_s": crafted,
        "store_info_refuse_s": info,
    }
