"""`shapes`: the built-in synthetic dataset (no download) with true masks and boxes.

Each image is one coloured shape on a textured, cluttered background. The class is the shape
only: colour, size, position, rotation and aspect are drawn independently of it, and the
clutter (thin lines and soft elongated blobs, in colours away from the object's) never forms a
class shape, so a classifier has to look at the object's outline. Masks (1 = object) and
boxes (x0, y0, x1, y1, end exclusive) are exact: they come from the same geometry that
painted the object.

Styles (`contrast`, `clutter`, `texture`): `contrast="any"` (the default) draws the object in
a colour far from its background's, lighter or darker; `contrast="light"` draws light objects
(each channel in [160, 255]) on dark backgrounds and dark clutter (channels in [0, 110] and
[0, 140]). With "light" the evidence for a class has one sign in every image: a lighter
object is more of that object, so the sign of a saliency map (what SAT's -s perturbation
uses) can mean the same thing in every image; with "any" the sign of a gradient at an edge
flips with the contrast's direction, a coin toss per image. `clutter` is the number of
clutter passes (a line and a blob, each present with probability 0.6) and `texture` scales
the background's grating. Defaults give the bytes of generator version 1.

Generation is vectorised numpy over blocks of `BLOCK_ROWS` rows. Every block draws from its
own seed (`SeedSequence(seed, spawn_key=(split, 1, block))`) and labels from a per-split
stream, so the bytes depend only on (seed, sizes, size, classes), never on how the store is
sharded or written. Same seed -> same images, masks, boxes and fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice, option, storage_options_field
from satpipe.core.progress import progress
from satpipe.data.dataset_store import DatasetWriter

GENERATOR_VERSION = 2  # 2: the contrast, clutter and texture styles (defaults: version 1's bytes)
BLOCK_ROWS = 256
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "ell")
MIN_SIZE = 16
CONTRASTS = ("any", "light")
_SPLIT_CODES = {"train": 0, "test": 1}


# --------------------------------------------------------------------------------------------
# Shape geometry: inside tests on object coordinates (u, v), the shape fits the unit disk.


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.75
    if shape == "triangle":  # equilateral, vertices on the unit circle, centroid at 0
        return (v >= -0.5) & (v <= 1.0 - np.sqrt(3.0) * au)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "star":  # five points, inner radius 0.42
        phase = (np.arctan2(v, u) * (5.0 / (2.0 * np.pi))) % 1.0
        return rho <= 0.42 + 0.58 * np.abs(2.0 * phase - 1.0)
    if shape == "crescent":  # the unit disk minus an offset disk
        return (rho <= 1.0) & (np.hypot(u - 0.45, v) > 0.75)
    if shape == "ell":
        bar = (u >= -0.8) & (u <= -0.2) & (av <= 0.8)
        foot = (au <= 0.8) & (v >= -0.8) & (v <= -0.2)
        return bar | foot
    raise SatpipeError(f"unknown shape '{shape}'; choose from {', '.join(SHAPES)}")


def _far_colours(rng: np.random.Generator, away_from: np.ndarray, candidates: int = 4):
    """(B, 3) colours in [0, 255]: of `candidates` uniform draws, the one farthest from
    `away_from` (B, 3), so objects and clutter stay visible against what they cover."""
    b = away_from.shape[0]
    cand = rng.uniform(0.0, 255.0, (b, candidates, 3)).astype(np.float32)
    dist = np.square(cand - away_from[:, None, :]).sum(-1)
    return cand[np.arange(b), np.argmax(dist, axis=1)]


def render_block(
    rng: np.random.Generator,
    labels: np.ndarray,
    size: int,
    shapes: tuple[str, ...] = SHAPES,
    contrast: str = "any",
    clutter: int = 2,
    texture: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one block of images for `labels` (B,) with indices into `shapes`, in the style
    `contrast`, `clutter`, `texture` (see the module docstring).

    Returns images uint8 (B, size, size, 3), masks uint8 (B, size, size) in {0, 1} and boxes
    int32 (B, 4) as (x0, y0, x1, y1), end exclusive; every mask is non-empty and inside.
    The steps draw from `rng` in a fixed order (the bytes depend on it): background, object
    placement, clutter lines, clutter blobs, object shading, pixel noise.
    """
    b, s = len(labels), size
    f32 = np.float32
    light = contrast == "light"
    # Pixel centres, broadcast as (1, S, S).
    yy, xx = (g[None].astype(f32) + f32(0.5) for g in np.mgrid[0:s, 0:s])
    img = _background(rng, b, s, xx, yy, 110.0 if light else 255.0, texture)
    bg_mean = img.mean(axis=(1, 2))

    # Object placement first: clutter colours are chosen away from the object's colour.
    obj = rng.uniform(160, 255, (b, 3)).astype(f32) if light else _far_colours(rng, bg_mean)
    radius = rng.uniform(0.22 * s, 0.4 * s, b).astype(f32)
    aspect = rng.uniform(0.85, 1.15, b).astype(f32)
    extent = radius * np.maximum(aspect, 1 / aspect)
    cx = rng.uniform(0, 1, b).astype(f32) * (s - 2 * extent) + extent
    cy = rng.uniform(0, 1, b).astype(f32) * (s - 2 * extent) + extent
    theta = rng.uniform(0, 2 * np.pi, b).astype(f32)

    def clutter_colour() -> np.ndarray:
        return rng.uniform(0, 140, (b, 3)).astype(f32) if light else _far_colours(rng, obj)

    # Clutter: up to `clutter` thin line segments and soft elongated blobs per image.
    for _ in range(clutter):
        img = _clutter_line(rng, img, xx, yy, clutter_colour())
    for _ in range(clutter):
        img = _clutter_blob(rng, img, xx, yy, clutter_colour())

    # The object: shape test in its own rotated, scaled frame; shaded and noisy.
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * cos + dy * sin) / (radius * aspect)[:, None, None]
    v = (-dx * sin + dy * cos) / (radius / aspect)[:, None, None]
    masks = _masks(labels, shapes, u, v)
    shade = 1.0 + rng.uniform(-0.25, 0.25, b).astype(f32)[:, None, None] * u
    painted = obj[:, None, None] * np.clip(shade, 0.6, 1.4)[..., None]
    img = np.where(masks[..., None], painted, img)

    sigma = rng.uniform(3, 10, b).astype(f32)[:, None, None, None]
    img += rng.standard_normal((b, s, s, 3), dtype=f32) * sigma
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images, masks.astype(np.uint8), _boxes(masks)


