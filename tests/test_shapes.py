"""The built-in `shapes` dataset: contract, determinism, geometry of masks and boxes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.shapes import (
    SHAPES,
    block_rng,
    generate_split,
    make_shapes,
    render_block,
    split_labels,
)


def _small(path, **kw):
    opts = {"n_train": 40, "n_test": 12, "size": 16, "seed": 3}
    opts.update(kw)
    return make_shapes(str(path), **opts)


def _array_bytes(root: Path) -> dict[str, bytes]:
    """Every stored object except the root attributes (which carry a timestamp)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != "zarr.json"
    }


def test_store_follows_the_dataset_contract(tmp_path):
    view = open_dataset(_small(tmp_path / "s.zarr", classes=4))
    assert view.complete and view.name == "shapes"
    assert view.classes == list(SHAPES[:4])
    for split, n in (("train", 40), ("test", 12)):
        sv = view.split(split)
        assert sv.images.shape == (n, 16, 16, 3) and sv.images.dtype == np.uint8
        assert sv.labels.dtype == np.int64 and sv.masks.shape == (n, 16, 16)
        assert sv.boxes.shape == (n, 4) and sv.boxes.dtype == np.int32
        labels = sv.labels[:]
        assert labels.min() >= 0 and labels.max() < 4
        counts = np.bincount(labels, minlength=4)
        assert counts.max() - counts.min() <= 1  # balanced
    assert view.attrs["source"]["seed"] == 3


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = _small(tmp_path / "a.zarr")
    b = _small(tmp_path / "b.zarr")
    c = _small(tmp_path / "c.zarr", seed=4)
    fa, fb, fc = (open_dataset(p).fingerprint for p in (a, b, c))
    assert fa == fb != fc
    assert _array_bytes(Path(a)) == _array_bytes(Path(b))


def test_blocks_do_not_depend_on_the_order_they_are_made_in():
    blocks = list(generate_split(5, "train", 70, 6, 16, block_rows=32))
    labels = split_labels(5, "train", 70, 6)
    # Block 1 alone, from its own seed, equals block 1 of the sequential run.
    alone = render_block(block_rng(5, "train", 1), labels[32:64], 16)
    for got, want in zip(alone, blocks[1][0:1] + blocks[1][2:], strict=True):
        np.testing.assert_array_equal(got, want)
    # Train and test draw from different streams.
    test0 = next(generate_split(5, "test", 32, 6, 16, block_rows=32))
    assert not np.array_equal(test0[0], blocks[0][0])


def test_boxes_are_the_tight_boxes_of_the_masks():
    labels = np.arange(120) % 6
    _, masks, boxes = render_block(np.random.default_rng(0), labels, 32)
    for m, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        ys, xs = np.nonzero(m)
        assert len(xs) > 0
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32


def test_masks_have_the_geometry_of_their_class():
    labels = np.repeat(np.arange(6), 40)
    _, masks, boxes = render_block(np.random.default_rng(1), labels, 32)
    fill = masks.reshape(len(labels), -1).sum(1) / np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    # A disc fills pi/4 of its box (aspect jitter and pixels blur it a little).
    circle = fill[labels == SHAPES.index("circle")]
    assert abs(circle.mean() - np.pi / 4) < 0.05
    # A ring has a hole in the middle, a disc and a square do not.
    for name, centre_value in (("ring", 0), ("circle", 1), ("square", 1)):
        rows = np.flatnonzero(labels == SHAPES.index(name))
        cy = (boxes[rows, 1] + boxes[rows, 3]) // 2
        cx = (boxes[rows, 0] + boxes[rows, 2]) // 2
        assert (masks[rows, cy, cx] == centre_value).mean() > 0.9, name
    # The triangle covers less of its box than the square does.
    tri = fill[labels == SHAPES.index("triangle")].mean()
    assert tri < fill[labels == SHAPES.index("square")].mean()


