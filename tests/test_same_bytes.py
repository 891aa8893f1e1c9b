"""Same seed, same bytes, across refactors: a dataset store's fingerprint, an `original`
checkpoint's weights and a SmoothGrad store's maps, recorded from main on 2026-12-06 before the
wave-3 layout change. A change of layout must not change one byte of what a seed gives.

The fingerprint is integer arithmetic (numpy's seeded generators into uint8): exact anywhere.
The weights and maps are float arithmetic, bitwise only for the same torch build, CPU kernel
family and thread count (one, here); elsewhere the test checks summaries within a float tolerance.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import zarr

from satpipe.data.dataset_store import open_dataset
from satpipe.data.shapes import make_shapes
from satpipe.pipeline.config import SaliencyConfig
from satpipe.pipeline.runner import compute_saliency
from satpipe.train.config import TrainConfig
from satpipe.train.trainer import train

FINGERPRINT = "sha256:75af1e3d46626b6abd85c5b4d1e9512e849a05feffb57a00409b4afb8b8c839c"
# (torch version, CPU kernel family) the float digests were recorded on.
RECORDED_ON = ("2.14.1+cu130", "AVX512")
WEIGHTS_SHA256 = "ae21238861ae671a25ff523e322cd6164d7ad1481885b0bae2d7d8415c6f6b08"
MAPS_SHA256 = "8390fdf5ac14b02bda13f6a3a1a1abc05ed5f37cae13e4feb34d063bec988c14"
WEIGHTS_ABS_SUM = 2044.6971543672971  # sum of |weight| over float tensors
MAPS_ABS_SUM = 9090.663163363934  # sum of |map|


def _weights(state_dict) -> tuple[str, float]:
    digest = hashlib.sha256()
    total = 0.0
    for key in sorted(state_dict):
        array = state_dict[key].detach().cpu().contiguous().numpy()
        digest.update(key.encode())
        digest.update(array.tobytes())
        if array.dtype.kind == "f":
            total += float(np.abs(array.astype(np.float64)).sum())
    return digest.hexdigest(), total


@pytest.fixture
def one_thread():
    """CPU float reductions split differently with the thread count: record with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_seed_gives_the_bytes_it_gave_before_the_layout_change(tmp_path, one_thread):
    data = make_shapes(str(tmp_path / "s.zarr"), classes=3, n_train=64, n_test=32, size=16, seed=3)
    assert open_dataset(data).fingerprint == FINGERPRINT

    run = train(
        TrainConfig(
            variant="original", data=data, out=str(tmp_path / "run"), model="smallcnn",
            epochs=1, batch_size=32, seed=1, device="cpu",
        )
    )  # fmt: skip
    checkpoint = torch.load(f"{run}/checkpoint.pt", weights_only=True)
    weights_sha, weights_abs = _weights(checkpoint["model"]["state_dict"])

    store = compute_saliency(
        SaliencyConfig(
            method="smoothgrad", params={"samples": 4}, data=data, out=str(tmp_path / "sg.zarr"),
            model=f"{run}/checkpoint.pt", seed=2, device="cpu",
        )
    )  # fmt: skip
    maps = np.asarray(zarr.open_group(store, mode="r")["train/saliency"][:])
    assert maps.shape == (64, 16, 16, 3) and maps.dtype == np.float16

    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if here == RECORDED_ON:
        assert weights_sha == WEIGHTS_SHA256
        assert hashlib.sha256(maps.tobytes()).hexdigest() == MAPS_SHA256
    else:  # another torch build or CPU kernel family: the same numbers within float rounding
        assert np.isclose(weights_abs, WEIGHTS_ABS_SUM, rtol=1e-4)
        assert np.isclose(float(np.abs(maps.astype(np.float64)).sum()), MAPS_ABS_SUM, rtol=1e-3)