def _background(rng, b: int, s: int, xx, yy, top: float, texture: float) -> np.ndarray:
    """(B, S, S, 3) float32: a two-colour ramp (channels in [0, top]) and a coloured
    grating scaled by `texture`."""
    f32 = np.float32
    c0 = rng.uniform(0, top, (b, 3)).astype(f32)
    c1 = rng.uniform(0, top, (b, 3)).astype(f32)
    ang = rng.uniform(0, 2 * np.pi, b).astype(f32)[:, None, None]
    ramp = (xx - s / 2) * np.cos(ang) + (yy - s / 2) * np.sin(ang)
    ramp = np.clip(ramp / s + 0.5, 0.0, 1.0)[..., None]
    img = c0[:, None, None] + (c1 - c0)[:, None, None] * ramp
    freq = rng.uniform(1.5, 6.0, b).astype(f32)[:, None, None] * f32(2 * np.pi / s)
    gang = rng.uniform(0, np.pi, b).astype(f32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, b).astype(f32)[:, None, None]
    grating = np.sin(freq * (xx * np.cos(gang) + yy * np.sin(gang)) + phase)
    weights = rng.uniform(-1, 1, (b, 3)).astype(f32) * rng.uniform(5, 25, (b, 1)).astype(f32)
    if texture != 1.0:
        weights *= f32(texture)
    img += grating[..., None] * weights[:, None, None]
    return img


