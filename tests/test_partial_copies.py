"""Partial copies (issue 16): a store copied the way `cp -r` does (directory walk, metadata
first, a file at a time, so a kill leaves a half-written file) and the way object-storage
syncs do (keys in lexicographic order, or small metadata objects first), interrupted at every
object: every reader refuses every partial copy, and accepts the finished one.

The source stores are complete, so every partial copy that has the root `zarr.json` says
`complete: true`: only the inventory (arrays, shards, object sizes) can tell.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.inspect import store_info, verify_store
from satpipe.data.loader import make_loader
from satpipe.data.publish import publish_store
from satpipe.data.saliency_store import open_saliency
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
from satpipe.train.config import EvalConfig, TrainConfig
from satpipe.train.eval.evaluate import _open_for_eval
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset


def cp_order(root: Path) -> list[str]:
    """`cp -r`: a top-down walk, each folder's files (its zarr.json) before its sub-folders."""
    keys = []
    for folder, subdirs, files in os.walk(root):
        subdirs.sort()
        keys += [str(Path(folder, f).relative_to(root)) for f in sorted(files)]
    return keys


def sync_order(root: Path) -> list[str]:
    """An object-storage sync: keys in lexicographic order (root zarr.json last)."""
    return sorted(cp_order(root))


def metadata_first_order(root: Path) -> list[str]:
    """A sync that sends the small objects first: every zarr.json, then the chunks."""
    return sorted(cp_order(root), key=lambda k: (not k.endswith("zarr.json"), k))


ORDERS = {"cp -r": cp_order, "sync": sync_order, "metadata first": metadata_first_order}


def copy_prefix(src: Path, dst: Path, keys: list[str], n: int, half: bool = False) -> None:
    """`dst` as a copy of `src` that stopped after `n` objects of `keys`; with `half`, the
    next object was being written and holds only its first half."""
    for key in keys[:n]:
        (dst / key).parent.mkdir(parents=True, exist_ok=True)
        (dst / key).write_bytes((src / key).read_bytes())
    if half:
        blob = (src / keys[n]).read_bytes()
        (dst / keys[n]).parent.mkdir(parents=True, exist_ok=True)
        (dst / keys[n]).write_bytes(blob[: len(blob) // 2])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    data = write_tiny_dataset(root / "d.zarr", n_train=16, n_test=8, size=8, rows_per_shard=8)
    sal = compute_saliency(
        SaliencyConfig(method="mask", data=data, out=str(root / "s.zarr"), device="cpu")
    )
    run = train(_train(data, root / "run"))
    return {"data": Path(data), "saliency": Path(sal), "run": run, "root": root}


def _train(data: str, out: Path, **kw) -> TrainConfig:
    base = dict(variant="original", data=str(data), out=str(out), model="smallcnn", epochs=1,
                batch_size=8, augment=False, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _refused(reader: Callable[[], object]) -> str:
    try:
        result = reader()
    except SatpipeError as exc:
        assert "\n" not in str(exc)
        return "refused"
    return "accepted" if result is not False else "refused"


def _dataset_readers(copy: Path, work: Path, sources, heavy: bool) -> dict[str, Callable]:
    """Each reader of a dataset store, as a call that raises (or returns False) to refuse."""
    readers = {
        "open_dataset": lambda: open_dataset(str(copy)),
        "loader resident": lambda: make_loader(str(copy), "train", mode="resident"),
        "loader streaming": lambda: list(make_loader(str(copy), "test", mode="streaming")),
        "store info": lambda: store_info(str(copy))["complete"],
        "store verify": lambda: verify_store(str(copy)) == [],
        "store publish": lambda: publish_store(str(copy), str(work / "pub.zarr")),
    }
    if heavy:  # whole commands, at a few cuts only (they cost seconds)
        readers["train"] = lambda: train(_train(copy, work / "run"))
        readers["saliency"] = lambda: compute_saliency(
            SaliencyConfig(method="mask", data=str(copy), out=str(work / "s.zarr"), device="cpu")
        )
        # eval's reading part (its attacks and sanity checks take seconds and read nothing)
        readers["eval"] = lambda: _open_for_eval(
            EvalConfig(run=str(sources["run"]), data=str(copy), device="cpu")
        )
    return readers


def _saliency_readers(copy: Path, work: Path, sources, heavy: bool) -> dict[str, Callable]:
    data = str(sources["data"])
    readers = {
        "open_saliency": lambda: open_saliency(str(copy)),
        "loader": lambda: list(make_loader(data, "train", str(copy), mode="streaming")),
        "store info": lambda: store_info(str(copy))["complete"],
        "store verify": lambda: verify_store(str(copy), data=data) == [],
        "store publish": lambda: publish_store(str(copy), str(work / "pub.zarr")),
    }
    if heavy:
        readers["train sat"] = lambda: train(
            _train(data, work / "run", variant="sat", saliency=str(copy))
        )
    return readers


READERS = {"data": _dataset_readers, "saliency": _saliency_readers}


def _cuts(src: Path, keys: list[str], order: str, every: bool) -> list[tuple[int, bool]]:
    """(objects copied, next one half-written) of the interruptions to try: every object
    boundary, or (the fast suite) six spread over the copy, the last one included."""
    points = (
        range(len(keys)) if every else sorted({round(i * (len(keys) - 1) / 5) for i in range(6)})
    )
    cuts = [(n, False) for n in points]
    if order == "cp -r":  # cp writes a file at a time: a kill can leave one half-written
        cuts += [(n, True) for n in points if (src / keys[n]).stat().st_size > 1]
    return cuts


@pytest.mark.parametrize(
    "every", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["six cuts", "every cut"]
)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("store", ["data", "saliency"])
def test_every_reader_refuses_every_partial_copy(sources, tmp_path, store, order, every):
    src = sources[store]
    keys = ORDERS[order](src)
    cuts = _cuts(src, keys, order, every)
    # Whole commands (seconds each) at two cuts of the cp -r copy; the rest at every cut.
    heavy = {cuts[len(cuts) // 2], cuts[-1]} if order == "cp -r" else set()
    accepted = []
    for i, (n, half) in enumerate(cuts):
        copy, work = tmp_path / f"c{i}" / src.name, tmp_path / f"w{i}"
        copy.parent.mkdir(parents=True)
        copy_prefix(src, copy, keys, n, half)
        readers = READERS[store](copy, work, sources, heavy=(n, half) in heavy)
        for name, reader in readers.items():
            if _refused(reader) != "refused":
                state = f"{n} of {len(keys)} objects" + (f", {keys[n]} half" if half else "")
                accepted.append(f"{name} accepted a copy with {state} (next: {keys[n]})")
    assert not accepted, accepted


@pytest.mark.parametrize("store", ["data", "saliency"])
def test_every_reader_accepts_the_finished_copy(sources, tmp_path, store):
    src = sources[store]
    for order, keys in ((order, ORDERS[order](src)) for order in ORDERS):
        finished = tmp_path / order / src.name
        finished.parent.mkdir()
        copy_prefix(src, finished, keys, len(keys))
        assert open_dataset(str(finished)) if store == "data" else open_saliency(str(finished))
    work = tmp_path / "work"
    for name, reader in READERS[store](finished, work, sources, heavy=True).items():
        assert _refused(reader) == "accepted", name
