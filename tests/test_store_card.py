"""Stores that describe themselves: the README.md card and gallery that `store publish` and
`store score` write, and `satpipe store ls` over a local shelf and over S3 (moto)."""

from __future__ import annotations

import json

import fsspec
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.data.inspect import verify_store
from satpipe.data.saliency_store import open_saliency
from satpipe.data.shelf import list_stores
from tests.conftest import write_tiny_dataset, write_tiny_saliency

runner = CliRunner()


def _shelf(root):
    data = write_tiny_dataset(root / "tiny.zarr", n_train=16, n_test=8, size=8)
    sal = write_tiny_saliency(root / "masks.zarr", data)
    (root / "notes").mkdir()  # not a store: left out of the listing
    return data, sal


def _cat(uri: str, options=None) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri, **dict(options or {}))
    return fs.cat_file(path)


def test_score_writes_a_card_and_ls_lists_the_local_shelf(tmp_path):
    data, sal = _shelf(tmp_path)
    scored = runner.invoke(app, ["store", "score", sal, "--scores", "pointing-game"])
    assert scored.exit_code == 0, scored.output
    card = (tmp_path / "masks.zarr" / "README.md").read_text()
    assert "saliency store" in card and "`mask`" in card and "`sign`" in card
    assert open_saliency(sal).attrs["dataset"]["fingerprint"] in card
    assert "pointing-game" in card and "chance" in card and "train 16" in card
    assert f'sp.SaliencyDataset("{data}", "{sal}"' in card and "zarr.open_group" in card
    assert (tmp_path / "masks.zarr" / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    assert verify_store(sal) == [] and open_saliency(sal).complete  # the extra files are inert

    listed = runner.invoke(app, ["store", "ls", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ["name", "kind"]
    assert lines[1].split()[:2] == ["masks.zarr", "saliency"] and "train:16" in lines[1]
    assert "yes" in lines[1] and "pointing-game 1.00 (chance" in lines[1]
    assert lines[2].split()[:2] == ["tiny.zarr", "dataset"] and "train:16 test:8" in lines[2]
    records = json.loads(runner.invoke(app, ["store", "ls", str(tmp_path), "--json"]).output)
    assert [r["name"] for r in records] == ["masks.zarr", "tiny.zarr"]
    assert records[0]["method"] == "mask" and records[0]["quality"]["score"] == "pointing-game"
    assert records[0]["uri"] == sal and records[1]["rows"] == {"train": 16, "test": 8}
    assert [r["name"] for r in list_stores(sal)] == ["masks.zarr"]  # a store as its own prefix

    bad = runner.invoke(app, ["store", "ls", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "nowhere" in bad.output


def test_publish_to_s3_writes_the_card_and_ls_lists_the_bucket(s3, tmp_path):
    data, sal = _shelf(tmp_path)
    so = s3.storage_options
    prefix = s3.url("shelf")
    for local, name in ((data, "tiny.zarr"), (sal, "masks.zarr")):
        result = runner.invoke(app, ["store", "publish", local, f"{prefix}/{name}",
                                     *s3.cli_options])  # fmt: skip
        assert result.exit_code == 0, result.output
    card = _cat(f"{prefix}/masks.zarr/README.md", so).decode()
    assert "saliency store" in card and f"{prefix}/masks.zarr" in card
    assert _cat(f"{prefix}/masks.zarr/gallery.png", so)[:4] == b"\x89PNG"
    assert "dataset store" in _cat(f"{prefix}/tiny.zarr/README.md", so).decode()
    assert verify_store(f"{prefix}/masks.zarr", storage_options=so) == []

    listed = runner.invoke(app, ["store", "ls", prefix, "--json", *s3.cli_options])
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.output)
    assert [(r["name"], r["kind"], r["complete"]) for r in records] == [
        ("masks.zarr", "saliency", True), ("tiny.zarr", "dataset", True)
    ]  # fmt: skip
    assert records[0]["uri"] == f"{prefix}/masks.zarr" and records[0]["rows"] == {"train": 16}
