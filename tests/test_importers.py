"""Importers: tiny fixtures written in each real format, imported and compared exactly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.importers import IMPORTERS, import_dataset
from satpipe.data.importers.common import (
    ResizePolicy,
    fit_box,
    fit_mask,
    plan_fit,
    seeded_split,
)
from satpipe.data.importers.flowers17 import FLOWER_CLASSES
from tests.formats import RNG
from tests.formats import cifar_batch as _cifar_batch
from tests.formats import jpg as _jpg
from tests.formats import png as _png
from tests.formats import rgb as _rgb
from tests.formats import write_flowers17 as _flowers
from tests.formats import write_tinyimagenet as _tiny


def _decoded(path: Path) -> np.ndarray:
    """What PIL decodes the file to: the exact oracle for JPEG inputs."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_registry_lists_formats_and_rejects_unknown_ones(tmp_path):
    assert sorted(IMPORTERS.names()) == sorted(
        [
            "cifar10",
            "cifar100",
            "flowers17",
            "hf",
            "imagefolder",
            "numpy",
            "oxford-pet",
            "tinyimagenet",
        ]
    )
    assert "data_batch_1" in IMPORTERS.summary("cifar10")
    with pytest.raises(SatpipeError, match="unknown dataset format 'mnist'; choose one of cifar10"):
        import_dataset("mnist", tmp_path, str(tmp_path / "o.zarr"))
    with pytest.raises(SatpipeError, match="'cifar10' does not take --masks"):
        import_dataset("cifar10", tmp_path, str(tmp_path / "o.zarr"), masks="m")
    with pytest.raises(SatpipeError, match="nowhere: source not found"):
        import_dataset("cifar10", tmp_path / "nowhere", str(tmp_path / "o.zarr"))
    result = _run("data", "import", "mnist", str(tmp_path), "--out", str(tmp_path / "o.zarr"))
    assert result.exit_code == 1 and "unknown dataset format 'mnist'" in result.output


# ---- CIFAR ------------------------------------------------------------------------------------


def _cifar10(root: Path, names=None) -> dict:
    d = root / "cifar-10-batches-py"
    parts = {s: [] for s in ("train", "test")}
    for i in (1, 2):
        parts["train"].append(_cifar_batch(d / f"data_batch_{i}", 5, b"labels", 10))
    parts["test"].append(_cifar_batch(d / "test_batch", 4, b"labels", 10))
    names = names or [f"name{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return parts


def test_cifar10_round_trips_pixels_and_labels_exactly(tmp_path):
    parts = _cifar10(tmp_path)
    out = import_dataset("cifar10", tmp_path, str(tmp_path / "c.zarr"))
    view = open_dataset(out)
    assert view.classes == [f"name{i}" for i in range(10)] and view.complete
    for split, batches in parts.items():
        data = np.concatenate([d for d, _ in batches])
        want = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(view.split(split).images[:], want)
        labels = np.concatenate([lab for _, lab in batches])
        np.testing.assert_array_equal(view.split(split).labels[:], labels)
    # Red of pixel (0, 1) is value 1 of the row; green is value 1024 + 1.
    row = parts["train"][0][0][0]
    assert view.split("train").images[0, 0, 1].tolist() == [row[1], row[1025], row[2049]]
    assert view.attrs["source"]["format"] == "cifar10"


def test_cifar10_resize(tmp_path):
    _cifar10(tmp_path)
    out = import_dataset(
        "cifar10", tmp_path / "cifar-10-batches-py", str(tmp_path / "c.zarr"), size=16
    )
    view = open_dataset(out)
    assert view.image_shape == (16, 16, 3)
    assert view.attrs["source"]["size"] == 16 and view.attrs["source"]["resize_policy"] == "stretch"


def test_cifar100_fine_labels_and_names(tmp_path):
    d = tmp_path / "cifar-100-python"
    train = _cifar_batch(d / "train", 6, b"fine_labels", 100, coarse_labels=[0] * 6)
    test = _cifar_batch(d / "test", 3, b"fine_labels", 100, coarse_labels=[0] * 3)
    names = [f"fine{i}".encode() for i in range(100)]
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}))
    view = open_dataset(import_dataset("cifar100", tmp_path, str(tmp_path / "c.zarr")))
    assert view.num_classes == 100 and view.classes[7] == "fine7"
    np.testing.assert_array_equal(view.split("train").labels[:], train[1])
    np.testing.assert_array_equal(view.split("test").labels[:], test[1])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda p: p.write_bytes(
                pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
            ),
            r"data_batch_2: data has shape \(2, 3000\), expected \(N, 3072\)",
        ),
        (
            lambda p: p.write_bytes(
                pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
            ),
            r"data_batch_2: label 10 at row 1 out of range \[0, 10\)",
        ),
        (
            lambda p: p.write_bytes(
                pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
            ),
            "data_batch_2: 1 labels for 2 images",
        ),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "data_batch_2: not a CIFAR pickle"),
        (lambda p: p.write_bytes(b"garbage, not a pickle"), "data_batch_2: not a CIFAR pickle"),
        (lambda p: p.write_bytes(pickle.dumps(Path("x"))), "refusing to load"),
        (
            lambda p: (p.with_name("data_batch_3").write_bytes(p.read_bytes()), p.unlink()),
            "data_batch_2: missing",
        ),
    ],
)
def test_cifar_bad_batches_are_named(tmp_path, corrupt, message):
    _cifar10(tmp_path)
    corrupt(tmp_path / "cifar-10-batches-py" / "data_batch_2")
    with pytest.raises(SatpipeError, match=message):
        import_dataset("cifar10", tmp_path, str(tmp_path / "c.zarr"))
    assert not (tmp_path / "c.zarr").exists()  # validated before anything was written


