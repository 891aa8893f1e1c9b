"""Saliency store layout, provenance and the refusal rules (write side, no model involved)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from satpipe.core.errors import SatpipeError
from satpipe.data.saliency_store import (
    done_shards,
    mark_complete,
    open_saliency,
    open_saliency_for_write,
    saliency_attrs,
    shard_plan,
    write_shard,
)


def _attrs(**over):
    base = dict(
        method="smoothgrad",
        params={"samples": 10, "sigma": 0.15, "samples_batch_size": 10},
        normalization="signed-maxabs",
        seed=0,
        source_model={"arch": "smallcnn", "checkpoint_sha256": "ab" * 32, "variant": None},
        dataset={"uri": "d.zarr", "fingerprint": "sha256:" + "0" * 64},
        splits={"train": (20, 4, 4, 3), "test": (5, 4, 4, 3)},
        compute={"batch_size": 8, "amp": False},
    )
    base.update(over)
    return saliency_attrs(**base)


ROWS = {"train": 8, "test": 8}


def test_layout_and_provenance(tmp_path):
    uri = str(tmp_path / "s.zarr")
    group, found = open_saliency_for_write(uri, _attrs(), ROWS)
    assert found["complete"] is False
    maps, done = group["train/saliency"], group["train/done"]
    assert maps.dtype == np.float16 and maps.shape == (20, 4, 4, 3)
    assert maps.shards[0] == 8 and done.shape == (3,) and done.chunks == (1,)
    assert done.dtype == np.uint8 and not done_shards(group, "train").any()
    codecs = [type(c).__name__ for c in maps.metadata.codecs[0].codecs]
    assert "Crc32cCodec" in codecs
    assert "Crc32cCodec" in [type(c).__name__ for c in done.metadata.codecs]
    assert [(s.start, s.stop) for s in shard_plan(group, "train")] == [(0, 8), (8, 16), (16, 20)]
    # Readable with plain zarr; provenance keys per DESIGN.
    attrs = zarr.open_group(uri, mode="r").attrs["satpipe"]
    for key in ("kind", "format", "method", "params", "normalization", "seed", "source_model",
                "dataset", "complete", "created", "satpipe_version"):  # fmt: skip
        assert key in attrs
    assert attrs["kind"] == "saliency" and attrs["source_model"]["arch"] == "smallcnn"


def test_write_done_complete_order(tmp_path):
    uri = str(tmp_path / "s.zarr")
    group, _ = open_saliency_for_write(uri, _attrs(), ROWS)
    rng = np.random.default_rng(0)
    blocks = {}
    for split in ("train", "test"):
        for k, rows in enumerate(shard_plan(group, split)):
            if (split, k) == ("train", 2):
                continue
            blocks[split, k] = rng.uniform(-1, 1, (rows.stop - rows.start, 4, 4, 3))
            write_shard(group, split, k, blocks[split, k])
    assert done_shards(group, "train").tolist() == [1, 1, 0]
    with pytest.raises(SatpipeError, match=r"train shards \[2\] are not done"):
        mark_complete(group, uri)
    with pytest.raises(SatpipeError, match="incomplete"):
        open_saliency(uri)
    with pytest.raises(SatpipeError, match="expected"):
        write_shard(group, "train", 2, np.zeros((3, 4, 4, 3)))
    blocks["train", 2] = np.ones((4, 4, 4, 3))
    write_shard(group, "train", 2, blocks["train", 2])
    assert mark_complete(group, uri)["complete"] is True
    view = open_saliency(uri)
    train = np.concatenate([blocks["train", k] for k in range(3)]).astype(np.float16)
    assert np.array_equal(view.split("train")[:], train)
    assert view.done("test").tolist() == [1]


def test_refuses_other_runs_unless_overwrite(tmp_path):
    uri = str(tmp_path / "s.zarr")
    open_saliency_for_write(uri, _attrs(), ROWS)
    # Same run (another timestamp, dataset moved): resumable.
    group, found = open_saliency_for_write(
        uri, _attrs(dataset={"uri": "moved.zarr", "fingerprint": "sha256:" + "0" * 64}), ROWS
    )
    assert found["method"] == "smoothgrad"
    changes = {
        "method": dict(method="gradient", params={}),
        "params": dict(params={"samples": 11, "sigma": 0.15, "samples_batch_size": 10}),
        "normalization": dict(normalization="minmax"),
        "seed": dict(seed=1),
        "source_model": dict(
            source_model={"arch": "smallcnn", "checkpoint_sha256": "cd" * 32, "variant": None}
        ),
        "dataset": dict(dataset={"uri": "d.zarr", "fingerprint": "sha256:" + "1" * 64}),
        "compute": dict(compute={"batch_size": 16, "amp": False}),
    }
    for key, over in changes.items():
        with pytest.raises(SatpipeError, match=f"exists with {key}=.*--overwrite"):
            open_saliency_for_write(uri, _attrs(**over), ROWS)
    with pytest.raises(SatpipeError, match="shards hold 8 rows"):
        open_saliency_for_write(uri, _attrs(), {"train": 4, "test": 8})
    group, found = open_saliency_for_write(uri, _attrs(method="gradient"), ROWS, overwrite=True)
    assert found["method"] == "gradient" and not done_shards(group, "train").any()


def test_refuses_non_saliency_store(tmp_path, tiny_dataset):
    with pytest.raises(SatpipeError, match="is a dataset store, not a saliency store"):
        open_saliency_for_write(tiny_dataset, _attrs(), ROWS)
