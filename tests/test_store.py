import dask.array as da
import numpy as np
import pytest
import zarr

from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import DatasetWriter, compute_fingerprint, open_dataset
from satpipe.data.saliency_store import open_saliency
from satpipe.data.storage import row_layout

from .conftest import write_tiny_dataset


def test_store_opens_with_plain_zarr_and_dask(tiny_dataset):
    group = zarr.open_group(tiny_dataset, mode="r")
    attrs = group.attrs["satpipe"]
    assert attrs["kind"] == "dataset" and attrs["complete"] is True
    images = da.from_zarr(tiny_dataset, component="train/images")
    assert images.shape == (32, 16, 16, 3) and images.dtype == np.uint8
    assert group["train/masks"].shape == (32, 16, 16)
    codecs = group["train/images"].metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    assert {"name": "crc32c"} in [dict(c) for c in codecs]


def test_fingerprint_is_deterministic_and_recomputable(tmp_path):
    a = write_tiny_dataset(tmp_path / "a.zarr", seed=3)
    b = write_tiny_dataset(tmp_path / "b.zarr", seed=3, rows_per_shard=16)
    c = write_tiny_dataset(tmp_path / "c.zarr", seed=4)
    fa, fb, fc = (open_dataset(u).fingerprint for u in (a, b, c))
    assert fa == fb != fc
    assert compute_fingerprint(open_dataset(a)) == fa


def test_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 10)
    with DatasetWriter(
        tmp_path / "r.zarr",
        name="r",
        classes=["a", "b", "c"],
        image_shape=(5, 7, 3),
        split_sizes={"train": 10},
        rows_per_shard=4,
    ) as w:
        w.write("train", images[:3], labels[:3])
        w.write("train", images[3:], labels[3:])
    view = open_dataset(str(tmp_path / "r.zarr"))
    np.testing.assert_array_equal(view.split("train").images[:], images)
    np.testing.assert_array_equal(view.split("train").labels[:], labels)
    assert view.classes == ["a", "b", "c"] and view.splits == ["train"]


def test_interrupted_writer_is_not_complete(tmp_path):
    uri = tmp_path / "x.zarr"
    with (
        pytest.raises(SatpipeError, match="out of range"),
        DatasetWriter(
            uri, name="x", classes=["a"], image_shape=(2, 2, 3), split_sizes={"train": 4}
        ) as w,
    ):
        w.write("train", np.zeros((2, 2, 2, 3), np.uint8), [0, 5])
    assert zarr.open_group(str(uri), mode="r").attrs["satpipe"]["complete"] is False
    with pytest.raises(SatpipeError, match="incomplete"):
        open_dataset(str(uri))


def test_refuses_existing_output_and_bad_boxes(tmp_path, tiny_dataset):
    with pytest.raises(SatpipeError, match="exists"):
        write_tiny_dataset(tiny_dataset)
    with (
        pytest.raises(SatpipeError, match="outside"),
        DatasetWriter(
            tmp_path / "b.zarr",
            name="b",
            classes=["a"],
            image_shape=(4, 4, 3),
            split_sizes={"train": 1},
            has_boxes=True,
        ) as w,
    ):
        w.write("train", np.zeros((1, 4, 4, 3), np.uint8), [0], boxes=[[0, 0, 5, 4]])


def test_kind_mismatch_is_one_line(tiny_dataset):
    with pytest.raises(SatpipeError, match="not a saliency store"):
        open_saliency(tiny_dataset)


def test_row_layout_divides():
    for row_bytes, n, shard in [(3072, 1000, None), (12288, 50000, None), (2048, 100, 24)]:
        chunk, rows = row_layout(row_bytes, n, shard)
        assert rows % chunk == 0 and chunk >= 1