def test_cifar_cli_error_is_one_line(tmp_path):
    _cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04junk")
    result = _run("data", "import", "cifar10", str(tmp_path), "--out", str(tmp_path / "c.zarr"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "test_batch: not a CIFAR pickle" in lines[0]


# ---- Tiny-ImageNet ------------------------------------------------------------------------


def test_tinyimagenet_keeps_pixels_labels_and_boxes(tmp_path):
    boxes = _tiny(tmp_path)
    view = open_dataset(import_dataset("tinyimagenet", tmp_path, str(tmp_path / "t.zarr")))
    d = tmp_path / "tiny-imagenet-200"
    assert view.classes == ["n0001", "n0002", "n0003"]
    assert view.attrs["source"]["class_words"]["n0001"] == "goldfish, Carassius"
    train = view.split("train")
    names = [f"{w}_{i}.JPEG" for w in view.classes for i in range(2)]
    np.testing.assert_array_equal(train.labels[:], [0, 0, 1, 1, 2, 2])
    for row, name in enumerate(names):
        w = name.split("_")[0]
        np.testing.assert_array_equal(
            train.images[row], _decoded(d / "train" / w / "images" / name)
        )
        x0, y0, x1, y1 = boxes[name]
        assert train.boxes[row].tolist() == [x0, y0, x1 + 1, y1 + 1]  # end exclusive
    test = view.split("test")
    np.testing.assert_array_equal(test.labels[:], [1, 0, 2])
    assert test.boxes[2].tolist() == [1, 1, 6, 6]
    np.testing.assert_array_equal(test.images[1], _decoded(d / "val" / "images" / "val_1.JPEG"))


def test_tinyimagenet_resize_scales_boxes(tmp_path):
    _tiny(tmp_path)
    view = open_dataset(import_dataset("tinyimagenet", tmp_path, str(tmp_path / "t.zarr"), size=8))
    assert view.image_shape == (8, 8, 3)
    # n0001_1: inclusive (1, 2, 14, 15) -> exclusive (1, 2, 15, 16) -> half: floor/ceil outward.
    assert view.split("train").boxes[1].tolist() == [0, 1, 8, 8]
    # val_2: (1, 1, 5, 5) inclusive -> (1, 1, 6, 6) -> (0, 0, 3, 3).
    assert view.split("test").boxes[2].tolist() == [0, 0, 3, 3]


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: _edit(
                d / "train/n0001/n0001_boxes.txt",
                "n0001_1.JPEG\t1\t2\t14",
                "n0001_1.JPEG\t1\t2\t16",
            ),
            r"n0001_1.JPEG: box \[1, 2, 17, 16\] lies outside the 16x16 image",
        ),
        (
            lambda d: _edit(d / "train/n0001/n0001_boxes.txt", "n0001_1.JPEG", "other.JPEG"),
            "n0001_1.JPEG: no box for this image",
        ),
        (
            lambda d: _edit(d / "val/val_annotations.txt", "n0002", "n0999"),
            "val_annotations.txt:1: class n0999 is not in wnids.txt",
        ),
        (
            lambda d: _edit(d / "val/val_annotations.txt", "\t1\t1\t3\t5", "\t1\tx\t3\t5"),
            "val_annotations.txt:1: box .* is not four integers",
        ),
        (
            lambda d: [p.unlink() for p in (d / "train/n0002/images").iterdir()],
            "n0002/images: empty class folder",
        ),
        (
            lambda d: (d / "val/images/val_1.JPEG").write_bytes(
                (d / "val/images/val_1.JPEG").read_bytes()[:-60]
            ),
            "val_1.JPEG: cannot decode image",
        ),
        (lambda d: (d / "val/images/val_1.JPEG").write_text("hello"), "val_1.JPEG: not an image"),
    ],
)
def test_tinyimagenet_bad_input(tmp_path, damage, message):
    _tiny(tmp_path)
    damage(tmp_path / "tiny-imagenet-200")
    out = tmp_path / "t.zarr"
    with pytest.raises(SatpipeError, match=message):
        import_dataset("tinyimagenet", tmp_path, str(out))
    if out.exists():  # failures found while decoding leave an incomplete store
        assert not open_dataset(str(out), require_complete=False).complete


