"""The public API a user imports (`import satpipe as sp`): the Dataset over stores, saliency
from a model in memory, one-call robustness, and the lazy import that keeps the CLI fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import satpipe as sp
from satpipe.train.checkpoint import model_record, save_checkpoint
from tests.conftest import write_tiny_dataset, write_tiny_saliency


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensor ops (the attacks' especially) crawl with 2 intra-op threads on a loaded
    # 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = write_tiny_dataset(root / "d.zarr", n_train=32, n_test=16, size=16)
    # random maps in [-1, 1], 3 channels: every pixel differs, so misalignment shows
    sal = write_tiny_saliency(root / "s.zarr", data, channels=3, source="random")
    return data, sal


def test_import_satpipe_loads_no_torch():
    code = "import sys, satpipe; satpipe.__version__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "SaliencyDataset" in dir(sp) and "robust_accuracy" in sp.__all__
    with pytest.raises(AttributeError):
        sp.no_such_name  # noqa: B018


def test_the_loader_and_its_options_are_public(pair):
    data, sal = pair
    options = sp.LoaderOptions(batch_size=8, shuffle=False, mode="resident")
    loader = sp.make_loader(data, "train", sal, options)
    x, s, y = next(iter(loader))
    assert x.shape == (8, 3, 16, 16) and s.shape == (8, 3, 16, 16) and y.shape == (8,)
    assert "LoaderOptions" in sp.__all__ and "make_loader" in dir(sp)


def test_item_i_is_row_i_of_the_stores(pair):
    data, sal = pair
    ds = sp.SaliencyDataset(data, sal)
    images = sp.open_dataset(data).split("train").images[:]
    labels = sp.open_dataset(data).split("train").labels[:]
    maps = sp.open_saliency(sal).split("train")[:]
    assert len(ds) == 32 and ds.num_classes == 4 and ds.saliency_channels == 3
    for i in (0, 7, 8, 31, -1):
        image, smap, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
        assert torch.equal(image, torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)
        assert torch.equal(smap, torch.from_numpy(maps[i].astype(np.float32)).permute(2, 0, 1))
        assert label.dtype == torch.int64 and int(label) == labels[i]
    batch = ds.__getitems__([3, 17, 9, -1])  # what a DataLoader asks for: a batch at once
    for got, i in zip(batch, [3, 17, 9, 31], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, ds[i], strict=True))
    image, label = sp.SaliencyDataset(data, split="test")[3]  # no maps: (image, label)
    assert (
        image.shape == (3, 16, 16) and int(label) == sp.open_dataset(data).split("test").labels[3]
    )
    with pytest.raises(IndexError):
        ds[32]


def test_a_shuffled_epoch_reads_each_shard_once(pair):
    data, sal = pair
    ds = sp.SaliencyDataset(data, sal)
    for i in torch.randperm(len(ds)).tolist():
        ds[i]
    assert ds.stats.shards_read == 4 and ds.stats.rows_served == 32  # 32 rows, 8 per shard


def test_v2_geometry_moves_both_photometry_leaves_the_map(pair):
    from torchvision.transforms import v2

    data, sal = pair
    plain = sp.SaliencyDataset(data, sal)
    image, smap, _ = plain[5]
    flipped = sp.SaliencyDataset(data, sal, transform=v2.RandomHorizontalFlip(p=1.0))[5]
    assert torch.equal(flipped[0], image.flip(-1)) and torch.equal(flipped[1], smap.flip(-1))
    crop = v2.RandomCrop(16, padding=4)
    torch.manual_seed(3)
    ci, cs, _ = sp.SaliencyDataset(data, sal, transform=crop)[5]
    torch.manual_seed(3)
    top, left, _, _ = v2.RandomCrop.get_params(torch.zeros(3, 24, 24), (16, 16))
    want_i = nn.functional.pad(image, (4, 4, 4, 4))[:, top : top + 16, left : left + 16]
    want_s = nn.functional.pad(smap, (4, 4, 4, 4))[:, top : top + 16, left : left + 16]
    assert (top, left) != (4, 4) and torch.equal(ci, want_i) and torch.equal(cs, want_s)
    jitter = v2.Compose([v2.ColorJitter(0.8, 0.8, 0.8, 0.2), v2.Normalize([0.5] * 3, [0.2] * 3)])
    ji, js, _ = sp.SaliencyDataset(data, sal, transform=jitter)[5]
    assert not torch.equal(ji, image) and torch.equal(js, smap)


def test_two_workers_and_two_ranks_cover_the_split_once(pair):
    data, sal = pair
    ds = sp.SaliencyDataset(data, sal)
    want = sorted(ds[i][1].flatten()[:8].tolist() for i in range(len(ds)))
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2)
    got = [m.flatten()[:8].tolist() for _, s, _ in loader for m in s]
    assert sorted(got) == want
    ranks = [list(DistributedSampler(ds, num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 16 and sorted(ranks[0] + ranks[1]) == list(range(32))


def test_bad_pairs_splits_and_transforms_are_one_line(pair, tmp_path):
    from satpipe.core.errors import SatpipeError

    data, sal = pair
    other = write_tiny_dataset(tmp_path / "other.zarr", seed=1)
    with pytest.raises(SatpipeError, match="fingerprint mismatch") as e:
        sp.SaliencyDataset(other, sal)
    assert "\n" not in str(e.value) and sal in str(e.value)
    with pytest.raises(SatpipeError, match="no 'test' split"):
        sp.SaliencyDataset(data, sal, split="test")  # the maps cover train only
    ds = sp.SaliencyDataset(data, sal, transform=lambda i, s: (i, s[:, :8, :8]))
    with pytest.raises(SatpipeError, match=r"changed the map's size to \(8, 8\)"):
        ds[0]


class Net(nn.Module):
    """A model a user writes: [0, 1] in, logits out, no satpipe in sight."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


