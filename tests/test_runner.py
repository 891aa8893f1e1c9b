"""The shard runner end to end: provenance, determinism across runs, executors and interruptions,
refusals, weak maps, the CLI and the benchmark entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.saliency_store import check_pairing, open_saliency
from satpipe.pipeline.methods import get_method
from satpipe.pipeline.normalize import normalize
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency, shard_seed
from satpipe.train.checkpoint import file_sha256, model_record, save_checkpoint
from satpipe.train.models import create_model, load_model
from tests.conftest import write_tiny_dataset

SG = {"samples": 2, "sigma": 0.2, "samples_batch_size": 2}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 48-row dataset in 8-row shards (6 train + 2 test shards) and a smallcnn checkpoint."""
    root = tmp_path_factory.mktemp("runner")
    data = write_tiny_dataset(root / "d.zarr", n_train=48, n_test=16, size=8, rows_per_shard=8)
    torch.manual_seed(0)
    model = create_model("smallcnn", 4)
    ckpt = root / "m.pt"
    save_checkpoint(ckpt, {"model": model_record(model, 4, 3), "variant": "original"})
    return {"root": root, "data": data, "ckpt": str(ckpt)}


def _config(work, out, **over) -> SaliencyConfig:
    kw = dict(
        method="smoothgrad",
        params=SG,
        model=work["ckpt"],
        data=work["data"],
        out=str(work["root"] / out),
        batch_size=8,
        device="cpu",
    )
    kw.update(over)
    return SaliencyConfig(**kw)


def _files(uri) -> dict[str, bytes]:
    """Every file of a store except the root zarr.json (its attrs carry the `created` time)."""
    root = Path(uri)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / "zarr.json"
    }


def _attrs_but_created(uri) -> dict:
    attrs = dict(open_saliency(uri).attrs)
    attrs.pop("created")
    return attrs


def _assert_same_store(a, b) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    assert _attrs_but_created(a) == _attrs_but_created(b)


@pytest.fixture(scope="module")
def reference(work) -> str:
    """An uninterrupted in-process smoothgrad run, the store other runs must equal byte for byte."""
    return compute_saliency(_config(work, "reference.zarr"))