# ---- Flowers-17 -----------------------------------------------------------------------------


def test_flowers17_labels_split_and_resize(tmp_path):
    _flowers(tmp_path)
    view = open_dataset(
        import_dataset("flowers17", tmp_path, str(tmp_path / "f.zarr"), per_class=4)
    )
    assert view.classes == list(FLOWER_CLASSES[:3]) and view.image_shape == (32, 32, 3)
    # One of every 4 per class goes to test (test_fraction 0.25); labels follow file order.
    assert np.bincount(view.split("train").labels[:]).tolist() == [3, 3, 3]
    assert np.bincount(view.split("test").labels[:]).tolist() == [1, 1, 1]
    assert view.split("train").masks is None
    src = view.attrs["source"]
    assert src["split"]["test_fraction"] == 0.25 and "datasplits.mat" in src["split"]["kind"]
    again = import_dataset("flowers17", tmp_path, str(tmp_path / "g.zarr"), per_class=4)
    assert open_dataset(again).fingerprint == view.fingerprint  # seeded split


def test_flowers17_masks_only_uses_trimaps(tmp_path):
    regions = _flowers(tmp_path)
    out = import_dataset(
        "flowers17",
        tmp_path,
        str(tmp_path / "f.zarr"),
        per_class=4,
        masks_only=True,
        size=None,
        test_fraction=0.0,
    )
    view = open_dataset(out)
    train = view.split("train")
    np.testing.assert_array_equal(train.labels[:], [0, 0, 1, 2])  # images 1, 2, 6, 11
    want = np.zeros((12, 10), np.uint8)
    want[2:7, 3:9] = 1
    for row, k in enumerate(sorted(regions)):
        np.testing.assert_array_equal(train.masks[row], want)
        np.testing.assert_array_equal(
            train.images[row], _decoded(tmp_path / "jpg" / f"image_{k:04d}.jpg")
        )
    assert view.splits == ["train"]


def test_flowers17_bad_input(tmp_path):
    _flowers(tmp_path)
    out = str(tmp_path / "f.zarr")
    with pytest.raises(SatpipeError, match="do not split into classes of 5"):
        import_dataset("flowers17", tmp_path, out, per_class=5)
    with pytest.raises(SatpipeError, match="jpg/trimaps: trimaps folder not found"):
        import_dataset("flowers17", tmp_path / "jpg", out, per_class=4, masks_only=True)
    (tmp_path / "jpg" / "image_0005.jpg").unlink()
    with pytest.raises(SatpipeError, match="image_0005.jpg: missing"):
        import_dataset("flowers17", tmp_path, out, per_class=4)
    assert not Path(out).exists()


# ---- Oxford-IIIT Pet ----------------------------------------------------------------------