def test_compute_saliency_from_a_module_equals_its_checkpoint(pair, tmp_path):
    data, _ = pair
    torch.manual_seed(0)
    model = sp.create_model("smallcnn", 4)
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model_record(model, 4, 3)})
    model.train()  # the caller's mode is the caller's business
    kw = dict(method="gradient", batch_size=16, device="cpu")
    a = sp.compute_saliency(model, data, str(tmp_path / "a.zarr"), **kw)
    b = sp.compute_saliency(str(path), data, str(tmp_path / "b.zarr"), **kw)
    va, vb = sp.open_saliency(a), sp.open_saliency(b)
    assert np.array_equal(va.split("train")[:], vb.split("train")[:])
    assert model.training  # untouched
    source = va.attrs["source_model"]
    assert source["module_class"].endswith("SmallCNN") and len(source["state_dict_sha256"]) == 64
    assert vb.attrs["source_model"]["checkpoint_sha256"]
    # any module works; ig with params passed through
    c = sp.compute_saliency(Net(), data, str(tmp_path / "c.zarr"), "ig", steps=4, device="cpu")
    assert sp.open_saliency(c).attrs["params"]["steps"] == 4
    assert sp.open_saliency(c).attrs["source_model"]["module_class"].endswith("Net")


def test_compute_saliency_refuses_bad_models_and_methods(pair, tmp_path):
    from satpipe.core.errors import SatpipeError

    data, _ = pair

    class Flat(Net):
        def forward(self, x):
            return super().forward(x)[:, :, None]

    with pytest.raises(SatpipeError, match=r"model Flat must return \(B, classes\) logits"):
        sp.compute_saliency(Flat(), data, str(tmp_path / "x.zarr"), "gradient", device="cpu")
    with pytest.raises(SatpipeError, match="unknown saliency method 'nope'; choose one of"):
        sp.compute_saliency(Net(), data, str(tmp_path / "x.zarr"), "nope")
    with pytest.raises(SatpipeError, match="nn.Module or a checkpoint path"):
        sp.compute_saliency(42, data, str(tmp_path / "x.zarr"), "gradient")


