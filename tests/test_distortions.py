"""The SAT code's contrast / low-pass / high-pass distortions: closed forms, scipy's Gaussian
filter as the reference, and the evaluation's accuracy per level with intervals."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from satpipe.train.eval.distortions import (
    BG_GREY,
    DISTORTIONS,
    GREY_WEIGHTS,
    contrast,
    gaussian_blur,
    high_pass,
    low_pass,
)


def images(b=3, c=3, hw=12, seed=0):
    return torch.rand(b, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_the_official_grids():
    assert DISTORTIONS.get("contrast").levels == (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    assert DISTORTIONS.get("low-pass").levels == (1, 2, 4, 8, 16, 32)
    assert DISTORTIONS.get("high-pass").levels == (2.82, 2, 1.414, 1, 0.7, 0.5)


@pytest.mark.parametrize("std", [0.5, 1.0, 2.82, 8.0, 32.0])
def test_blur_is_scipys_gaussian_filter_with_grey_borders(std):
    x = images(b=2, c=1, hw=10)
    ours = gaussian_blur(x.double(), std)
    for i in range(2):
        ref = gaussian_filter(x[i, 0].double().numpy(), std, mode="constant", cval=BG_GREY)
        np.testing.assert_allclose(ours[i, 0].numpy(), ref, atol=1e-10)


def test_low_and_high_pass_are_the_codes_filters_on_the_grey_image():
    x = images().double()
    g = sum(w * x[:, i] for i, w in enumerate(GREY_WEIGHTS)).numpy()  # skimage rgb2gray
    for i in range(len(x)):
        blurred = gaussian_filter(g[i], 2.0, mode="constant", cval=BG_GREY)
        np.testing.assert_allclose(low_pass(x, 2.0)[i, 1].numpy(), np.clip(blurred, 0, 1),
                                   atol=1e-10)  # fmt: skip
        detail = g[i] - blurred
        expected = np.clip(detail + BG_GREY - detail.mean(), 0, 1)
        np.testing.assert_allclose(high_pass(x, 2.0)[i, 0].numpy(), expected, atol=1e-10)
    assert torch.equal(low_pass(x, 2.0)[:, 0], low_pass(x, 2.0)[:, 2])  # grey on every channel


def test_identities_contrast_one_and_low_pass_at_full_band():
    x = images()
    assert torch.equal(contrast(x, 1.0), x)
    grey_image = x[:, :1].expand(-1, 3, -1, -1)  # R = G = B: its grey is itself
    torch.testing.assert_close(low_pass(grey_image, 0.0), grey_image)  # no blur: full band
    torch.testing.assert_close(contrast(x, 0.0), torch.full_like(x, 0.5))


@pytest.mark.parametrize("name", ["contrast", "low-pass", "high-pass"])
def test_a_constant_image_is_unchanged_at_every_level(name):
    d = DISTORTIONS.get(name)
    # The filters' fixed point is the background grey they pad with; contrast's is 0.5.
    for value in (0.5,) if name == "contrast" else (BG_GREY,):
        x = torch.full((2, 3, 9, 9), value, dtype=torch.float64)
        for level in d.levels:
            torch.testing.assert_close(d.apply(x, level), x)
    # Away from the borders, a low-pass leaves any constant image as it is.
    x = torch.full((1, 1, 40, 40), 0.9, dtype=torch.float64)
    torch.testing.assert_close(low_pass(x, 2.0)[..., 12:-12, 12:-12], x[..., 12:-12, 12:-12])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train
    from tests.conftest import write_colour_dataset

    root = tmp_path_factory.mktemp("distort")
    data = write_colour_dataset(root / "colour.zarr", n_train=64, n_test=32)
    cfg = TrainConfig(variant="original", data=data, out=str(root / "run"), model="smallcnn",
                      epochs=2, batch_size=16, augment=False, device="cpu")  # fmt: skip
    return train(cfg)


def test_eval_reports_accuracy_per_level_with_intervals_and_a_plot(trained_run):
    from satpipe.train.eval.evaluate import evaluate

    results = evaluate(
        trained_run, eps=(0, 8), batch_size=32, device="cpu", strict=False,
        distortions=("contrast", "low-pass", "high-pass"), distortion_levels={"low-pass": "1,4"},
    )  # fmt: skip
    table = results["distortions"]
    assert list(table) == ["contrast", "low-pass", "high-pass"]
    assert list(table["contrast"]["levels"]) == ["0.1", "0.3", "0.5", "0.7", "0.9", "1"]
    assert list(table["low-pass"]["levels"]) == ["1", "4"]
    full = table["contrast"]["levels"]["1"]  # contrast 1 is the identity: the clean accuracy
    assert full["accuracy"] == results["clean"] and full["n"] == results["n"] == 32
    assert full["interval"]["low"] <= full["accuracy"] <= full["interval"]["high"]
    assert (trained_run / "distortions.png").stat().st_size > 10_000
    assert "## Distortions" in (trained_run / "results.md").read_text()


@pytest.mark.parametrize(("options", "message"), [
    ({"distortions": ("blur",)}, "unknown distortion 'blur'"),
    ({"distortions": ("contrast",), "distortion_levels": {"contrast": "0.5,2"}},
     "levels must be [0, 1]"),
    ({"distortions": ("contrast",), "distortion_levels": {"low-pass": "1"}},
     "which --distortions does not run"),
])  # fmt: skip
def test_bad_distortion_options_are_one_line(trained_run, options, message):
    from satpipe.core.errors import SatpipeError
    from satpipe.train.eval.evaluate import evaluate

    with pytest.raises(SatpipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        evaluate(trained_run, device="cpu", **options)
