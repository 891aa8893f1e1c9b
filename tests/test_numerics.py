"""Numerics settings a GPU run depends on, checked on a CPU: TF32 off inside evaluation (and
the flags restored after it), the deterministic mode and cuDNN's autotuner, the bench floor
under the methods' own autocast, the sanity check under the store's amp, and evaluation
holding only the rows it attacks, in the model's layout."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from satpipe.core import precision
from satpipe.train.checkpoint import model_record, save_checkpoint
from satpipe.train.eval import evaluate as evaluate_module
from satpipe.train.models import create_model
from tests.conftest import write_tiny_dataset


@pytest.fixture
def numerics():
    """Leave torch's process-wide numerics flags (and the cuBLAS variable) as they were."""
    import os

    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:4]
    torch.use_deterministic_algorithms(saved[4])
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("numerics")
    data = write_tiny_dataset(root / "d.zarr", n_train=16, n_test=16, size=8, rows_per_shard=8)
    torch.manual_seed(0)
    path = root / "m.pt"
    save_checkpoint(path, {"model": model_record(create_model("smallcnn", 4), 4, 3)})
    return str(path), data


class FlagRecorder(nn.Module):
    """The model, noting the TF32 flags each forward pass ran under."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x):
        self.seen.add((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.inner(x)


def test_evaluation_runs_without_tf32_and_restores_the_flags(ckpt, numerics, monkeypatch, tmp_path):
    path, data = ckpt
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    models = []
    real = evaluate_module.load_model

    def load(p, device="cpu"):
        model, state = real(p, device)
        models.append(FlagRecorder(model).eval())
        return models[-1], state

    monkeypatch.setattr(evaluate_module, "load_model", load)
    evaluate_module.evaluate(
        path, data=data, attacks=("fgsm",), eps=(0, 8), device="cpu", strict=False, steps=1,
        n_examples=8,
        out=str(tmp_path),
    )  # fmt: skip
    assert models[0].seen == {(False, False)}
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    # The training loop's test accuracy too.
    loader = [(torch.rand(4, 3, 8, 8), None, torch.zeros(4, dtype=torch.long))]
    models[0].seen.clear()
    evaluate_module.clean_accuracy(models[0], loader)
    assert models[0].seen == {(False, False)}
    assert torch.backends.cudnn.allow_tf32


def test_fp32_math_restores_the_flags_after_an_error(numerics):
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    with pytest.raises(RuntimeError), precision.fp32_math():
        assert not torch.backends.cudnn.allow_tf32
        raise RuntimeError("attack failed")
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)


def test_evaluation_keeps_only_the_rows_it_attacks(ckpt, monkeypatch):
    """No resident uint8 copy of the split beside the float rows: the loader streams."""
    from satpipe.data import loader as loader_module
    from satpipe.train.config import EvalConfig

    made = []
    real = loader_module.make_loader
    monkeypatch.setattr(
        loader_module, "make_loader", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )
    path, data = ckpt
    cfg = EvalConfig(run=path, data=data, device="cpu")
    evaluate_module._open_for_eval(cfg)
    assert [m.mode for m in made] == ["streaming"] and made[0]._resident is None


def test_the_eval_set_keeps_the_batches_layout(ckpt):
    from satpipe.data.loader import LoaderOptions, make_loader
    from satpipe.train.eval.subset import load_eval_set

    _, data = ckpt
    for channels_last in (True, False):
        options = LoaderOptions(shuffle=False, batch_size=4, channels_last=channels_last)
        loader = make_loader(data, "test", options=options)
        x = load_eval_set(loader, 8).x
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_deterministic_mode_and_the_autotuner(numerics, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    got = precision.configure("cuda:0")
    assert got == {"deterministic": False, "cudnn_benchmark": True, "cublas_workspace": None}
    assert precision.configure("cpu")["cudnn_benchmark"] is False
    got = precision.configure("cuda:0", deterministic=True)
    assert got == {"deterministic": True, "cudnn_benchmark": False, "cublas_workspace": ":4096:8"}
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    # Later work in the process (an evaluation after deterministic training) keeps it.
    assert precision.configure("cuda:0")["deterministic"] is True
    assert not torch.backends.cudnn.benchmark


def test_global_pool_is_deterministic_under_deterministic_mode(numerics):
    from satpipe.train.models import GlobalAvgPool

    pool = GlobalAvgPool()
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(pool(x), nn.AdaptiveAvgPool2d(1)(x))  # CPU: the same bits as before
    torch.use_deterministic_algorithms(True)
    assert torch.allclose(pool(x), x.mean((2, 3), keepdim=True))


def test_train_and_saliency_take_and_record_deterministic(ckpt, numerics, tmp_path):
    from satpipe.data.saliency_store import open_saliency
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train

    path, data = ckpt
    run = train(
        TrainConfig(variant="original", data=data, out=str(tmp_path / "run"), model="smallcnn",
                    epochs=1, batch_size=8, device="cpu", deterministic=True)
    )  # fmt: skip
    assert json.loads((run / "config.json").read_text())["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled()
    out = compute_saliency(
        SaliencyConfig(method="gradient", data=data, model=path, out=str(tmp_path / "s.zarr"),
                       device="cpu", deterministic=True)
    )  # fmt: skip
    assert open_saliency(out).attrs["compute"]["deterministic"] is True


# --------------------------------------------------------------------------------------------
# Autocast: the bench floor and the sanity check


class AutocastRecorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled(x.device.type))
        return self.inner(x)


@pytest.mark.parametrize(("name", "amp", "expected"), [
    ("smoothgrad", True, True), ("smoothgrad", False, False), ("ig", True, False),
])  # fmt: skip
def test_bench_floor_runs_under_the_method_autocast(name, amp, expected):
    """SmoothGrad is amp_safe (bf16 when asked), IG is not: its floor stays fp32 as it does."""
    from satpipe.bench.saliency import method_floor
    from satpipe.pipeline.methods import get_method

    torch.manual_seed(0)
    net = AutocastRecorder(create_model("smallcnn", 4)).eval()
    method = get_method(name, **({"samples": 2} if name == "smoothgrad" else {"steps": 2}))
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    method(net, x, y, amp=amp)
    in_method = set(net.seen)
    net.seen.clear()
    method_floor(net, method, amp)(x, y)
    assert set(net.seen) == in_method == {expected}


def test_sanity_recomputes_under_the_store_amp(monkeypatch):
    import types

    import satpipe.pipeline.methods as methods
    from satpipe.pipeline.quality import score

    calls = []

    class Spy:
        needs_model = True
        name = "smoothgrad"

        def __call__(self, model, x, y, generator=None, amp=False):
            calls.append(amp)
            return torch.rand(x.shape)

    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    job = types.SimpleNamespace(
        config=types.SimpleNamespace(seed=0, batch_size=4, model="m.pt"),
        attrs={"method": "smoothgrad", "params": {}, "normalization": "signed-maxabs",
               "compute": {"batch_size": 64, "amp": True}},
        model=create_model("smallcnn", 4).eval(), model_info={"is_source": True},
        images=lambda: (x, y), stored_maps=lambda rows: torch.rand(4, 8, 8, 3),
        subset=list(range(4)), results={}, curves={}, flags=[], skip=lambda *a: None,
    )  # fmt: skip
    monkeypatch.setattr(methods, "get_method", lambda name, **params: Spy())
    score._sanity(job)
    assert calls and set(calls) == {True}  # every step, as the store's maps were made