def test_store_provenance_pairing_and_rows(work, reference):
    view = open_saliency(reference)
    attrs = view.attrs
    assert attrs["complete"] and attrs["method"] == "smoothgrad" and attrs["params"] == SG
    assert attrs["source_model"] == {
        "arch": "smallcnn",
        "checkpoint_sha256": file_sha256(work["ckpt"]),
        "variant": "original",
    }
    dataset = open_dataset(work["data"])
    assert attrs["dataset"] == {"uri": work["data"], "fingerprint": dataset.fingerprint}
    check_pairing(dataset, view)
    maps = view.split("train")[:]
    assert maps.shape == (48, 8, 8, 3) and view.done("train").tolist() == [1] * 6
    assert np.abs(maps.astype(np.float32)).max(axis=(1, 2, 3)).min() == 1.0
    # Shard 2 (rows 16..24) is the method applied to those rows with that shard's own seed,
    # whatever ran before it.
    split = dataset.split("train")
    x = torch.from_numpy(split.images[16:24]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(split.labels[16:24])
    model, _ = load_model(work["ckpt"])
    gen = torch.Generator().manual_seed(shard_seed(0, "train", 2))
    expected = normalize(get_method("smoothgrad", **SG)(model, x, y, generator=gen))
    expected = expected.permute(0, 2, 3, 1).half().numpy()
    assert np.array_equal(maps[16:24], expected)


def test_same_seed_same_bytes_other_seed_differs(work, reference):
    again = compute_saliency(_config(work, "again.zarr"))
    _assert_same_store(reference, again)
    other = compute_saliency(_config(work, "seed1.zarr", seed=1))
    assert not np.array_equal(
        open_saliency(other).split("train")[:], open_saliency(again).split("train")[:]
    )


def test_resume_after_interruption_gives_same_bytes(work, reference):
    config = _config(work, "interrupted.zarr")

    def stop_after_shard_2(split, shard):
        if shard == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_saliency(config, on_shard_done=stop_after_shard_2)
    view = open_saliency(config.out, require_complete=False)
    assert view.done("train").tolist() == [1, 1, 1, 0, 0, 0] and not view.complete
    with pytest.raises(SatpipeError, match="incomplete"):
        open_saliency(config.out)
    ran: list[int] = []
    compute_saliency(config, on_shard_done=lambda split, shard: ran.append(shard))
    assert ran == [3, 4, 5]  # done shards are skipped
    _assert_same_store(reference, config.out)
    # A finished store is left alone.
    compute_saliency(config, on_shard_done=lambda split, shard: ran.append(shard))
    assert ran == [3, 4, 5]


def test_two_dask_workers_give_same_bytes(work, reference):
    out = compute_saliency(_config(work, "dask.zarr", workers=2))
    _assert_same_store(reference, out)


def test_nan_maps_refused_with_rows(work, monkeypatch):
    # A model with a NaN weight is refused when it is loaded, before any store is made.
    torch.manual_seed(0)
    model = create_model("smallcnn", 4)
    with torch.no_grad():
        model.features.block1[0].weight[0, 0, 0, 0] = float("nan")
    ckpt = work["root"] / "nan.pt"
    save_checkpoint(ckpt, {"model": model_record(model, 4, 3)})
    config = _config(work, "nan.zarr", method="gradient", params={}, model=str(ckpt))
    with pytest.raises(SatpipeError, match="features.block1.0.weight holds 1 NaN/Inf value"):
        compute_saliency(config)
    assert not Path(config.out).exists()
    # Maps that are Inf for class-2 rows only: the error names exactly those rows of the first
    # shard that has one; the shards before it are written and done, that one is not.
    from satpipe.pipeline.methods.gradient import Gradient

    def inf_for_class_2(self, model, x, target, generator):
        return torch.where((target == 2).view(-1, 1, 1, 1), float("inf"), x)

    monkeypatch.setattr(Gradient, "_attribute", inf_for_class_2)
    labels = open_dataset(work["data"]).split("train").labels[:]
    shard = int(np.flatnonzero(labels == 2)[0]) // 8
    bad = [i for i in range(shard * 8, shard * 8 + 8) if labels[i] == 2]
    config = _config(work, "inf.zarr", method="gradient", params={})
    with pytest.raises(SatpipeError, match=f"train rows {', '.join(map(str, bad))} of"):
        compute_saliency(config)
    done = open_saliency(config.out, require_complete=False).done("train")
    assert done.tolist() == [1] * shard + [0] * (6 - shard)


def test_refuses_store_of_other_method_unless_overwrite(work, reference):
    config = _config(work, "reference.zarr", method="gradient", params={})
    with pytest.raises(SatpipeError, match="exists with method='smoothgrad'.*--overwrite"):
        compute_saliency(config)
    config = _config(work, "other.zarr", method="gradient", params={})
    compute_saliency(config)
    config.method, config.params, config.overwrite = "gbp", {}, True
    assert open_saliency(compute_saliency(config)).method == "gbp"


def test_mask_and_bbox_maps_equal_dataset_rows(work):
    dataset = open_dataset(work["data"])
    outs = {}
    for method in ("mask", "bbox"):
        config = _config(work, f"{method}.zarr", method=method, params={}, model=None)
        config.splits = ("train", "test")
        outs[method] = open_saliency(compute_saliency(config))
        assert outs[method].attrs["source_model"]["checkpoint_sha256"] is None
    for split in ("train", "test"):
        masks = dataset.split(split).masks[:].astype(np.float16) * 2 - 1
        maps = outs["mask"].split(split)[:]
        assert maps.shape == (*masks.shape, 1) and np.array_equal(maps[..., 0], masks)
        # The fixture's boxes frame the same squares as its masks.
        assert np.array_equal(outs["bbox"].split(split)[:], maps)


def test_input_errors(work, tmp_path):
    no_masks = write_tiny_dataset(tmp_path / "nomask.zarr", n_train=8, n_test=8, masks=False)
    with pytest.raises(SatpipeError, match="needs train/masks"):
        compute_saliency(_config(work, "x.zarr", method="mask", params={}, data=no_masks))
    with pytest.raises(SatpipeError, match="needs a source model"):
        compute_saliency(_config(work, "x.zarr", method="gradient", params={}, model=None))
    with pytest.raises(SatpipeError, match="has no 'valid' split|--splits must name"):
        compute_saliency(_config(work, "x.zarr", splits=("valid",)))
    with pytest.raises(SatpipeError, match="unknown normalization"):
        compute_saliency(_config(work, "x.zarr", normalization="l1"))


def test_cli_saliency_show_and_errors(work):
    runner = CliRunner()
    out = str(work["root"] / "cli.zarr")
    args = ["saliency", "--method", "smoothgrad", "--model", work["ckpt"], "--data",
            work["data"], "--out", out, "--samples", "2", "--param", "samples_batch_size=1",
            "--batch-size", "16", "--splits", "train,test", "--normalization", "minmax",
            "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    view = open_saliency(out)
    assert view.splits == ["train", "test"] and view.attrs["normalization"] == "minmax"
    assert view.attrs["params"]["samples"] == 2 and view.attrs["compute"]["batch_size"] == 16
    assert float(view.split("test")[:].min()) == 0.0
    png = work["root"] / "gallery.png"
    result = runner.invoke(
        app, ["show", "saliency", out, "--data", work["data"], "--out", str(png), "--n", "6"]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(
        app,
        [
            "saliency",
            "--method",
            "ig",
            "--data",
            work["data"],
            "--out",
            out + "2",
            "--model",
            work["ckpt"],
            "--samples",
            "3",
        ],  # fmt: skip
    )
    assert result.exit_code == 1 and "no parameter 'samples'" in result.output


def test_bench_methods_reports_efficiency():
    from satpipe.bench.saliency import bench_saliency

    report = bench_saliency(
        methods=("gradient", "smoothgrad"), size=8, batch_size=4, n_images=8, device="cpu",
        params={"smoothgrad": {"samples": 2}}, repeats=1, floor_seconds=0.0, rss_sizes=(),
    )  # fmt: skip
    assert report["forward_backward_img_s"] > 0
    sg = report["methods"]["smoothgrad"]
    assert sg["passes_per_image"] == 2 and sg["efficiency"] > 0
    assert json.loads(json.dumps(report)) == report


@pytest.mark.slow
def test_bench_peak_rss_runs(tmp_path):
    from satpipe.bench.saliency import bench_peak_rss

    report = bench_peak_rss(
        (64, 256), model="smallcnn", image_size=8, batch_size=64, rows_per_shard=32, device="cpu"
    )
    assert set(report["sizes"]) == {"64", "256"} and report["growth"] > 0