def test_colour_carries_no_class_information():
    labels = np.arange(600) % 6
    images, masks, _ = render_block(np.random.default_rng(2), labels, 24)
    m = masks[..., None].astype(np.float64)
    colour = (images * m).sum((1, 2)) / m.sum((1, 2))  # mean object colour (N, 3)
    train, test = np.arange(300), np.arange(300, 600)
    centroids = np.stack([colour[train][labels[train] == c].mean(0) for c in range(6)])
    pred = np.argmin(((colour[test, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[test]).mean() < 1 / 6 + 0.1  # chance, give or take


def test_object_stands_out_from_its_surroundings():
    labels = np.arange(60) % 6
    images, masks, _ = render_block(np.random.default_rng(3), labels, 32)
    m = masks[..., None].astype(np.float64)
    inside = (images * m).sum((1, 2)) / m.sum((1, 2))
    outside = (images * (1 - m)).sum((1, 2)) / (1 - m).sum((1, 2))
    assert np.median(np.abs(inside - outside).sum(1)) > 60


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"classes": 1}, "--classes"),
        ({"classes": 9}, "--classes"),
        ({"size": 8}, "--size"),
        ({"n_train": 0}, "n-train"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, kw, message):
    with pytest.raises(SatpipeError, match=message):
        _small(tmp_path / "x.zarr", **kw)
    assert not (tmp_path / "x.zarr").exists()


def test_existing_output_needs_overwrite(tmp_path):
    out = _small(tmp_path / "s.zarr")
    with pytest.raises(SatpipeError, match="output exists"):
        _small(out)
    _small(out, seed=9, overwrite=True)
    assert open_dataset(out).attrs["source"]["seed"] == 9


def test_no_test_split_when_n_test_is_zero(tmp_path):
    view = open_dataset(_small(tmp_path / "s.zarr", n_test=0))
    assert view.splits == ["train"]


def test_cli_make_shapes(tmp_path):
    out = str(tmp_path / "s.zarr")
    args = ["data", "make", "shapes", "--out", out, "--n-train", "24", "--n-test", "8"]
    args += ["--size", "16", "--classes", "3", "--seed", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    view = open_dataset(out)
    assert view.classes == list(SHAPES[:3]) and len(view.split("train")) == 24
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "output exists" in again.output
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "t.zarr"), "--classes", "12"])
    assert bad.exit_code == 1 and "--classes must be in 2..8" in bad.output


def test_light_contrast_puts_every_object_above_its_background():
    labels = np.arange(120) % 6
    images, masks, _ = render_block(
        np.random.default_rng(4), labels, 24, contrast="light", clutter=0, texture=0.5
    )
    m = masks[..., None].astype(np.float64)
    inside = (images * m).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3)))
    outside = (images * (1 - m)).sum((1, 2, 3)) / (3 * (1 - m).sum((1, 2, 3)))
    assert (inside > outside + 60).all()  # one sign of contrast in every image
    colour = (images * m).sum((1, 2)) / m.sum((1, 2))
    for c in range(6):  # and colour still says nothing about the class
        assert np.abs(colour[labels == c].mean(0) - colour.mean(0)).max() < 25


def test_styles_are_recorded_and_deterministic(tmp_path):
    a = _small(tmp_path / "a.zarr", contrast="light", clutter=0, texture=0.5)
    b = _small(tmp_path / "b.zarr", contrast="light", clutter=0, texture=0.5)
    c = _small(tmp_path / "c.zarr")
    fa, fb, fc = (open_dataset(p).fingerprint for p in (a, b, c))
    assert fa == fb != fc
    source = open_dataset(a).attrs["source"]
    assert (source["contrast"], source["clutter"], source["texture"]) == ("light", 0, 0.5)
    with pytest.raises(SatpipeError, match="unknown contrast"):
        _small(tmp_path / "d.zarr", contrast="dark")
    with pytest.raises(SatpipeError, match="--clutter"):
        _small(tmp_path / "e.zarr", clutter=-1)
