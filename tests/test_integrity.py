"""Readers trust nothing they have not checked (issue 16): a store that lacks an object, or
whose data is not what it was written with, is refused by every reader with one line.

Every store here is damaged on disk the way it happens: an object deleted, an object swapped
for the same object of another store with the same layout (a sync that mixed two versions:
the chunk's own crc32c is fine, only the digests recorded at write time can tell), and stores
written by an older satpipe (their attributes without `features`) are refused with the
command that rebuilds them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import DatasetWriter, open_dataset
from satpipe.data.inspect import format_info, store_info, verify_store
from satpipe.data.loader import LoaderOptions, make_loader
from satpipe.data.publish import publish_store
from satpipe.data.saliency_store import open_saliency
from satpipe.data.storage import ATTR
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.eval.evaluate import evaluate
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset


def shard_file(uri: str, array: str, k: int) -> Path:
    """The object of shard k of `array` (one shard across all axes but the first)."""
    arr = zarr.open_group(uri, mode="r")[array]
    return Path(uri, array, arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1)))


def one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An intact dataset (2 train shards of 8 rows, 1 test shard), its mask saliency store,
    a second dataset with the same layout and other pixels, and a 1-epoch run on the first."""
    root = tmp_path_factory.mktemp("integrity")
    data = write_tiny_dataset(root / "d.zarr", n_train=16, n_test=8, size=8, rows_per_shard=8)
    other = write_tiny_dataset(
        root / "o.zarr", n_train=16, n_test=8, size=8, rows_per_shard=8, seed=9
    )
    sal = compute_saliency(
        SaliencyConfig(method="mask", data=data, out=str(root / "s.zarr"), device="cpu")
    )
    run = train(_train_config(data, root / "run", variant="original"))
    return {"root": root, "data": data, "other": other, "saliency": sal, "run": run}


