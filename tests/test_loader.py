"""The (image, saliency, label) loader: shapes, order, pairing, ranks, memory, refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from satpipe.core.errors import SatpipeError
from satpipe.data.augment import CropFlip, crop_flip, draw_crop_flip
from satpipe.data.dataset_store import DatasetWriter, open_dataset
from satpipe.data.loader import LoaderOptions, PairLoader, make_loader
from satpipe.data.saliency_store import open_saliency
from satpipe.data.storage import (
    shard_slices,
)
from satpipe.data.streaming import plan_segments
from satpipe.data.synthetic import write_saliency_maps

from .conftest import write_tiny_dataset

MODES = ("resident", "streaming")
SIZE = 16


def write_saliency(
    uri,
    dataset_uri: str,
    maps: np.ndarray,
    *,
    split: str = "train",
    complete: bool = True,
    fingerprint: str | None = None,
    done: np.ndarray | None = None,
    rows_per_shard: int = 8,
    storage_options=None,
) -> str:
    """A saliency store for `dataset_uri` holding `maps` (N,H,W,Cs) as float16."""
    ds = open_dataset(dataset_uri, storage_options)
    return write_saliency_maps(
        uri, dataset_uri, maps, split=split, rows_per_shard=rows_per_shard, done=done,
        complete=complete, overwrite=False, storage_options=storage_options,
        method="test", normalization="none",
        source_model={"arch": "none", "checkpoint_sha256": None, "variant": None},
        dataset={"uri": dataset_uri, "fingerprint": fingerprint or ds.fingerprint},
        created="2020-01-01T00:00:00Z", satpipe_version="test",
    )  # fmt: skip


def write_index_pair(
    tmp_path,
    n: int = 40,
    rows_per_shard: int = 8,
    num_classes: int = 5,
    name: str = "idx",
    n_test: int = 0,
):
    """A dataset and saliency store whose rows encode their own index and pixel position.

    image row i: channel 0 = i, channel 1 = 16*r + c (pixel position), channel 2 = 255 (marks a
    real pixel; zero padding has 0); label i % num_classes. `n_test` test rows alike (no maps).
    map row i: channels (i, 16*r + c, 1) as float16 (exact integers).
    """
    r, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    pos = (SIZE * r + c).astype(np.int64)
    idx = np.arange(n)[:, None, None]
    if n_test > n:
        raise ValueError("n_test must not exceed n")
    images = np.stack(
        [
            np.broadcast_to(idx, (n, SIZE, SIZE)),
            np.broadcast_to(pos, (n, SIZE, SIZE)),
            np.full((n, SIZE, SIZE), 255),
        ],
        -1,
    ).astype(np.uint8)
    labels = np.arange(n) % num_classes
    uri = str(tmp_path / f"{name}.zarr")
    with DatasetWriter(
        uri,
        name=name,
        classes=[f"c{k}" for k in range(num_classes)],
        image_shape=(SIZE, SIZE, 3),
        split_sizes={"train": n, "test": n_test} if n_test else {"train": n},
        rows_per_shard=rows_per_shard,
    ) as w:
        w.write("train", images, labels)
        if n_test:
            w.write("test", images[:n_test], labels[:n_test])
    maps = np.stack(
        [
            np.broadcast_to(idx, (n, SIZE, SIZE)),
            np.broadcast_to(pos, (n, SIZE, SIZE)),
            np.ones((n, SIZE, SIZE)),
        ],
        -1,
    ).astype(np.float16)
    sal = write_saliency(tmp_path / f"{name}_sal.zarr", uri, maps, rows_per_shard=rows_per_shard)
    return uri, sal


def row_ids(x: torch.Tensor) -> list[int]:
    """Row index encoded in channel 0 of an un-augmented index image batch."""
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def epoch_rows(loader, epoch: int = 0) -> list[int]:
    loader.set_epoch(epoch)
    return [i for x, _, _ in loader for i in row_ids(x)]


@pytest.fixture
def pair(tmp_path):
    return write_index_pair(tmp_path)


# ---- shapes, dtypes, ranges ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_batches_have_contract_shapes_dtypes_and_ranges(tmp_path, mode):
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=20, size=SIZE)
    rng = np.random.default_rng(0)
    maps = rng.uniform(-1, 1, (20, SIZE, SIZE, 1)).astype(np.float16)
    sal = write_saliency(tmp_path / "s.zarr", data, maps)
    loader = make_loader(data, "train", sal, batch_size=8, mode=mode, seed=3)
    assert loader.mode == mode and len(loader) == 3
    assert loader.num_classes == 4 and loader.image_shape == (SIZE, SIZE, 3)
    assert loader.num_rows == 20 and loader.saliency_channels == 1
    sizes = []
    for x, s, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, SIZE, SIZE)
        assert s.dtype == torch.float32 and s.shape[1:] == (1, SIZE, SIZE)
        assert y.dtype == torch.int64 and x.device.type == s.device.type == y.device.type == "cpu"
        assert x.min() >= 0 and x.max() <= 1 and x.is_contiguous() and s.is_contiguous()
        assert ((x * 255).round() == x * 255).all()  # exactly the stored grey levels
        assert y.min() >= 0 and y.max() < 4
        sizes.append(len(y))
    assert sizes == [8, 8, 4]
    # Without a saliency store batches carry s=None; the values are the stored ones.
    plain = make_loader(data, "test", batch_size=16, shuffle=False, mode=mode)
    x, s, y = next(iter(plain))
    stored = open_dataset(data).split("test")
    assert s is None and len(plain) == 1
    assert torch.equal(
        (x * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(stored.images[:])
    )
    assert torch.equal(y, torch.from_numpy(stored.labels[:]))


@pytest.mark.parametrize("mode", MODES)
def test_maps_arrive_as_stored_and_paired_with_their_rows(pair, mode):
    data, sal = pair
    loader = make_loader(data, "train", sal, batch_size=7, mode=mode, seed=1)
    for x, s, y in loader:
        ids = torch.tensor(row_ids(x))
        assert torch.equal(s[:, 0, 0, 0].long(), ids)
        assert torch.equal(y, ids % 5)
        assert torch.equal(s[:, 1], (x[:, 1] * 255).round())


# ---- order -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_order_and_each_row_once(pair, mode):
    data, sal = pair
    a = make_loader(data, "train", sal, batch_size=6, mode=mode, seed=7)
    b = make_loader(data, "train", sal, batch_size=6, mode=mode, seed=7)
    c = make_loader(data, "train", sal, batch_size=6, mode=mode, seed=8)
    e0, e1 = epoch_rows(a, 0), epoch_rows(a, 1)
    assert e0 == epoch_rows(b, 0) and e1 == epoch_rows(b, 1)
    assert e0 != e1 and e0 != epoch_rows(c, 0)
    assert e0 != sorted(e0)
    for rows in (e0, e1):
        assert sorted(rows) == list(range(40))
    assert epoch_rows(a, 0) == e0  # re-iterating an epoch repeats it


def test_resident_and_streaming_give_the_same_rows_per_epoch(pair):
    data, sal = pair
    res = make_loader(data, "train", sal, batch_size=16, mode="resident", seed=2)
    st = make_loader(data, "train", sal, batch_size=16, mode="streaming", seed=2)
    assert len(res) == len(st) == 3
    for epoch in range(2):
        assert sorted(epoch_rows(res, epoch)) == sorted(epoch_rows(st, epoch)) == list(range(40))


@pytest.mark.parametrize("mode", MODES)
def test_no_shuffle_is_row_order_and_drop_last_drops_the_tail(pair, mode):
    data, sal = pair
    ordered = make_loader(data, "train", sal, batch_size=16, shuffle=False, mode=mode)
    assert epoch_rows(ordered, 5) == list(range(40))
    dropped = make_loader(data, "train", sal, LoaderOptions(16, mode=mode, drop_last=True))
    rows = epoch_rows(dropped)
    assert len(dropped) == 2 and len(rows) == 32 and len(set(rows)) == 32


def test_streaming_shuffles_shard_order_and_within_a_window(pair):
    data, sal = pair
    options = LoaderOptions(batch_size=40, mode="streaming", seed=0, buffer_shards=5)
    loader = make_loader(data, "train", sal, options)
    starts = [a for a, _ in loader.epoch_segments()]
    assert sorted(starts) == [0, 8, 16, 24, 32] and starts != sorted(starts)
    (rows,) = [row_ids(x) for x, _, _ in loader]
    # One window of all five shards: rows of different shards interleave.
    shard_of = [r // 8 for r in rows]
    changes = sum(a != b for a, b in zip(shard_of, shard_of[1:], strict=False))
    assert changes > 4 and sorted(rows) == list(range(40))


# ---- augmentation ------------------------------------------------------------------------------


def reference_crop_flip(t: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """One row, (H, W, C): zero-pad, crop at (dy, dx), then mirror - the textbook order."""
    h, w = t.shape[:2]
    padded = F.pad(t.permute(2, 0, 1), (pad, pad, pad, pad)).permute(1, 2, 0)
    out = padded[dy : dy + h, dx : dx + w]
    return out.flip(1) if flip else out


def test_crop_flip_matches_a_per_row_reference():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 9, 11, 3), dtype=torch.uint8, generator=gen)
    maps = torch.randn(12, 9, 11, 1, generator=gen).half()
    masks = torch.randint(0, 2, (12, 9, 11), dtype=torch.uint8, generator=gen)
    params = draw_crop_flip(12, gen, pad=4)
    assert params.flip.any() and (~params.flip).any()
    out_x, out_s, out_m = crop_flip([images, maps, masks], params)
    assert out_x.dtype == torch.uint8 and out_s.dtype == torch.float16
    for b in range(12):
        args = int(params.dy[b]), int(params.dx[b]), bool(params.flip[b]), 4
        assert torch.equal(out_x[b], reference_crop_flip(images[b], *args))
        assert torch.equal(out_s[b], reference_crop_flip(maps[b], *args))
        assert torch.equal(out_m[b], reference_crop_flip(masks[b, :, :, None], *args)[..., 0])
    # No shift and no flip is the identity.
    ident = CropFlip(torch.full((12,), 4), torch.full((12,), 4), torch.zeros(12, dtype=bool))
    assert torch.equal(crop_flip([images], ident)[0], images)


@pytest.mark.parametrize("mode", MODES)
def test_augmentation_moves_image_and_map_together(pair, mode):
    data, sal = pair
    loader = make_loader(data, "train", sal, batch_size=16, mode=mode, seed=4, augment=True)
    shifts, flips, seen = set(), set(), []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, s, y in loader:
            xi = (x * 255).round().long()
            real = xi[:, 2] == 255  # pixels that came from the image, not the zero padding
            assert torch.equal(real, s[:, 2] == 1)
            # Same source row, same source pixel, everywhere.
            assert torch.equal(torch.where(real, xi[:, 0], 0), s[:, 0].long())
            assert torch.equal(torch.where(real, xi[:, 1], 0), s[:, 1].long())
            for b in range(len(y)):
                ids = xi[b, 0][real[b]].unique()
                assert len(ids) == 1 and int(y[b]) == int(ids) % 5
                seen.append(int(ids))
                # The source positions form one rigid shift (and maybe a mirror) of the grid.
                rr, cc = torch.nonzero(real[b], as_tuple=True)
                src = xi[b, 1][real[b]]
                dr, dc = (src // SIZE) - rr, (src % SIZE) - cc
                assert (dr == dr[0]).all() and abs(int(dr[0])) <= 4
                if (dc == dc[0]).all():
                    flips.add(False)
                    shifts.add((int(dr[0]), int(dc[0])))
                else:
                    mirrored = (src % SIZE) + cc
                    assert (mirrored == mirrored[0]).all()
                    flips.add(True)
        assert sorted(seen[-40:]) == list(range(40))
    assert flips == {True, False} and len(shifts) > 3
    # Same seed, same augmentation.
    again = make_loader(data, "train", sal, batch_size=16, mode=mode, seed=4, augment=True)
    loader.set_epoch(0)
    for (x1, s1, _), (x2, s2, _) in zip(loader, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(s1, s2)


# ---- ranks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [40, 37])
def test_ranks_read_disjoint_parts_covering_the_epoch(tmp_path, mode, n):
    data, sal = write_index_pair(tmp_path, n=n, rows_per_shard=8)
    world = 2
    per_rank = []
    for rank in range(world):
        options = LoaderOptions(batch_size=6, mode=mode, seed=9, rank=rank, world_size=world)
        loader = make_loader(data, "train", sal, options)
        rows = epoch_rows(loader, 3)
        assert len(loader) == 4 and len(rows) == -(-n // world)
        per_rank.append(rows)
    assert sorted(set(per_rank[0]) | set(per_rank[1])) == list(range(n))
    # Padded by wrapping when N is odd: exactly one row is seen twice, otherwise none.
    assert len(per_rank[0]) + len(per_rank[1]) - n == n % world
    assert len(set(per_rank[0])) == len(set(per_rank[1])) == len(per_rank[0])
    # drop_last: floor(N/W) rows per rank, all distinct, whole batches only.
    dropped = [
        epoch_rows(
            make_loader(
                data,
                "train",
                sal,
                LoaderOptions(6, mode=mode, seed=9, rank=r, world_size=world, drop_last=True),
            ),
            3,
        )
        for r in range(world)
    ]
    assert [len(d) for d in dropped] == [18, 18]
    assert len(set(dropped[0]) | set(dropped[1])) == 36


def test_streaming_ranks_read_disjoint_shards():
    slices = shard_slices(40, 8)
    rank0, rank1 = plan_segments(slices, 0, 20), plan_segments(slices, 20, 40)
    assert rank0 == [(0, 8), (8, 16), (16, 20)] and rank1 == [(20, 24), (24, 32), (32, 40)]
    # Past the end wraps to the start (padding); every segment stays within one shard.
    assert plan_segments(slices, 36, 42) == [(36, 40), (0, 2)]


# ---- memory bound and modes ---------------------------------------------------------------


def test_streaming_holds_a_bounded_number_of_shards(tmp_path):
    data, sal = write_index_pair(tmp_path, n=96, rows_per_shard=4)  # 24 shards
    options = LoaderOptions(5, mode="streaming", buffer_shards=2, prefetch_shards=3, io_threads=2)
    loader = make_loader(data, "train", sal, options)
    rows = epoch_rows(loader)
    assert sorted(rows) == list(range(96))
    assert loader.stats.segments_read == 24
    assert 2 <= loader.stats.max_shards_held <= 2 + 3 and loader.stats.held == 0


def test_streaming_stops_cleanly_when_the_consumer_breaks(pair):
    data, sal = pair
    options = LoaderOptions(4, mode="streaming", buffer_shards=1, prefetch_shards=1)
    loader = make_loader(data, "train", sal, options)
    it = iter(loader)
    next(it), next(it)
    it.close()  # the generator's finally stops the reader threads
    alive = [t.name for t in threading.enumerate() if t.name.startswith("satpipe-")]
    assert alive == []
    assert len(epoch_rows(loader)) == 40


def test_auto_mode_follows_the_memory_budget(pair):
    data, sal = pair
    none, plenty = LoaderOptions(memory_budget_bytes=0), LoaderOptions(memory_budget_bytes=1 << 30)
    assert make_loader(data, "train", sal, none).mode == "streaming"
    assert make_loader(data, "train", sal, plenty).mode == "resident"
    assert make_loader(data, "train", sal).mode == "resident"  # tiny: fits the default


def test_streaming_from_s3(s3, tmp_path):
    import fsspec

    data, sal = write_index_pair(tmp_path, n=20)
    urls = [s3.url("d.zarr"), s3.url("s.zarr")]
    fs = fsspec.filesystem("s3", **s3.storage_options)
    for local, url in zip((data, sal), urls, strict=True):
        fs.put(local, url.removeprefix("s3://"), recursive=True)
    loader = make_loader(
        urls[0],
        "train",
        urls[1],
        LoaderOptions(io_threads=2),
        batch_size=8,
        mode="streaming",
        storage_options=s3.storage_options,
    )
    assert loader.mode == "streaming" and len(loader) == 3
    rows = []
    for x, s, _ in loader:
        assert torch.equal(s[:, 0, 0, 0].long(), torch.tensor(row_ids(x)))
        rows += row_ids(x)
    assert sorted(rows) == list(range(20))


# ---- refusals -----------------------------------------------------------------------------------


def one_line_error(fn) -> str:
    with pytest.raises(SatpipeError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refuses_incomplete_and_mismatched_saliency_stores(tmp_path):
    data, _ = write_index_pair(tmp_path, n=16)
    maps = np.zeros((16, SIZE, SIZE, 1), np.float16)
    incomplete = write_saliency(tmp_path / "a.zarr", data, maps, complete=False)
    assert "incomplete" in one_line_error(lambda: make_loader(data, saliency=incomplete))
    undone = write_saliency(tmp_path / "b.zarr", data, maps, done=np.array([1, 0], np.uint8))
    msg = one_line_error(lambda: make_loader(data, saliency=undone))
    assert "b.zarr" in msg and "1 of 2" in msg
    other = write_saliency(tmp_path / "c.zarr", data, maps, fingerprint="sha256:" + "0" * 64)
    assert "c.zarr" in one_line_error(lambda: make_loader(data, saliency=other))
    short = write_saliency(tmp_path / "d.zarr", data, maps[:, :8])
    assert "shape" in one_line_error(lambda: make_loader(data, saliency=short))
    assert "test" in one_line_error(lambda: make_loader(data, "test"))
    assert "mode" in one_line_error(lambda: make_loader(data, mode="fast"))


def test_options_are_checked_when_made_and_set_in_one_place(pair):
    data, sal = pair
    assert "batch size" in one_line_error(lambda: LoaderOptions(batch_size=0))
    assert "rank 2" in one_line_error(lambda: LoaderOptions(rank=2, world_size=2))
    assert "loader mode" in one_line_error(lambda: LoaderOptions(mode="fast"))
    assert LoaderOptions(device="cpu").device == torch.device("cpu")
    options = LoaderOptions(batch_size=16, mode="streaming")
    msg = one_line_error(lambda: make_loader(data, "train", sal, options, batch_size=8))
    assert "batch_size" in msg and "one place" in msg
    # A keyword fills a field the options leave at its default.
    loader = make_loader(data, "train", sal, options, seed=3, mode=None)
    assert loader.mode == "streaming" and loader.batch_size == 16 and loader.seed == 3
    # Built from open views, a PairLoader settles mode "auto" itself.
    view, maps = open_dataset(data), open_saliency(sal)
    assert PairLoader(view, "train", maps, LoaderOptions()).mode == "resident"
    streamed = PairLoader(view, "train", maps, LoaderOptions(memory_budget_bytes=0))
    assert streamed.mode == "streaming" and len(epoch_rows(streamed)) == 40


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_nan_or_inf_saliency_naming_the_rows(tmp_path, mode, bad):
    data, _ = write_index_pair(tmp_path, n=16)
    maps = np.zeros((16, SIZE, SIZE, 3), np.float16)
    maps[11, 3, 4, 1] = bad
    sal = write_saliency(tmp_path / "nan.zarr", data, maps)

    def run():
        for _ in make_loader(data, "train", sal, batch_size=4, mode=mode):
            pass

    msg = one_line_error(run)
    assert "nan.zarr" in msg and "rows 8..15" in msg and "row 11" in msg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_batches_equal_cpu_batches(pair, mode):
    """Equal by construction: both devices divide the bytes by 255 correctly rounded (a
    device-tensor divisor; CUDA would multiply by the reciprocal of a Python scalar); CUDA
    batches come channels_last, which torch.equal does not look at."""
    data, sal = pair
    kw = dict(batch_size=16, mode=mode, seed=5, augment=True)
    cpu = make_loader(data, "train", sal, device="cpu", **kw)
    gpu = make_loader(data, "train", sal, device="cuda", **kw)
    for (x1, s1, y1), (x2, s2, y2) in zip(cpu, gpu, strict=True):
        assert x2.is_cuda and s2.is_cuda and y2.is_cuda
        assert x2.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x1, x2.cpu()) and torch.equal(s1, s2.cpu()) and torch.equal(y1, y2.cpu())
