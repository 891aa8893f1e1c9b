"""`store info` and `store verify` on dataset stores and hand-written saliency stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.inspect import format_info, store_info, verify_store
from satpipe.data.storage import ATTR
from satpipe.data.synthetic import write_saliency_maps

from .conftest import write_tiny_dataset


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _set_attr(uri: str, **changes) -> None:
    group = zarr.open_group(uri, mode="r+")
    attrs = dict(group.attrs[ATTR])
    attrs.update(changes)
    group.attrs[ATTR] = attrs


def _random_maps(dataset: str, normalization: str, channels: int = 1) -> np.ndarray:
    """Maps in the normalisation's range, one per train row of `dataset`."""
    n, h, w, _ = open_dataset(dataset).split("train").images.shape
    maps = np.random.default_rng(0).uniform(-1, 1, (n, h, w, channels))
    if normalization == "minmax":
        maps = (maps + 1) / 2
    elif normalization == "sign":
        maps = np.sign(np.round(maps))
    return maps


def _write_saliency(
    uri,
    dataset: str,
    normalization: str = "signed-maxabs",
    channels: int = 1,
    rows_per_shard: int = 8,
    complete: bool = True,
    maps: np.ndarray | None = None,
) -> str:
    """A saliency store of `maps` (random ones in the normalisation's range by default)."""
    if maps is None:
        maps = _random_maps(dataset, normalization, channels)
    return write_saliency_maps(
        uri, dataset, maps, rows_per_shard=rows_per_shard, complete=complete,
        method="gradient", normalization=normalization,
        source_model={"arch": "smallcnn", "checkpoint_sha256": "0" * 64, "variant": None},
        created="2024-01-01T00:00:00Z", satpipe_version="0.1.0",
    )  # fmt: skip


def _shard_file(uri: str, array: str, k: int) -> Path:
    arr = zarr.open_group(uri, mode="r")[array]
    return Path(uri, array, arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1)))


# ---- info -------------------------------------------------------------------------------------


def test_info_of_a_dataset_store(tiny_dataset):
    info = store_info(tiny_dataset)
    assert info["kind"] == "dataset" and info["complete"] is True
    assert info["classes"] == ["c0", "c1", "c2", "c3"] and info["rows"] == {"train": 32, "test": 16}
    images = info["arrays"]["train/images"]
    assert images["shape"] == [32, 16, 16, 3] and images["dtype"] == "uint8"
    assert images["shards"][0] == 8 and images["n_shards"] == 4
    assert "Crc32cCodec" in images["compressors"]
    assert info["arrays"]["test/boxes"]["dtype"] == "int32"
    assert info["attrs"]["source"]["generator"] == "tests.write_tiny_dataset"
    text = format_info(info)
    assert "dataset store (format 1), complete" in text and "c0, c1, c2, c3" in text
    assert "train/masks" in text


def test_info_cli_text_and_json(tiny_dataset, tmp_path):
    result = _run("store", "info", tiny_dataset, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["fingerprint"].startswith("sha256:") and info["num_classes"] == 4
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset)
    text = _run("store", "info", sal)
    assert text.exit_code == 0 and "saliency store" in text.output
    assert "shards done: train 4/4" in text.output and "signed-maxabs" in text.output
    missing = _run("store", "info", str(tmp_path / "nothing.zarr"))
    assert missing.exit_code == 1 and "no zarr v3 store here" in missing.output


# ---- verify: datasets -------------------------------------------------------------------------


def test_a_good_dataset_store_verifies(tiny_dataset):
    assert verify_store(tiny_dataset) == []
    result = _run("store", "verify", tiny_dataset)
    assert result.exit_code == 0 and result.output.strip().endswith(": ok")


def test_a_corrupted_chunk_is_reported_with_its_array(tiny_dataset):
    shard = _shard_file(tiny_dataset, "train/images", 1)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_store(tiny_dataset)
    assert any(p.startswith("train/images: rows 8:16 unreadable") for p in problems), problems
    assert any("checksum" in p for p in problems)
    assert "fingerprint not checked: train/images unreadable" in problems
    result = _run("store", "verify", tiny_dataset)
    assert result.exit_code == 1 and "train/images: rows 8:16 unreadable" in result.output


