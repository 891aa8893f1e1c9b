"""Stores on object storage: a real S3 API (moto's server on 127.0.0.1), not a mock of satpipe.

Every store function takes an fsspec URL; these tests write, read, publish, compute saliency
into and train from `s3://` URLs, and read what satpipe wrote with plain zarr and dask.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import fsspec
import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import DatasetWriter, compute_fingerprint, open_dataset
from satpipe.data.inspect import store_info, verify_store
from satpipe.data.publish import publish_store
from satpipe.data.storage import remove_store, store_exists
from satpipe.train.checkpoint import file_sha256, model_record, save_checkpoint
from satpipe.train.models import create_model

from .conftest import write_tiny_dataset
from .s3server import clear_fsspec_caches

runner = CliRunner()


def _rows(seed: int = 0, n: int = 10, shape=(6, 5, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 3, n)


def _tree(uri: str, options=None) -> dict[str, bytes]:
    """{key: bytes} of every object of a store (local path or URL)."""
    fs, root = fsspec.core.url_to_fs(uri, **dict(options or {}))
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def tiny_checkpoint(path: Path, num_classes: int = 4, seed: int = 0) -> str:
    """A smallcnn source model (untrained, seeded) saved as a satpipe checkpoint."""
    torch.manual_seed(seed)
    model = create_model("smallcnn", num_classes)
    save_checkpoint(path, {"model": model_record(model, num_classes, 3), "variant": "original"})
    return str(path)


# --------------------------------------------------------------------------------------------
# Dataset stores straight to S3


def test_dataset_store_on_s3_reads_back_with_satpipe_zarr_and_dask(s3):
    uri, so = s3.url("d.zarr"), s3.storage_options
    images, labels = _rows()
    with DatasetWriter(
        uri,
        name="d",
        classes=["a", "b", "c"],
        image_shape=(6, 5, 3),
        split_sizes={"train": 10},
        rows_per_shard=4,
        storage_options=so,
    ) as writer:
        writer.write("train", images[:7], labels[:7])
        writer.write("train", images[7:], labels[7:])
    assert store_exists(uri, so)

    view = open_dataset(uri, so)
    with pytest.raises(ValueError, match="read-only"):  # consumers cannot write by mistake
        view.split("train").images[0] = 0
    np.testing.assert_array_equal(view.split("train").images[:], images)
    np.testing.assert_array_equal(view.split("train").labels[:], labels)
    assert compute_fingerprint(view) == view.fingerprint

    # Consumers without satpipe: plain zarr and dask with the same storage options.
    group = zarr.open_group(uri, mode="r", storage_options=so)
    assert group.attrs["satpipe"]["complete"] is True
    np.testing.assert_array_equal(group["train/images"][:], images)
    lazy = da.from_zarr(uri, component="train/labels", storage_options=so)
    np.testing.assert_array_equal(lazy.compute(), labels)

    remove_store(uri, so)
    assert not store_exists(uri, so)


def test_aws_environment_variables_reach_s3_without_options(s3, monkeypatch, tmp_path):
    for key, value in s3.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    clear_fsspec_caches()
    uri = write_tiny_dataset(s3.url("env.zarr"), n_train=8, n_test=4, size=8)
    local = write_tiny_dataset(tmp_path / "env.zarr", n_train=8, n_test=4, size=8)
    assert open_dataset(uri).fingerprint == open_dataset(local).fingerprint
    assert compute_fingerprint(open_dataset(uri)) == open_dataset(local).fingerprint


def test_file_url_is_a_local_store(tmp_path):
    uri = f"file://{tmp_path}/f.zarr"
    write_tiny_dataset(uri, n_train=8, n_test=4, size=8)
    assert (tmp_path / "f.zarr" / "zarr.json").is_file()
    assert open_dataset(uri).fingerprint == open_dataset(str(tmp_path / "f.zarr")).fingerprint


def test_missing_store_and_unreachable_s3_are_one_line_errors(s3, monkeypatch):
    for key, value in s3.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(SatpipeError, match="no zarr v3 store here"):
        open_dataset(s3.url("nothing.zarr"), s3.storage_options)
    uri = write_tiny_dataset(s3.url("down.zarr"), n_train=8, n_test=4, size=8)
    with s3.stopped(), pytest.raises(SatpipeError, match="storage unreachable") as err:
        open_dataset(uri, s3.fail_fast_options)
    assert "\n" not in str(err.value) and uri in str(err.value)
    with pytest.raises(SatpipeError, match="storage option not understood"):
        open_dataset(uri, dict(s3.storage_options, no_such_option="1"))
    with s3.stopped():  # the CLI turns it into one line and exit 1
        result = runner.invoke(app, ["store", "info", uri, *s3.cli_options])
    assert result.exit_code == 1
    assert result.output.strip().startswith("satpipe: error: ") and result.output.count("\n") == 1
    assert "storage unreachable" in result.output


# --------------------------------------------------------------------------------------------
# Publish


def test_publish_local_to_s3_and_back_is_byte_identical(s3, tmp_path):
    src = write_tiny_dataset(tmp_path / "src.zarr", n_train=16, n_test=8, size=8)
    dst = s3.url("pub.zarr")
    assert publish_store(src, dst, dst_options=s3.storage_options) == dst
    assert _tree(dst, s3.storage_options) == _tree(src)
    view = open_dataset(dst, s3.storage_options)
    assert view.complete and compute_fingerprint(view) == open_dataset(src).fingerprint

    back = tmp_path / "back" / "copy.zarr"  # parent folders are made
    publish_store(dst, str(back), src_options=s3.storage_options)
    assert _tree(str(back)) == _tree(src)

    with pytest.raises(SatpipeError, match="output exists"):
        publish_store(src, dst, dst_options=s3.storage_options)
    other = write_tiny_dataset(tmp_path / "other.zarr", n_train=8, n_test=4, size=8, seed=5)
    publish_store(other, dst, dst_options=s3.storage_options, overwrite=True)
    assert _tree(dst, s3.storage_options) == _tree(other)  # no stale objects left behind


def test_publish_refuses_incomplete_or_corrupt_source(s3, tmp_path):
    src = write_tiny_dataset(tmp_path / "src.zarr", n_train=8, n_test=4, size=8)
    meta = tmp_path / "src.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["satpipe"]["complete"] = False
    meta.write_text(json.dumps(doc))
    dst = s3.url("never.zarr")
    with pytest.raises(SatpipeError, match="incomplete"):
        publish_store(src, dst, dst_options=s3.storage_options)
    assert not store_exists(dst, s3.storage_options)

    src2 = write_tiny_dataset(tmp_path / "src2.zarr", n_train=8, n_test=4, size=8)
    shard = tmp_path / "src2.zarr" / "train" / "images" / "c" / "0" / "0" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(SatpipeError, match="verify failed"):
        publish_store(src2, dst, dst_options=s3.storage_options)
    assert not store_exists(dst, s3.storage_options)


def test_interrupted_publish_is_seen_as_incomplete_then_overwrite_finishes(
    s3, tmp_path, monkeypatch
):
    import s3fs

    src = write_tiny_dataset(tmp_path / "src.zarr", n_train=16, n_test=8, size=8)
    dst, so = s3.url("half.zarr"), s3.storage_options
    monkeypatch.setattr("satpipe.data.publish.BATCH_BYTES", 1)  # one object per batch
    real_pipe, calls = s3fs.S3FileSystem.pipe, []

    def failing_pipe(self, *args, **kwargs):  # the network dies after three batches
        calls.append(1)
        if len(calls) > 3:
            raise ConnectionError("connection reset by peer")
        return real_pipe(self, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "pipe", failing_pipe)
    with pytest.raises(SatpipeError, match="storage unreachable"):
        publish_store(src, dst, dst_options=so)
    # A reader sees a store that says it is incomplete, never a complete-looking partial one.
    assert zarr.open_group(dst, mode="r", storage_options=so).attrs["satpipe"]["complete"] is False
    with pytest.raises(SatpipeError, match="incomplete"):
        open_dataset(dst, so)

    monkeypatch.setattr(s3fs.S3FileSystem, "pipe", real_pipe)
    publish_store(src, dst, dst_options=so, overwrite=True)
    assert _tree(dst, so) == _tree(src)


def test_publish_cli(s3, tmp_path):
    src = write_tiny_dataset(tmp_path / "src.zarr", n_train=8, n_test=4, size=8)
    dst = s3.url("cli.zarr")
    result = runner.invoke(app, ["store", "publish", src, dst, *s3.cli_options])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(dst)
    published = _tree(dst, s3.storage_options)
    assert b"dataset store" in published.pop("README.md")  # its card, beside the objects
    assert published == _tree(src)
    again = runner.invoke(app, ["store", "publish", src, dst, *s3.cli_options])
    assert again.exit_code == 1 and "output exists" in again.output
    back = tmp_path / "back.zarr"
    dst_opts = ["--dst-storage-option", "key=unused"]  # local DST: options for SRC only
    result = runner.invoke(app, ["store", "publish", dst, str(back), *s3.cli_options, *dst_opts])
    assert result.exit_code == 0, result.output
    copied = _tree(str(back))
    assert str(back).encode() in copied.pop("README.md")  # the card names its own store
    assert copied == _tree(src)


# --------------------------------------------------------------------------------------------
# Saliency straight into S3, then train from S3


def same_saliency(a: str, b: str, options_a=None, options_b=None) -> None:
    """Equal maps, done markers and provenance (but the creation time and dataset URI)."""
    ga = zarr.open_group(a, mode="r", storage_options=options_a)
    gb = zarr.open_group(b, mode="r", storage_options=options_b)
    attrs_a, attrs_b = dict(ga.attrs["satpipe"]), dict(gb.attrs["satpipe"])
    for attrs in (attrs_a, attrs_b):
        attrs.pop("created")
        attrs["dataset"] = attrs["dataset"]["fingerprint"]
    assert attrs_a == attrs_b
    for split in attrs_a["splits"]:
        for name in ("saliency", "done"):
            xa, xb = ga[f"{split}/{name}"][:], gb[f"{split}/{name}"][:]
            assert xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes(), f"{split}/{name}"


def test_saliency_into_s3_matches_local_and_trains_from_s3(s3, tmp_path, monkeypatch):
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train

    for key, value in s3.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    so = s3.storage_options
    size = dict(n_train=16, n_test=8, size=8, rows_per_shard=4)
    data = write_tiny_dataset(s3.url("d.zarr"), **size)
    local_data = write_tiny_dataset(tmp_path / "d.zarr", **size)
    ckpt = tiny_checkpoint(tmp_path / "source.pt")
    run = dict(method="gradient", model=ckpt, device="cpu", batch_size=4)
    out = compute_saliency(
        SaliencyConfig(data=data, out=s3.url("s.zarr"), storage_options=so, **run)
    )
    local = compute_saliency(SaliencyConfig(data=local_data, out=str(tmp_path / "s.zarr"), **run))
    same_saliency(out, local, so)
    # Plain dask reads the maps from S3 without satpipe.
    maps = da.from_zarr(out, component="train/saliency", storage_options=so)
    assert maps.shape == (16, 8, 8, 3) and float(abs(maps).max().compute()) == 1.0

    # Provenance and verification on S3.
    info = store_info(out, so)
    assert info["complete"] and info["method"] == "gradient" and info["done"] == {"train": [4, 4]}
    assert info["attrs"]["source_model"]["checkpoint_sha256"] == file_sha256(ckpt)
    assert info["dataset"]["fingerprint"] == open_dataset(local_data).fingerprint
    assert verify_store(out, data=data, storage_options=so) == []
    shown = runner.invoke(app, ["store", "info", out, *s3.cli_options])
    assert shown.exit_code == 0, shown.output
    assert "gradient" in shown.output and file_sha256(ckpt)[:12] in shown.output
    checked = runner.invoke(app, ["store", "verify", out, "--data", data, *s3.cli_options])
    assert checked.exit_code == 0 and checked.output.strip() == f"{out}: ok", checked.output

    # Publishing the local store gives the same objects as computing straight into S3.
    published = publish_store(local, s3.url("pub.zarr"), dst_options=so)
    a, b = _tree(published, so), _tree(out, so)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "zarr.json")

    config = TrainConfig(
        variant="sat",
        data=data,
        saliency=out,
        out=str(tmp_path / "run"),
        model="smallcnn",
        epochs=1,
        batch_size=8,
        device="cpu",
        loader_mode="streaming",
        storage_options=so,
    )
    run_dir = train(config)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0]
    assert "storage_options" not in (run_dir / "config.json").read_text()  # no credentials


def test_storage_option_values_are_typed_like_fsspec_expects():
    from satpipe.cli._common import storage_options

    options = storage_options(
        ["anon=true", "use_ssl=false", "endpoint_url=http://127.0.0.1:9000", "max_concurrency=4",
         'client_kwargs={"region_name": "eu-west-1"}']
    )  # fmt: skip
    assert options == {
        "anon": True,
        "use_ssl": False,
        "endpoint_url": "http://127.0.0.1:9000",
        "max_concurrency": 4,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    with pytest.raises(SatpipeError, match="key=value"):
        storage_options(["anon"])
