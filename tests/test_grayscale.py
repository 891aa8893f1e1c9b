"""A greyscale (C = 1) dataset end to end: numpy import, teacher, saliency store, SAT student
with augmentation, evaluation and the gallery, all through the command line."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.data.dataset_store import open_dataset
from satpipe.data.saliency_store import open_saliency
from satpipe.train.checkpoint import load_checkpoint


def _grey_npz(path, n: int, seed: int) -> None:
    """Two classes: a bright or a dark 6x6 square on a noisy mid-grey 16x16 background."""
    rng = np.random.default_rng(seed)
    images = rng.normal(128, 20, (n, 16, 16)).clip(0, 255)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, 16, 16), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, 11, 2)
        images[i, y0 : y0 + 6, x0 : x0 + 6] = 230 if labels[i] else 25
        masks[i, y0 : y0 + 6, x0 : x0 + 6] = True
    half = n // 2
    np.savez(
        path, x_train=images[:half].astype(np.uint8), y_train=labels[:half],
        masks_train=masks[:half], x_test=images[half:].astype(np.uint8), y_test=labels[half:],
        masks_test=masks[half:], classes=np.array(["dark", "bright"]),
    )  # fmt: skip


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_grey_dataset_end_to_end(tmp_path):
    _grey_npz(tmp_path / "grey.npz", 48, seed=0)
    data = str(tmp_path / "grey.zarr")
    _run("data", "import", "numpy", tmp_path / "grey.npz", "--out", data)
    assert open_dataset(data).image_shape == (16, 16, 1)
    common = ("--data", data, "--model", "smallcnn", "--batch-size", "16", "--device", "cpu")
    _run("train", "--variant", "original", "--epochs", "1", "--out", tmp_path / "teacher",
         *common)  # fmt: skip
    teacher = tmp_path / "teacher" / "checkpoint.pt"
    assert load_checkpoint(teacher)["model"]["in_channels"] == 1
    sal = str(tmp_path / "sg.zarr")
    _run("saliency", "--method", "smoothgrad", "--samples", "2", "--model", teacher,
         "--data", data, "--out", sal, "--device", "cpu")  # fmt: skip
    maps = open_saliency(sal).split("train")
    assert maps.shape == (24, 16, 16, 1)
    values = np.asarray(maps[:], dtype=np.float32)
    assert np.isfinite(values).all() and np.abs(values).max() == 1.0  # signed-maxabs
    cam = str(tmp_path / "cam.zarr")
    _run("saliency", "--method", "gradcam++", "--cam-layer", "features.block1", "--model", teacher,
         "--data", data, "--out", cam, "--device", "cpu")  # fmt: skip
    attrs = open_saliency(cam).attrs
    assert attrs["params"] == {"layer": "features.block1"}
    assert attrs["source_model"]["cam_layer"] == "features.block1"
    assert open_saliency(cam).split("train").shape == (24, 16, 16, 1)
    _run("train", "--variant", "sat", "--saliency", sal, "--epochs", "1", "--augment",
         "--out", tmp_path / "sat", *common)  # fmt: skip
    _run("eval", tmp_path / "sat", "--eps", "0,2", "--steps", "1", "--no-strict",
         "--device", "cpu")  # fmt: skip
    results = json.loads((tmp_path / "sat" / "results.json").read_text())
    assert results["n"] == 24 and results["pgd"]["0"] == results["clean"]
    _run("show", "saliency", sal, "--data", data, "--out", tmp_path / "g.png", "--n", "4")
    assert (tmp_path / "g.png").stat().st_size > 0