def test_a_missing_shard_is_reported(tiny_dataset):
    _shard_file(tiny_dataset, "test/masks", 1).unlink()
    problems = verify_store(tiny_dataset)
    assert problems == [
        "test/masks rows 8:16 (shard 1) have no stored data (1 of 2 shards missing; zarr would "
        "read them as zeros)"
    ]


def test_changed_content_is_reported(tiny_dataset):
    group = zarr.open_group(tiny_dataset, mode="r+")
    group["train/labels"][3] = 7
    group["train/masks"][5, 0, 0] = 2
    group["test/boxes"][2] = [0, 0, 17, 4]
    group["test/boxes"][4] = [3, 3, 3, 9]
    problems = verify_store(tiny_dataset)
    assert "train/labels: 1 rows outside [0, 4) (rows 3)" in problems
    assert "train/masks: 1 rows not in {0, 1} (rows 5)" in problems
    assert "test/boxes: 2 rows outside the 16x16 image or empty (rows 2, 4)" in problems
    assert any(p.startswith("fingerprint mismatch") for p in problems)
    # Each changed shard also fails the sha256 recorded for it when the store was written.
    digest = "shards differ from the sha256 recorded when the store was written"
    assert f"train/labels: 1 of 4 {digest}: 0 (rows 0:8)" in problems
    assert f"train/masks: 1 of 4 {digest}: 0 (rows 0:8)" in problems
    assert f"test/boxes: 1 of 2 {digest}: 0 (rows 0:8)" in problems
    # Rewritten shard objects usually differ in size from what the writer recorded, too.
    resized = [p for p in problems if "were written (a truncated or altered copy)" in p]
    assert len(problems) - len(resized) == 7, problems


def test_a_changed_pixel_breaks_the_fingerprint(tiny_dataset):
    group = zarr.open_group(tiny_dataset, mode="r+")
    pixel = int(group["test/images"][0, 0, 0, 0])
    group["test/images"][0, 0, 0, 0] = (pixel + 1) % 256
    problems = verify_store(tiny_dataset)
    assert len(problems) == 2 and problems[1].startswith("fingerprint mismatch: recorded sha256:")
    assert problems[0].startswith("test/images: 1 of 2 shards differ from the sha256")


def test_incomplete_and_wrong_dtype(tmp_path):
    uri = write_tiny_dataset(tmp_path / "d.zarr")
    _set_attr(uri, complete=False)
    assert verify_store(uri) == ["not marked complete (its writer did not finish)"]
    group = zarr.open_group(uri, mode="r+")
    del group["test/labels"]
    group.create_array("test/labels", shape=(16,), dtype="int32", chunks=(8,))
    # The metadata says int32 where the contract says int64: nothing else is read.
    assert verify_store(uri) == ["test/labels: data type 'int32', the contract says int64"]


def test_verify_refuses_what_is_not_a_satpipe_store(tmp_path, tiny_dataset):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(SatpipeError, match="not a satpipe store"):
        verify_store(str(tmp_path / "plain.zarr"))
    with pytest.raises(SatpipeError, match="--data applies to saliency stores"):
        verify_store(tiny_dataset, data=tiny_dataset)
    result = _run("store", "verify", str(tmp_path / "plain.zarr"))
    assert result.exit_code == 1 and "not a satpipe store" in result.output


# ---- verify: saliency -------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["signed-maxabs", "minmax", "sign"])
def test_good_saliency_stores_verify(tiny_dataset, tmp_path, normalization):
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset, normalization, channels=3)
    assert verify_store(sal) == []
    assert verify_store(sal, data=tiny_dataset) == []


