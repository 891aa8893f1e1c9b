"""`satpipe data import numpy|hf` and the one writer behind every importer (`write_dataset`):
fixtures round-trip exactly, layouts and channels are detected and stated, bad input is one
line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.importers import Sample, SplitArrays, import_dataset, write_dataset
from satpipe.data.importers.common import seeded_split

RNG = np.random.default_rng(5)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _boxes(n: int, size: int) -> np.ndarray:
    x0 = RNG.integers(0, size // 2, n)
    y0 = RNG.integers(0, size // 2, n)
    return np.stack([x0, y0, x0 + 3, y0 + 2], 1)


def _split(view, name):
    sv = view.split(name)
    return {k: None if getattr(sv, k) is None else np.asarray(getattr(sv, k)[:])
            for k in ("images", "labels", "masks", "boxes")}  # fmt: skip


# --------------------------------------------------------------------------------------------
# numpy


def test_numpy_uint8_nhwc_with_masks_and_boxes_round_trips(tmp_path):
    arrays = {
        "x_train": _u8(12, 8, 10, 3), "y_train": RNG.integers(0, 3, 12),
        "masks_train": RNG.integers(0, 2, (12, 8, 10)).astype(bool),
        "boxes_train": _boxes(12, 8), "x_test": _u8(5, 8, 10, 3),
        "y_test": RNG.integers(0, 3, 5), "masks_test": RNG.integers(0, 2, (5, 8, 10)),
        "boxes_test": _boxes(5, 8), "classes": np.array(["ant", "bee", "cat"]),
    }  # fmt: skip
    np.savez(tmp_path / "d.npz", **arrays)
    view = open_dataset(import_dataset("numpy", tmp_path / "d.npz", str(tmp_path / "d.zarr")))
    assert view.classes == ["ant", "bee", "cat"] and view.name == "d"
    for split in ("train", "test"):
        got = _split(view, split)
        np.testing.assert_array_equal(got["images"], arrays[f"x_{split}"])
        np.testing.assert_array_equal(got["labels"], arrays[f"y_{split}"])
        np.testing.assert_array_equal(got["masks"], arrays[f"masks_{split}"].astype(np.uint8))
        np.testing.assert_array_equal(got["boxes"], arrays[f"boxes_{split}"])
    assert "NHWC (detected)" in view.attrs["source"]["arrays"][0]


def test_numpy_float_nchw_and_grey_layouts_round_trip_exactly(tmp_path):
    pixels, labels = _u8(6, 3, 7, 9), np.array([0, 1, 0, 1, 0, 1])
    np.savez(tmp_path / "f.npz", x_train=pixels.astype(np.float32) / 255, y_train=labels)
    view = open_dataset(import_dataset("numpy", tmp_path / "f.npz", str(tmp_path / "f.zarr")))
    # No x_test: a seeded stratified split, one of each class's three rows to test.
    tr, te = seeded_split(labels, 0.2, 0)
    assert len(te) == 2 and view.classes == ["0", "1"]
    for split, rows in (("train", tr), ("test", te)):
        got = _split(view, split)
        np.testing.assert_array_equal(got["images"], pixels.transpose(0, 2, 3, 1)[rows])
        np.testing.assert_array_equal(got["labels"], labels[rows])
    assert "NCHW (detected), float32 in [0, 1]" in view.attrs["source"]["arrays"][0]
    grey = _u8(8, 6, 6)
    np.savez(tmp_path / "g.npz", x_train=grey, y_train=np.arange(8) % 2, x_test=grey[:3],
             y_test=np.array([0, 1, 0]))  # fmt: skip
    g = open_dataset(import_dataset("numpy", tmp_path / "g.npz", str(tmp_path / "g.zarr")))
    assert g.image_shape == (6, 6, 1)
    np.testing.assert_array_equal(_split(g, "train")["images"], grey[..., None])
    # A 3x3-pixel NCHW array reads as NHWC unless the layout is given.
    tiny = _u8(4, 3, 3, 3)
    np.savez(tmp_path / "t.npz", x_train=tiny, y_train=np.zeros(4, int), x_test=tiny,
             y_test=np.zeros(4, int))  # fmt: skip
    t = open_dataset(
        import_dataset("numpy", tmp_path / "t.npz", str(tmp_path / "t.zarr"), layout="nchw")
    )
    np.testing.assert_array_equal(_split(t, "train")["images"], tiny.transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.full((2, 4, 4, 3), 1.5), "y_train": [0, 1]}, r"\[0, 1\], found"),
        ({"x_train": _u8(2, 4, 4, 3)}, "no 'y_train'"),
        ({"x_train": _u8(2, 4, 4, 5), "y_train": [0, 1]}, "no axis of 1 or 3 channels"),
        ({"x_train": _u8(2, 4, 4, 3), "y_train": [0, 1, 1]}, r"expected \(2,\)"),
        ({"x_train": _u8(2, 4, 4, 3), "y_train": [0.0, 1.0]}, "must be integers"),
        (
            {"x_train": _u8(2, 4, 4, 3), "y_train": [0, 1], "masks_train": np.full((2, 4, 4), 255)},
            "bool or 0/1",
        ),  # fmt: skip
        (
            {"x_train": _u8(2, 4, 4, 3), "y_train": [0, 1], "x_test": _u8(1, 4, 4, 3)},
            "both x_test and y_test",
        ),  # fmt: skip
    ],
)
def test_numpy_bad_input_is_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(SatpipeError, match=message):
        import_dataset("numpy", tmp_path / "bad.npz", str(tmp_path / "bad.zarr"))
    assert not (tmp_path / "bad.zarr").exists()


def test_numpy_cli_states_the_layout(tmp_path):
    np.savez(tmp_path / "c.npz", x_train=_u8(4, 1, 5, 5), y_train=np.arange(4) % 2)
    result = CliRunner().invoke(
        app, ["data", "import", "numpy", str(tmp_path / "c.npz"), "--out", str(tmp_path / "c.zarr")]
    )
    assert result.exit_code == 0, result.output
    assert "NCHW (detected)" in result.output  # the note on stderr (mixed in by CliRunner)
    bad = CliRunner().invoke(
        app, ["data", "import", "numpy", str(tmp_path / "c.npz"), "--out", "x.zarr", "--masks",
              "m"],
    )  # fmt: skip
    assert bad.exit_code == 1 and "does not take --masks" in bad.output


# --------------------------------------------------------------------------------------------
# Hugging Face save_to_disk


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    pixels = {"train": _u8(7, 6, 5, 3), "validation": _u8(3, 6, 5, 3)}
    labels = {"train": [0, 2, 1, 0, 2, 1, 1], "validation": [2, 0, 1]}
    masks = {k: RNG.integers(0, 3, v.shape[:3]).astype(np.uint8) for k, v in pixels.items()}
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["ant", "bee", "cat"]),
         "seg": datasets.Image(), "note": datasets.Value("string")}
    )  # fmt: skip
    parts = {
        k: datasets.Dataset.from_dict(
            {
                "picture": [Image.fromarray(a) for a in pixels[k]],
                "kind": labels[k],
                "seg": [Image.fromarray(m) for m in masks[k]],
                "note": ["x"] * len(labels[k]),
            },
            features=features,
        )  # fmt: skip
        for k in pixels
    }
    datasets.DatasetDict(parts).save_to_disk(str(root / "dd"))
    grey = [Image.fromarray(_u8(4, 4)) for _ in range(6)]
    datasets.Dataset.from_dict(
        {"image": grey, "label": ["b", "a", "b", "a", "b", "a"]}
    ).save_to_disk(str(root / "grey"))
    return root, pixels, labels, masks, grey


def test_hf_round_trips_pixels_labels_and_masks(hf_dir, tmp_path):
    root, pixels, labels, masks, _ = hf_dir
    out = import_dataset(
        "hf", root / "dd", str(tmp_path / "h.zarr"), image_column="picture", mask_column="seg"
    )
    view = open_dataset(out)
    assert view.classes == ["ant", "bee", "cat"]  # the ClassLabel's names, found by itself
    for split, source in (("train", "train"), ("test", "validation")):
        got = _split(view, split)
        np.testing.assert_array_equal(got["images"], pixels[source])  # PNG is lossless
        np.testing.assert_array_equal(got["labels"], labels[source])
        np.testing.assert_array_equal(got["masks"], (masks[source] != 0).astype(np.uint8))
    assert view.attrs["source"]["splits"] == {"train": "train", "test": "validation"}
    assert view.attrs["source"]["label_column"] == "kind"


def test_hf_grey_string_labels_and_seeded_split(hf_dir, tmp_path):
    root, *_, grey = hf_dir
    view = open_dataset(import_dataset("hf", root / "grey", str(tmp_path / "g.zarr")))
    assert view.image_shape == (4, 4, 1) and view.classes == ["a", "b"]
    train, test = _split(view, "train"), _split(view, "test")
    assert len(train["labels"]) + len(test["labels"]) == 6
    assert {tuple(im[..., 0].ravel()) for im in np.concatenate([train["images"],
            test["images"]])} == {tuple(np.asarray(g).ravel()) for g in grey}  # fmt: skip
    rgb = open_dataset(import_dataset("hf", root / "grey", str(tmp_path / "rgb.zarr"), channels=3))
    assert rgb.image_shape == (4, 4, 3)
    with pytest.raises(SatpipeError, match="cannot tell the image column"):
        import_dataset("hf", root / "dd", str(tmp_path / "x.zarr"))  # two Image columns
    with pytest.raises(SatpipeError, match="no column 'pic'"):
        import_dataset("hf", root / "dd", str(tmp_path / "x.zarr"), image_column="pic")
    with pytest.raises(SatpipeError, match="not a dataset saved with save_to_disk"):
        import_dataset("hf", tmp_path, str(tmp_path / "x.zarr"))


# --------------------------------------------------------------------------------------------
# write_dataset


def test_write_dataset_from_arrays_and_from_an_iterable_of_samples(tmp_path):
    images, labels = _u8(5, 6, 6, 3), np.array([0, 1, 1, 0, 1])
    a = write_dataset(str(tmp_path / "a.zarr"), {"train": SplitArrays(images, labels)},
                      name="a", classes=["x", "y"])  # fmt: skip
    np.testing.assert_array_equal(open_dataset(a).split("train").images[:], images)
    # A generator of in-memory samples (grey arrays): one channel, by the first image.
    grey = _u8(4, 6, 6)
    gen = (Sample(im, i % 2, name=f"g{i}") for i, im in enumerate(grey))
    b = write_dataset(str(tmp_path / "b.zarr"), {"train": gen}, name="b", classes=["x", "y"])
    np.testing.assert_array_equal(open_dataset(b).split("train").images[:], grey[..., None])
    # A colour image after a grey first one is refused, naming both.
    rows = [Sample(grey[0], 0, name="first"), Sample(_u8(6, 6, 3), 1, name="second")]
    with pytest.raises(SatpipeError, match="second: colour image.*first, is greyscale"):
        write_dataset(str(tmp_path / "c.zarr"), {"train": rows}, name="c", classes=["x", "y"])
    c = write_dataset(str(tmp_path / "c.zarr"), {"train": rows}, name="c", classes=["x", "y"],
                      channels=1, overwrite=True)  # fmt: skip
    want = np.asarray(Image.fromarray(rows[1].image).convert("L"))
    np.testing.assert_array_equal(open_dataset(c).split("train").images[1, ..., 0], want)
    with pytest.raises(SatpipeError, match="label 2 out of range"):
        write_dataset(str(tmp_path / "d.zarr"), {"train": [Sample(grey[0], 2, name="x")]},
                      name="d", classes=["x", "y"])  # fmt: skip


def test_imagefolder_of_grey_pngs_makes_a_grey_store(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            path = Path(tmp_path, "imgs", cls, f"{i}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_u8(5, 5)).save(path)
    view = open_dataset(
        import_dataset("imagefolder", tmp_path / "imgs", str(tmp_path / "i.zarr"), test_fraction=0)
    )
    assert view.image_shape == (5, 5, 1)
    assert "greyscale by the first image" in view.attrs["source"]["colour"]