def test_robust_accuracy_equals_satpipe_eval(pair, tmp_path):
    from satpipe.train.eval.evaluate import evaluate
    from satpipe.train.eval.per_image import load_correct

    data, _ = pair
    torch.manual_seed(0)
    model = sp.create_model("smallcnn", 4)
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model_record(model, 4, 3)})
    out = tmp_path / "eval"
    evaluate(path, data=data, attacks=("pgd", "autoattack"), eps=(8,),
             attack_eps={"autoattack": 48}, batch_size=16, device="cpu", out=out,
             strict=False)  # fmt: skip
    c = load_correct(out)
    test = sp.SaliencyDataset(data, split="test")
    x = torch.stack([test[int(i)][0] for i in c.indices])
    y = torch.stack([test[int(i)][1] for i in c.indices])
    r = sp.robust_accuracy(model, x, y, "pgd", 8 / 255, batch_size=16)
    assert np.array_equal(r.correct, c.get("pgd", 8, 0)) and r.clean.any()
    assert r.interval.low <= r.accuracy <= r.interval.high and r.correct.dtype == bool
    aa = sp.robust_accuracy(model, x, y, "autoattack", 48 / 255, batch_size=16)
    assert np.array_equal(aa.correct, c.get("autoattack", 48, 0))


def test_robust_accuracy_refuses_bad_input():
    from satpipe.core.errors import SatpipeError

    model, x, y = Net(), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(SatpipeError, match="unknown attack 'pgdd'; choose one of"):
        sp.robust_accuracy(model, x, y, "pgdd")
    with pytest.raises(SatpipeError, match="pixel units"):
        sp.robust_accuracy(model, x, y, eps=8)
    with pytest.raises(SatpipeError, match=r"must return \(N, classes\) logits"):
        sp.robust_accuracy(nn.Conv2d(3, 4, 1), x, y)


def test_dataset_bench_part_runs_and_reports(tmp_path):
    from satpipe.bench import BENCHMARKS, run_benchmark

    report = run_benchmark("dataset", rows=256, rows_per_shard=64, batch_size=32, rounds=1,
                           workdir=str(tmp_path))  # fmt: skip
    assert set(report["img_per_s"]) == {"dataset_workers", "dataset_persistent", "dataset_inline",
                                        "pairloader", "tensordataset"}  # fmt: skip
    assert all(v > 0 for v in report["img_per_s"].values())
    rows = BENCHMARKS.get("dataset").headline(report)
    assert len(rows) == 2 and rows[0]["value"] == round(
        report["ratios"]["dataset_workers_over_tensordataset"], 3
    )
    from satpipe.bench.base import headline_text

    assert "TensorDataset img/s" in headline_text(rows)


def test_workers_open_s3_stores_themselves(pair, s3, tmp_path):
    from satpipe.data.publish import publish_store

    data, _ = pair
    sal = write_tiny_saliency(tmp_path / "m.zarr", data)  # +-1 masks: passes publish's verify
    so = s3.storage_options
    remote = [publish_store(u, s3.url(name), dst_options=so) for u, name in
              ((data, "d.zarr"), (sal, "s.zarr"))]  # fmt: skip
    ds = sp.SaliencyDataset(*remote, storage_options=so)
    ds[0]  # the parent has its own s3fs session open before the workers fork
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    got = sorted(
        (x.flatten()[:8].tolist(), s.sum().item())
        for b in loader
        for x, s, _ in zip(*b, strict=True)
    )
    local = sp.SaliencyDataset(data, sal)
    want = [
        (x.flatten()[:8].tolist(), s.sum().item())
        for x, s, _ in map(local.__getitem__, range(len(local)))
    ]
    assert got == sorted(want)