def _pets(root: Path, lists: bool = True) -> dict:
    names = [
        "Bengal_1",
        "Abyssinian_1",
        "american_bulldog_1",
        "Abyssinian_2",
        "Bengal_2",
        "american_bulldog_2",
    ]
    trimaps = {}
    for i, name in enumerate(names):
        img = _rgb(9, 11)
        if i == 1:
            img = img[..., 0]  # a greyscale JPEG, as some of the archive's are
        _jpg(root / "images" / f"{name}.jpg", img)
        t = np.full((9, 11), 2, np.uint8)
        t[2:6, 2:8] = 1
        t[1, 2:8] = 3
        t[7, i] = 3
        trimaps[name] = t
        _png(root / "annotations" / "trimaps" / f"{name}.png", t)
    (root / "images" / "Abyssinian_1.mat").write_text("not an image, ignored")
    if lists:
        (root / "annotations" / "trainval.txt").write_text(
            "#comment\nAbyssinian_1 1 1 1\nBengal_1 6 1 3\namerican_bulldog_1 2 2 1\n"
        )
        (root / "annotations" / "test.txt").write_text("Abyssinian_2 1 1 1\nBengal_2 6 1 3\n")
    return trimaps


def test_oxford_pet_classes_masks_and_official_split(tmp_path):
    trimaps = _pets(tmp_path)
    out = import_dataset("oxford-pet", tmp_path, str(tmp_path / "p.zarr"), size=None)
    view = open_dataset(out)
    assert view.classes == ["Abyssinian", "american_bulldog", "Bengal"]
    train = view.split("train")
    np.testing.assert_array_equal(train.labels[:], [0, 2, 1])
    for row, name in enumerate(["Abyssinian_1", "Bengal_1", "american_bulldog_1"]):
        t = trimaps[name]
        np.testing.assert_array_equal(train.masks[row], ((t == 1) | (t == 3)).astype(np.uint8))
    grey = train.images[0]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    np.testing.assert_array_equal(grey, _decoded(tmp_path / "images" / "Abyssinian_1.jpg"))
    np.testing.assert_array_equal(view.split("test").labels[:], [0, 2])
    assert view.attrs["source"]["split"]["unlisted_skipped"] == 1


def test_oxford_pet_seeded_split_without_lists_and_resize(tmp_path):
    _pets(tmp_path, lists=False)
    out = import_dataset(
        "oxford-pet",
        tmp_path,
        str(tmp_path / "p.zarr"),
        size=8,
        resize_policy="pad",
        test_fraction=0.5,
    )
    view = open_dataset(out)
    assert len(view.split("train")) == 3 and len(view.split("test")) == 3
    assert view.image_shape == (8, 8, 3)
    masks = view.split("train").masks[:]
    assert set(np.unique(masks)) <= {0, 1}
    # pad: 11 wide -> 8, 9 high -> round(6.55) = 7 rows at the top, one black row below.
    assert (view.split("train").images[:, 7] == 0).all() and (masks[:, 7] == 0).all()
    assert (view.split("train").images[:, 6] != 0).any()


def test_oxford_pet_bad_input(tmp_path):
    _pets(tmp_path)
    t = tmp_path / "annotations" / "trimaps"
    _png(t / "Bengal_2.png", np.full((9, 11), 4, np.uint8))
    with pytest.raises(SatpipeError, match="Bengal_2.png: trimap value 4 is not 1, 2 or 3"):
        import_dataset("oxford-pet", tmp_path, str(tmp_path / "p.zarr"), overwrite=True)
    (t / "Bengal_2.png").unlink()
    with pytest.raises(SatpipeError, match="Bengal_2.jpg: missing mask .*Bengal_2.png"):
        import_dataset("oxford-pet", tmp_path, str(tmp_path / "q.zarr"))
    assert not (tmp_path / "q.zarr").exists()


# ---- ImageFolder ----------------------------------------------------------------------------


def _folder(root: Path, masks: Path | None = None, split: bool = True) -> dict:
    """PNG tree: cat (2 train, 1 test), dog (2 train, 1 test), with odd modes mixed in."""
    files = {}
    for part, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                rel = Path(part if split else "", cls, f"{i}.png")
                img = _rgb(6, 8)
                files[rel] = img
                _png(root / rel, img)
                if masks is not None:
                    m = np.zeros((6, 8), np.uint8)
                    m[1 : 3 + i, 2:6] = 255 if cls == "cat" else 7
                    files[("mask", rel)] = (m != 0).astype(np.uint8)
                    _png(masks / rel, m)
    (root / ("train" if split else "") / "cat" / "notes.txt").write_text("ignored")
    return files