@pytest.mark.parametrize(
    "normalization, value, what",
    [
        ("signed-maxabs", 1.5, "values outside signed-maxabs range [-1, 1]"),
        ("minmax", -0.25, "values outside minmax range [0, 1]"),
        ("sign", 0.5, "values outside sign range [-1, 1] or not in {-1, 0, 1}"),
        ("signed-maxabs", np.nan, "NaN or Inf"),
        ("minmax", np.inf, "NaN or Inf"),
    ],
)
def test_bad_saliency_values_are_reported(tiny_dataset, tmp_path, normalization, value, what):
    maps = _random_maps(tiny_dataset, normalization)
    maps[9, 1, 2, 0] = value
    maps[30, 0, 0, 0] = value
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset, normalization, maps=maps)
    assert verify_store(sal) == [f"train/saliency: 2 maps with {what} (rows 9, 30)"]


def test_unfinished_saliency_store(tiny_dataset, tmp_path):
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset, complete=False)
    group = zarr.open_group(sal, mode="r+")
    group["train/done"][2] = 0
    problems = verify_store(sal)
    assert problems == [
        "train/done: 1 of 4 shards not done (shards 2)",
        "not marked complete (its writer did not finish)",
    ]
    _shard_file(sal, "train/saliency", 3).unlink()
    assert any(
        p.startswith("train/saliency rows 24:32 (shard 3) have no stored data (1 of 4 shards")
        for p in verify_store(sal)
    )


def test_saliency_corrupted_chunk(tiny_dataset, tmp_path):
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset)
    shard = _shard_file(sal, "train/saliency", 0)
    raw = bytearray(shard.read_bytes())
    raw[5] ^= 0x5A
    shard.write_bytes(bytes(raw))
    problems = verify_store(sal)
    assert len(problems) == 1 and problems[0].startswith("train/saliency: rows 0:8 unreadable")


def test_saliency_against_another_dataset(tiny_dataset, tmp_path):
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset)
    other = write_tiny_dataset(tmp_path / "other.zarr", seed=1)
    problems = verify_store(sal, data=other)
    assert len(problems) == 1 and problems[0].startswith("dataset fingerprint mismatch")
    bigger = write_tiny_dataset(tmp_path / "bigger.zarr", size=12)
    problems = verify_store(sal, data=bigger)
    assert any("shape (32, 16, 16, 1) does not match images (32, 12, 12, 3)" in p for p in problems)
    result = _run("store", "verify", sal, "--data", other)
    assert result.exit_code == 1 and "dataset fingerprint mismatch" in result.output
    ok = _run("store", "verify", sal, "--data", tiny_dataset)
    assert ok.exit_code == 0, ok.output


def test_unknown_normalization_and_missing_fingerprint(tiny_dataset, tmp_path):
    sal = _write_saliency(tmp_path / "s.zarr", tiny_dataset)
    _set_attr(sal, normalization="zscore", dataset={"uri": tiny_dataset})
    problems = verify_store(sal)
    assert (
        "attrs: unknown normalization 'zscore' (expected one of signed-maxabs, minmax, sign)"
        in (problems)
    )
    assert "attrs: no dataset fingerprint recorded" in problems


# ---- object storage ---------------------------------------------------------------------------


def test_make_info_verify_on_s3(s3):
    import s3fs

    from satpipe.data.shapes import make_shapes

    url = s3.url("shapes.zarr")
    make_shapes(url, n_train=20, n_test=8, size=16, storage_options=s3.storage_options)
    info = store_info(url, s3.storage_options)
    assert info["complete"] and info["rows"] == {"train": 20, "test": 8}
    result = _run("store", "verify", url, *s3.cli_options)
    assert result.exit_code == 0, result.output
    fs = s3fs.S3FileSystem(**s3.storage_options)
    fs.rm(f"{url[len('s3://') :]}/train/boxes/c/0/0")
    assert verify_store(url, storage_options=s3.storage_options) == [
        "train/boxes rows 0:20 (shard 0) have no stored data (1 of 1 shards missing; zarr would "
        "read them as zeros)",
        "train/boxes: 20 rows outside the 16x16 image or empty (rows 0, 1, 2, ...)",
    ]