def _train_config(data: str, out: Path, **kw) -> TrainConfig:
    base = dict(
        variant="original", data=data, out=str(out), model="smallcnn", epochs=1, batch_size=8,
        augment=False, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _copy(made, tmp_path, name: str) -> str:
    dst = tmp_path / Path(made[name]).name
    shutil.copytree(made[name], dst)
    return str(dst)


# --------------------------------------------------------------------------------------------
# 1. Every reader checks the inventory at open


@pytest.mark.parametrize(
    "array, k, rows",
    [("train/images", 0, "0:8"), ("train/labels", 1, "8:16"), ("test/masks", 0, "0:8")],
)
def test_a_deleted_dataset_object_is_refused_by_every_reader(made, tmp_path, array, k, rows):
    data = _copy(made, tmp_path, "data")
    shard_file(data, array, k).unlink()
    want = (data, array, f"rows {rows} (shard {k})", "no stored data")

    with pytest.raises(SatpipeError) as err:
        open_dataset(data)
    one_line(err, *want)
    split = array.split("/")[0]
    for mode in ("resident", "streaming"):
        with pytest.raises(SatpipeError) as err:
            make_loader(data, split, mode=mode)
        one_line(err, *want)

    info = store_info(data)
    assert info["complete"] is False and info["marked_complete"] is True
    assert any(array in m and f"rows {rows}" in m for m in info["missing"]), info["missing"]
    assert "INCOMPLETE, though marked complete" in format_info(info).splitlines()[0]

    with pytest.raises(SatpipeError) as err:
        train(_train_config(data, tmp_path / "run"))
    one_line(err, *want)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    with pytest.raises(SatpipeError) as err:
        compute_saliency(
            SaliencyConfig(method="mask", data=data, out=str(tmp_path / "s.zarr"), device="cpu")
        )
    one_line(err, *want)
    assert not (tmp_path / "s.zarr").exists()

    if split == "test":  # eval reads the test split
        with pytest.raises(SatpipeError) as err:
            evaluate(made["run"], data=data, out=str(tmp_path / "eval"), device="cpu",
                     eps=(1.0,), steps=1)  # fmt: skip
        one_line(err, *want)

    with pytest.raises(SatpipeError) as err:
        publish_store(data, str(tmp_path / "pub.zarr"))
    one_line(err, *want)
    assert not (tmp_path / "pub.zarr").exists()
    assert any(array in p and "no stored data" in p for p in verify_store(data))


def test_the_cli_says_incomplete_and_refuses_on_one_line(made, tmp_path):
    data = _copy(made, tmp_path, "data")
    shard_file(data, "train/images", 0).unlink()
    runner = CliRunner()
    info = runner.invoke(app, ["store", "info", data])
    assert info.exit_code == 0 and "INCOMPLETE" in info.output.splitlines()[0]
    as_json = runner.invoke(app, ["store", "info", data, "--json"])
    assert json.loads(as_json.output)["complete"] is False
    for args in (
        ["train", "--variant", "original", "--data", data, "--out", str(tmp_path / "r"),
         "--model", "smallcnn", "--epochs", "1", "--device", "cpu"],
        ["saliency", "--method", "mask", "--data", data, "--out", str(tmp_path / "s.zarr")],
        ["store", "publish", data, str(tmp_path / "p.zarr")],
    ):  # fmt: skip
        result = runner.invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith("satpipe: error: ") and "train/images rows 0:8" in lines[0]


def test_a_deleted_map_with_its_done_marker_is_refused_then_recomputed(made, tmp_path):
    sal = _copy(made, tmp_path, "saliency")
    want = zarr.open_group(sal, mode="r")["train/saliency"][:]
    shard_file(sal, "train/saliency", 1).unlink()
    assert zarr.open_group(sal, mode="r")["train/done"][1] == 1  # the marker is intact

    with pytest.raises(SatpipeError) as err:
        open_saliency(sal)
    one_line(err, sal, "train/saliency rows 8:16 (shard 1)")
    with pytest.raises(SatpipeError) as err:
        train(_train_config(made["data"], tmp_path / "run", variant="sat", saliency=sal))
    one_line(err, sal, "train/saliency rows 8:16")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert store_info(sal)["complete"] is False

    # Rerunning the saliency stage computes the lost shard again, to the same bytes; and a
    # shard cut short (a half-copied object) likewise.
    config = SaliencyConfig(method="mask", data=made["data"], out=sal, device="cpu")
    assert compute_saliency(config) == sal
    got = open_saliency(sal)
    assert got.complete and got.split("train")[:].tobytes() == want.tobytes()
    shard = shard_file(sal, "train/saliency", 0)
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(SatpipeError, match="train/saliency rows 0:8 .shard 0.: object is"):
        open_saliency(sal)
    assert compute_saliency(config) == sal
    assert open_saliency(sal).split("train")[:].tobytes() == want.tobytes()


def test_every_chunk_is_stored_even_when_it_equals_the_fill_value(tmp_path):
    # zarr elides a chunk equal to the fill value by default: a labels shard of class 0 and an
    # all-black images shard would leave no object, indistinguishable from a lost one.
    uri = str(tmp_path / "zeros.zarr")
    with DatasetWriter(uri, name="z", classes=["a", "b"], image_shape=(4, 4, 3),
                       split_sizes={"train": 8}, rows_per_shard=4) as writer:  # fmt: skip
        writer.write("train", np.zeros((4, 4, 4, 3), np.uint8), np.zeros(4, np.int64))
        writer.write("train", np.full((4, 4, 4, 3), 7, np.uint8), np.ones(4, np.int64))
    for array in ("train/images", "train/labels"):
        assert shard_file(uri, array, 0).is_file(), array
    attrs = open_dataset(uri).attrs
    assert {"every-chunk", "shard-sha256"} <= set(attrs["features"])
    shard_file(uri, "train/labels", 0).unlink()  # so a lost labels shard is now refused
    with pytest.raises(SatpipeError, match="train/labels rows 0:4"):
        open_dataset(uri)


def _make_older(uri: str, *, drop: tuple[str, ...] = ("shards",)) -> None:
    """Attributes as an older satpipe wrote them: no `features`, and none of `drop`."""
    group = zarr.open_group(uri, mode="r+")
    attrs = dict(group.attrs[ATTR])
    for key in ("features", *drop):
        attrs.pop(key, None)
    group.attrs[ATTR] = attrs


def _refused_everywhere(uri: str, opener, rebuild: str) -> None:
    """`opener`, `store info` and `store verify` refuse `uri` with the one older-store line."""
    want = (uri, "written by an older satpipe", f"rebuild it: {rebuild}", "--overwrite")
    with pytest.raises(SatpipeError) as err:
        opener(uri)
    one_line(err, *want)
    for command in ("info", "verify"):
        result = CliRunner().invoke(app, ["store", command, uri])
        assert result.exit_code != 0, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and all(part in lines[0] for part in want), result.output


def test_an_older_dataset_store_is_refused_with_how_to_rebuild_it(made, tmp_path):
    data = _copy(made, tmp_path, "data")
    _make_older(data)
    _refused_everywhere(data, open_dataset, f"satpipe data import FORMAT SRC --out {data}")
    with pytest.raises(SatpipeError, match="no shard digests"):
        make_loader(data, "train", mode="resident")


def test_an_older_saliency_store_is_refused_with_how_to_rebuild_it(made, tmp_path):
    sal = _copy(made, tmp_path, "saliency")
    _make_older(sal, drop=())
    _refused_everywhere(
        sal, open_saliency, f"satpipe saliency --method mask --data {made['data']} --out {sal}"
    )
    # A run that would resume it is refused too; --overwrite rebuilds it.
    config = SaliencyConfig(method="mask", data=made["data"], out=sal, device="cpu")
    with pytest.raises(SatpipeError, match="written by an older satpipe .*no shard sizes"):
        compute_saliency(config)
    compute_saliency(dataclasses.replace(config, overwrite=True))
    assert open_saliency(sal).attrs["features"] == ["every-chunk", "shard-bytes"]


def test_one_listing_per_array_on_s3(s3, made, monkeypatch):
    import s3fs

    url, so = s3.url("listed.zarr"), s3.storage_options
    publish_store(made["data"], url, dst_options=so)
    calls = []
    real = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append(method)
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    s3fs.S3FileSystem.clear_instance_cache()
    open_dataset(url, so)
    lists = [c for c in calls if c.startswith("list")]
    assert len(lists) == 8, calls  # train and test: images, labels, masks, boxes

    fs = s3fs.S3FileSystem(**so, skip_instance_cache=True)
    fs.rm(f"{url[len('s3://') :]}/test/boxes/c/0/0")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(SatpipeError) as err:
        open_dataset(url, so)
    one_line(err, url, "test/boxes rows 0:8 (shard 0)")


# --------------------------------------------------------------------------------------------
# 2. The fingerprint, checked in flight


def _swap(made, tmp_path, array: str, k: int) -> str:
    """A copy of the dataset whose shard k of `array` comes from the other dataset: every
    object is a valid zarr object with a good checksum, the data is not what was recorded.
    The recorded object size is made to match (as it does for incompressible pixels), so
    that only the digests can tell."""
    data = _copy(made, tmp_path, "data")
    target = shard_file(data, array, k)
    shutil.copyfile(shard_file(made["other"], array, k), target)
    group = zarr.open_group(data, mode="r+")
    attrs = dict(group.attrs[ATTR])
    split, name = array.split("/")
    attrs["shards"][split]["bytes"][name][k] = target.stat().st_size
    group.attrs[ATTR] = attrs
    return data


def test_a_half_copied_object_is_refused_at_open(made, tmp_path):
    data = _copy(made, tmp_path, "data")
    shard = shard_file(data, "train/images", 1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SatpipeError) as err:
        open_dataset(data)
    one_line(err, data, "train/images rows 8:16 (shard 1): object is", "truncated")
    assert store_info(data)["complete"] is False
    with pytest.raises(SatpipeError):
        make_loader(data, "train", mode="streaming")


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_the_trainer_stops_before_its_first_checkpoint_on_changed_data(made, tmp_path, mode):
    data = _swap(made, tmp_path, "train/images", 1)
    open_dataset(data)  # the inventory is fine: only the digests can tell
    with pytest.raises(SatpipeError) as err:
        train(_train_config(data, tmp_path / "run", loader_mode=mode))
    one_line(err, data, "train/images rows 8:16 (shard 1)", "differ from the data")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_saliency_store_is_trained_only_with_the_data_it_was_made_for(made, tmp_path):
    # The dataset's attributes still carry the fingerprint the saliency store was made for,
    # so the pairing check passes; its labels are no longer that data.
    data = _swap(made, tmp_path, "train/labels", 0)
    config = _train_config(
        data, tmp_path / "run", variant="sat", saliency=made["saliency"], loader_mode="streaming"
    )
    with pytest.raises(SatpipeError) as err:
        train(config)
    one_line(err, data, "train/labels rows 0:8 (shard 0)")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_saliency_runner_marks_no_shard_done_from_changed_data(made, tmp_path):
    data = _swap(made, tmp_path, "train/masks", 1)
    out = tmp_path / "s.zarr"
    with pytest.raises(SatpipeError) as err:
        compute_saliency(SaliencyConfig(method="mask", data=data, out=str(out), device="cpu"))
    one_line(err, data, "train/masks rows 8:16 (shard 1)")
    done = zarr.open_group(str(out), mode="r")["train/done"][:]
    assert done.tolist() == [1, 0]  # shard 0 (intact data) only
    problems = verify_store(data)
    assert any(p.startswith("train/masks: 1 of 2 shards differ") for p in problems), problems


def test_streaming_ranks_check_each_shard_once_between_them(tmp_path):
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=30, n_test=0, size=4, rows_per_shard=4)
    for drop_last in (False, True):
        checked = []
        for rank in range(3):
            options = LoaderOptions(4, mode="streaming", rank=rank, world_size=3,
                                    drop_last=drop_last, seed=1)  # fmt: skip
            loader = make_loader(data, "train", options=options)
            for _ in loader:
                pass
            loader.finish_check()
            checked.append(loader._check.checked)
        # 8 shards; each checked by exactly one rank (the one holding its first row).
        assert sum(checked) == 8 and all(c > 0 for c in checked), (drop_last, checked)


def test_intact_stores_pass_every_check(made, tmp_path):
    for mode in ("resident", "streaming"):
        run = train(_train_config(made["data"], tmp_path / mode, loader_mode=mode))
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 0
        loader = make_loader(made["data"], "train", mode=mode)
        for _ in loader:
            pass
        loader.finish_check()
        assert loader._check.checked == 2 and loader._check.finished


def test_verify_names_a_cut_short_object_of_either_store(made, tmp_path):
    for name, array in (("data", "train/images"), ("saliency", "train/saliency")):
        uri = _copy(made, tmp_path, name)
        shard = shard_file(uri, array, 1)
        shard.write_bytes(shard.read_bytes()[:-5])
        problems = verify_store(uri)
        assert any(p.startswith(f"{array} rows 8:16 (shard 1): object is") for p in problems), (
            problems
        )