def _clutter_line(rng, img: np.ndarray, xx, yy, colour: np.ndarray) -> np.ndarray:
    """`img` with a thin line segment in `colour` (B, 3) in about 60% of the images."""
    b, s, f32 = img.shape[0], img.shape[1], np.float32
    on = rng.uniform(0, 1, b) < 0.6
    p = rng.uniform(0, s, (b, 2)).astype(f32)
    q = rng.uniform(0, s, (b, 2)).astype(f32)
    width = rng.uniform(0.5, 1.2, b).astype(f32)
    d = q - p
    dx, dy = xx - p[:, 0, None, None], yy - p[:, 1, None, None]
    t = (dx * d[:, 0, None, None] + dy * d[:, 1, None, None]) / np.maximum(
        np.square(d).sum(1), 1e-6
    )[:, None, None]
    t = np.clip(t, 0, 1)
    ex, ey = dx - t * d[:, 0, None, None], dy - t * d[:, 1, None, None]
    near = ex * ex + ey * ey <= np.square(width)[:, None, None]
    alpha = (near & on[:, None, None])[..., None]
    return np.where(alpha, colour[:, None, None], img)


def _clutter_blob(rng, img: np.ndarray, xx, yy, colour: np.ndarray) -> np.ndarray:
    """`img` with a soft elongated blob in `colour` (B, 3) in about 60% of the images."""
    b, s, f32 = img.shape[0], img.shape[1], np.float32
    on = (rng.uniform(0, 1, b) < 0.6).astype(f32)
    centre = rng.uniform(0, s, (b, 2)).astype(f32)
    long_ = rng.uniform(1.5, 0.14 * s, b).astype(f32)
    short = long_ * rng.uniform(0.2, 0.5, b).astype(f32)
    phi = rng.uniform(0, np.pi, b).astype(f32)[:, None, None]
    dx, dy = xx - centre[:, 0, None, None], yy - centre[:, 1, None, None]
    a = (dx * np.cos(phi) + dy * np.sin(phi)) / long_[:, None, None]
    c = (-dx * np.sin(phi) + dy * np.cos(phi)) / short[:, None, None]
    alpha = (np.exp(-0.5 * (a * a + c * c)) * (0.9 * on)[:, None, None])[..., None]
    return img * (1 - alpha) + colour[:, None, None] * alpha


def _masks(labels: np.ndarray, shapes: tuple[str, ...], u, v) -> np.ndarray:
    """(B, S, S) bool: where each image's shape `shapes[label]` covers its object frame
    coordinates (u, v)."""
    masks = np.zeros(u.shape, dtype=bool)
    for k in np.unique(labels):
        rows = labels == k
        masks[rows] = _inside(shapes[int(k)], u[rows], v[rows])
    return masks


def _boxes(masks: np.ndarray) -> np.ndarray:
    """(B, 4) int32 boxes (x0, y0, x1, y1), end exclusive, of non-empty (B, S, S) masks."""
    s = masks.shape[1]
    cols, rows_ = masks.any(axis=1), masks.any(axis=2)
    x0 = np.argmax(cols, axis=1)
    x1 = s - np.argmax(cols[:, ::-1], axis=1)
    y0 = np.argmax(rows_, axis=1)
    y1 = s - np.argmax(rows_[:, ::-1], axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)


def split_labels(seed: int, split: str, n: int, classes: int) -> np.ndarray:
    """Balanced labels (N,) int64 for a split: each class n // classes or one more times,
    in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], 0)))
    return rng.permutation(np.arange(n, dtype=np.int64) % classes)


def block_rng(seed: int, split: str, block: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], 1, block))
    )


def generate_split(
    seed: int,
    split: str,
    n: int,
    classes: int,
    size: int,
    block_rows: int = BLOCK_ROWS,
    **style: Any,
):
    """Yield (images, labels, masks, boxes) blocks of `block_rows` rows for one split; `style`:
    render_block's contrast, clutter, texture."""
    labels = split_labels(seed, split, n, classes)
    for k, start in enumerate(range(0, n, block_rows)):
        lab = labels[start : start + block_rows]
        images, masks, boxes = render_block(block_rng(seed, split, k), lab, size, **style)
        yield images, lab, masks, boxes