def test_imagefolder_png_round_trip_with_masks(tmp_path):
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    files = _folder(root, masks)
    out = import_dataset("imagefolder", root, str(tmp_path / "i.zarr"), masks=str(masks))
    view = open_dataset(out)
    assert view.classes == ["cat", "dog"] and view.name == "imgs"
    for split, n in (("train", 2), ("test", 1)):
        sv = view.split(split)
        rels = [Path(split, c, f"{i}.png") for c in ("cat", "dog") for i in range(n)]
        np.testing.assert_array_equal(sv.labels[:], [0] * n + [1] * n)
        for row, rel in enumerate(rels):
            np.testing.assert_array_equal(sv.images[row], files[rel])
            np.testing.assert_array_equal(sv.masks[row], files[("mask", rel)])
    assert view.split("train").boxes is None


def test_imagefolder_converts_modes_to_rgb(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    grey = RNG.integers(0, 256, (6, 8), dtype=np.uint8)
    _png(root / "train" / "cat" / "2_grey.png", grey)
    rgba = RNG.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    _png(root / "train" / "cat" / "3_rgba.png", rgba)
    pal = Image.fromarray(_rgb(6, 8)).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.save(root / "train" / "cat" / "4_pal.png")
    view = open_dataset(import_dataset("imagefolder", root, str(tmp_path / "i.zarr")))
    images = view.split("train").images
    np.testing.assert_array_equal(images[2], np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(images[3], rgba[..., :3])  # alpha dropped, not composited
    np.testing.assert_array_equal(images[4], np.asarray(pal.convert("RGB")))
    assert "convert('RGB')" in view.attrs["source"]["colour"]


def test_imagefolder_flat_layout_gets_a_seeded_stratified_split(tmp_path):
    root = tmp_path / "flat"
    _folder(root, split=False)  # cat/0..1 + dog/0..1 plus test images under the same names
    for cls in ("cat", "dog"):
        for i in range(2, 6):
            _png(root / cls / f"{i}.png", _rgb(6, 8))
    a = open_dataset(
        import_dataset("imagefolder", root, str(tmp_path / "a.zarr"), test_fraction=0.5)
    )
    b = open_dataset(
        import_dataset("imagefolder", root, str(tmp_path / "b.zarr"), test_fraction=0.5)
    )
    assert a.fingerprint == b.fingerprint
    assert np.bincount(a.split("test").labels[:]).tolist() == [3, 3]
    c = open_dataset(
        import_dataset("imagefolder", root, str(tmp_path / "c.zarr"), test_fraction=0.5, seed=1)
    )
    assert c.fingerprint != a.fingerprint


@pytest.mark.parametrize("policy", ["stretch", "center-crop", "pad"])
def test_imagefolder_resize_policies(tmp_path, policy):
    root = tmp_path / "imgs"
    wide = _rgb(8, 16)
    _png(root / "train" / "a" / "0.png", wide)
    _png(root / "train" / "b" / "0.png", wide)
    out = import_dataset(
        "imagefolder",
        root,
        str(tmp_path / "i.zarr"),
        size=8,
        resize_policy=policy,
        test_fraction=0.0,
    )
    got = open_dataset(out).split("train").images[0]
    assert got.shape == (8, 8, 3)
    if policy == "center-crop":  # short side already 8: a pure centre cut
        np.testing.assert_array_equal(got, wide[:, 4:12])
    elif policy == "pad":  # 16x8 -> 8x4, rows 2..5 hold the image
        assert (got[:2] == 0).all() and (got[6:] == 0).all()
        np.testing.assert_array_equal(
            got[2:6], np.asarray(Image.fromarray(wide).resize((8, 4), Image.BILINEAR))
        )
    else:
        np.testing.assert_array_equal(
            got, np.asarray(Image.fromarray(wide).resize((8, 8), Image.BILINEAR))
        )


def test_imagefolder_bad_input(tmp_path):
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    _folder(root, masks)
    out = str(tmp_path / "i.zarr")
    (masks / "test" / "dog" / "0.png").unlink()
    with pytest.raises(SatpipeError, match=r"test/dog/0.png: missing mask"):
        import_dataset("imagefolder", root, out, masks=str(masks))
    (root / "train" / "bird").mkdir()
    with pytest.raises(SatpipeError, match="train/bird: empty class folder"):
        import_dataset("imagefolder", root, out)
    (root / "train" / "bird").rmdir()
    (root / "test" / "fish").mkdir()
    _png(root / "test" / "fish" / "0.png", _rgb(6, 8))
    with pytest.raises(SatpipeError, match="class 'fish' is not among the training classes"):
        import_dataset("imagefolder", root, out)
    assert not Path(out).exists()


def test_imagefolder_wrong_size_or_broken_file_leaves_no_complete_store(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    _png(root / "train" / "dog" / "9.png", _rgb(7, 8))
    out = str(tmp_path / "i.zarr")
    with pytest.raises(SatpipeError, match="9.png: image is 8x7 but the first image is 8x6"):
        import_dataset("imagefolder", root, out)
    assert not open_dataset(out, require_complete=False).complete
    bad = root / "train" / "dog" / "9.png"
    _png(bad, _rgb(6, 8))
    bad.write_bytes(bad.read_bytes()[:-30])  # truncated PNG
    with pytest.raises(SatpipeError, match="9.png: cannot decode image"):
        import_dataset("imagefolder", root, out, overwrite=True)
    assert not open_dataset(out, require_complete=False).complete


def test_imagefolder_mask_of_wrong_size(tmp_path):
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    _folder(root, masks)
    _png(masks / "train" / "cat" / "1.png", np.ones((5, 8), np.uint8))
    with pytest.raises(SatpipeError, match=r"cat/1.png: mask is 8x5 but its image 1.png is 8x6"):
        import_dataset("imagefolder", root, str(tmp_path / "i.zarr"), masks=str(masks))


def test_imagefolder_cli(tmp_path):
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    _folder(root, masks)
    out = str(tmp_path / "i.zarr")
    args = ["data", "import", "imagefolder", str(root), "--out", out, "--masks", str(masks)]
    result = _run(*args, "--size", "4", "--resize-policy", "center-crop")
    assert result.exit_code == 0, result.output
    view = open_dataset(out)
    assert view.image_shape == (4, 4, 3) and view.attrs["source"]["resize_policy"] == "center-crop"
    again = _run(*args)
    assert again.exit_code == 1 and "output exists (pass --overwrite" in again.output
    (masks / "train" / "cat" / "0.png").unlink()
    missing = _run(*args, "--overwrite")
    assert missing.exit_code == 1 and "cat/0.png: missing mask" in missing.output
    wrong = _run("data", "import", "cifar10", str(root), "--out", out, "--masks-only")
    assert wrong.exit_code == 1 and "does not take --masks-only" in wrong.output
    policy = _run(*args, "--resize-policy", "squash")
    assert policy.exit_code != 0 and "squash" in policy.output


# ---- shared helpers -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(2, 24),
    w=st.integers(2, 24),
    size=st.integers(2, 16),
    policy=st.sampled_from(list(ResizePolicy)),
    data=st.data(),
)
def test_fitted_box_contains_the_fitted_mask(h, w, size, policy, data):
    """The box maps outward: it holds every pixel that the nearest-resized box mask keeps."""
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    fit = plan_fit(h, w, size, policy)
    fitted = fit_mask(fit, mask)
    assert fitted.shape == (size, size)
    box = fit_box(fit, (x0, y0, x1, y1))
    ys, xs = np.nonzero(fitted)
    if box is None:
        assert policy is ResizePolicy.center_crop and len(xs) == 0
        return
    bx0, by0, bx1, by1 = box
    assert 0 <= bx0 < bx1 <= size and 0 <= by0 < by1 <= size
    if len(xs):
        assert bx0 <= xs.min() and xs.max() < bx1 and by0 <= ys.min() and ys.max() < by1


def test_seeded_split_is_stratified_and_keeps_every_class_in_train():
    labels = [0] * 10 + [1] * 3 + [2]
    train, test = seeded_split(labels, 0.3, seed=0)
    assert sorted(train + test) == list(range(14)) and train == sorted(train)
    assert [labels[i] for i in test].count(0) == 3 and [labels[i] for i in test].count(1) == 1
    assert 13 in train  # the single example of class 2 stays in train
    assert seeded_split(labels, 0.3, seed=0) == (train, test)
    with pytest.raises(SatpipeError, match="--test-fraction"):
        seeded_split(labels, 1.0, seed=0)