@dataclass
class ShapesConfig:
    """The `shapes` generator's settings (`satpipe data make shapes`)."""

    out: str = option(help="Output store: path or URL (.zarr).", short="-o")
    classes: int = option(6, f"Number of shape classes (2..{len(SHAPES)}).")
    n_train: int = option(2000, "Training images.")
    n_test: int = option(500, "Test images (0: no test split).")
    size: int = option(32, f"Image side in pixels (>= {MIN_SIZE}).")
    contrast: str = option(
        "any", "any: objects far from their background's colour; light: light objects on dark "
        "backgrounds (the evidence for a class has one sign).", choices=CONTRASTS,
    )  # fmt: skip
    clutter: int = option(2, "Clutter passes: a line and a blob each, present with p = 0.6.")
    texture: float = option(1.0, "Strength of the background grating (0: a plain ramp).")
    seed: int = option(0, "Seed: same seed, same bytes.")
    overwrite: bool = option(False, "Replace an existing OUT.")
    storage_options: dict[str, Any] = storage_options_field()

    def __post_init__(self) -> None:
        self.contrast = check_choice(self.contrast, CONTRASTS, "contrast")
        if self.clutter < 0 or self.texture < 0:
            raise SatpipeError(
                f"shapes: --clutter and --texture must be >= 0, got {self.clutter}, {self.texture}"
            )
        if not 2 <= self.classes <= len(SHAPES):
            raise SatpipeError(f"shapes: --classes must be in 2..{len(SHAPES)}, got {self.classes}")
        if self.size < MIN_SIZE:
            raise SatpipeError(f"shapes: --size must be at least {MIN_SIZE}, got {self.size}")
        if self.n_train < 1 or self.n_test < 0:
            raise SatpipeError(
                f"shapes: need n-train >= 1 and n-test >= 0, got {self.n_train}, {self.n_test}"
            )


def make_shapes(out: str, **options: Any) -> str:
    """Write the `shapes` dataset store to `out` (path or fsspec URL); returns `out`.

    options: the fields of ShapesConfig (classes 2..8 of circle, square, triangle, cross, ring,
    star, crescent, ell; size >= 16; contrast, clutter, texture; n_train, n_test, seed,
    overwrite, storage_options).
    Images uint8 (N, size, size, 3), masks (N, size, size) in {0, 1}, boxes (N, 4) int32, end
    exclusive.
    """
    cfg = ShapesConfig(out=str(out), **options)
    sizes = {"train": cfg.n_train, "test": cfg.n_test}
    sizes = {k: v for k, v in sizes.items() if v > 0}
    source = {
        "generator": "satpipe.data.shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "size": cfg.size,
        "classes": cfg.classes,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "block_rows": BLOCK_ROWS,
        "contrast": cfg.contrast,
        "clutter": cfg.clutter,
        "texture": cfg.texture,
    }
    blocks = sum(-(-n // BLOCK_ROWS) for n in sizes.values())
    with (
        DatasetWriter(
            cfg.out,
            name="shapes",
            classes=list(SHAPES[: cfg.classes]),
            image_shape=(cfg.size, cfg.size, 3),
            split_sizes=sizes,
            has_masks=True,
            has_boxes=True,
            source=source,
            overwrite=cfg.overwrite,
            storage_options=cfg.storage_options,
        ) as writer,
        progress("shapes", blocks) as advance,
    ):
        for split, n in sizes.items():
            style = {"contrast": cfg.contrast, "clutter": cfg.clutter, "texture": cfg.texture}
            for block in generate_split(cfg.seed, split, n, cfg.classes, cfg.size, **style):
                writer.write(split, *block)
                advance()
    return cfg.out
