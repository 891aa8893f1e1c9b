"""Models satpipe did not write (torchvision ResNet-18 and MobileNet-V3-Small, a timm
EfficientNet) through every saliency method, the runner, training (sat) and evaluation.

Oracles: plain autograd on the bare library model behind the same normalisation, and a Guided
Backprop written out here with a custom autograd function in place of each activation module
(independent of captum's hooks)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.saliency_store import open_saliency
from satpipe.pipeline.methods import get_method, model_methods
from satpipe.pipeline.methods.layers import find_cam_layer
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
from satpipe.train.checkpoint import model_record, save_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.eval.evaluate import evaluate
from satpipe.train.models import create_model, input_norm
from satpipe.train.trainer import train
from tests.conftest import write_colour_dataset, write_tiny_saliency

EXTERNAL = ("torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:test_efficientnet")
# Activations other than nn.ReLU: Guided Backprop refuses them unless told to guide them too.
OTHER_ACTIVATION = {
    "torchvision:mobilenet_v3_small": nn.Hardswish,
    "timm:test_efficientnet": nn.SiLU,
}
SMALL = {"smoothgrad": {"samples": 2}, "ig": {"steps": 2}}
SIZE = 16


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    built = {}
    for name in EXTERNAL:
        model = create_model(name, 4).eval()
        with torch.no_grad():  # torchvision's MobileNet starts with tiny logits; widen them
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.mul_(1e3 / max(float(last.weight.abs().max()), 1e-12))
        built[name] = model
    return built


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand((2, 3, SIZE, SIZE), generator=g), torch.tensor([1, 3])


class _GuidedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act):
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            out = act(leaf)
        ctx.save_for_backward(leaf, out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        leaf, out = ctx.saved_tensors
        (g,) = torch.autograd.grad(out, leaf, grad)
        return g.clamp(min=0), None


class _Guided(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x):
        return _GuidedFn.apply(x, self.act)


def guided_oracle(model, x, y, kinds) -> torch.Tensor:
    """Guided Backprop by construction: every activation module of `kinds` replaced by one
    whose backward clamps the gradient leaving it at 0."""
    guided = copy.deepcopy(model)
    for module in list(guided.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, kinds):
                act = copy.deepcopy(child)
                act.inplace = False
                setattr(module, name, _Guided(act))
    leaf = x.clone().requires_grad_()
    logits = guided(leaf)
    return torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), leaf)[0]


def _assert_close_scaled(got, want):
    scale = float(want.abs().max())
    assert scale > 0
    torch.testing.assert_close(got / scale, want / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", EXTERNAL)
def test_every_method_runs_or_refuses_clearly(models, batch, name):
    model, (x, y) = models[name], batch
    hooks_before = [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()]
    inplace_before = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    other = OTHER_ACTIVATION.get(name)
    for method_name in model_methods():
        method = get_method(method_name, **SMALL.get(method_name, {}))
        if other is not None and method_name in ("gbp", "guided-gradcam++"):
            with pytest.raises(SatpipeError, match=f"{other.__name__}.*other_activations=guide"):
                method.resolve(model, (3, SIZE, SIZE))
            method = get_method(method_name, other_activations="guide")
        maps = method.resolve(model, (3, SIZE, SIZE))(model, x, y)
        assert maps.shape == (2, method.out_channels(3), SIZE, SIZE)
        assert torch.isfinite(maps).all(), method_name
        # Grad-CAM++ of an untrained net may be relu(negative) = 0 everywhere; the rest not.
        if "gradcam" not in method_name:
            assert maps.abs().sum() > 0, method_name
    # Plain gradient: the wrapped model's is the bare model's through the normalisation.
    bare = copy.deepcopy(model)
    bare._forward_pre_hooks.clear()
    norm = input_norm(model)
    leaf = x.clone().requires_grad_()
    logits = bare((leaf - norm.mean) / norm.std)
    want = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), leaf)[0]
    _assert_close_scaled(get_method("gradient")(model, x, y), want)
    # Guided Backprop equals the one written out by hand (inplace ReLUs, reused ReLUs and, when
    # asked to guide them, the other activations too).
    kinds = (nn.ReLU,) if other is None else (nn.ReLU, other)
    mode = "refuse" if other is None else "guide"
    got = get_method("gbp", other_activations=mode)(model, x, y)
    _assert_close_scaled(got, guided_oracle(model, x, y, kinds))
    # Nothing left behind: no hooks, inplace flags as built.
    assert hooks_before == [
        len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()
    ]
    assert inplace_before == [m.inplace for m in model.modules() if hasattr(m, "inplace")]


def test_cam_layer_is_the_last_spatial_activation(models):
    resnet = models["torchvision:resnet18"]
    assert find_cam_layer(resnet, (3, 224, 224)) == "layer4"  # 7x7, the Grad-CAM paper's
    assert find_cam_layer(resnet, (3, 32, 32)) == "layer3"  # layer4 is 1x1 at 32 px
    assert find_cam_layer(models["torchvision:mobilenet_v3_small"], (3, 224, 224)) == "features"
    assert find_cam_layer(create_model("smallcnn", 2), (3, 16, 16)) == "features"
    with pytest.raises(SatpipeError, match="no layer 'layer9'"):
        get_method("gradcam++", layer="layer9").resolve(resnet, (3, 32, 32))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    data = write_colour_dataset(root / "colour.zarr", n_train=16, n_test=8, size=16)
    return root, data, write_tiny_saliency(root / "masks.zarr", data, channels=1)


def test_runner_records_cam_layer_and_imported_weights(stores, tmp_path, models):
    root, data, _ = stores
    model = models["torchvision:resnet18"]
    ckpt = tmp_path / "teacher.pt"
    record = model_record(model, 4, 3, weights_sha256="ab" * 32, weights_file="r18.pth")
    save_checkpoint(ckpt, {"model": record})
    out = compute_saliency(
        SaliencyConfig(method="gradcam++", data=data, out=str(tmp_path / "cam.zarr"),
                       model=str(ckpt), device="cpu")
    )  # fmt: skip
    attrs = open_saliency(out).attrs
    assert attrs["params"] == {"layer": "layer2"}  # 16 px: layer3 is 1x1
    assert attrs["source_model"]["cam_layer"] == "layer2"
    assert attrs["source_model"]["weights_sha256"] == "ab" * 32
    assert attrs["source_model"]["arch"] == "torchvision:resnet18"
    # A method that cannot apply is refused before any store is made.
    mobile = tmp_path / "mobile.pt"
    save_checkpoint(mobile, {"model": model_record(models[EXTERNAL[1]], 4, 3)})
    with pytest.raises(SatpipeError, match="Hardswish"):
        compute_saliency(
            SaliencyConfig(method="gbp", data=data, out=str(tmp_path / "gbp.zarr"),
                           model=str(mobile), device="cpu")
        )  # fmt: skip
    assert not (tmp_path / "gbp.zarr").exists()
    # `satpipe model info` says the same before any run.
    for path, expected in (
        (ckpt, ["torchvision:resnet18, 4 classes", "imported from r18.pth", "layer: layer2"]),
        (mobile, ["needs --param other_activations=guide"]),
    ):
        result = CliRunner().invoke(app, ["model", "info", str(path), "--size", "16"])
        assert result.exit_code == 0 and all(e in result.output for e in expected), result.output


# The trainer and evaluator do nothing model-specific: the tiny timm net runs in the fast suite,
# the torchvision ones (slower on a CPU) with -m slow.
@pytest.mark.parametrize(
    "name", [*(pytest.param(n, marks=pytest.mark.slow) for n in EXTERNAL[:2]), EXTERNAL[2]]
)
def test_sat_trains_and_evaluates(stores, tmp_path, name):
    _, data, saliency = stores
    run = train(
        TrainConfig(
            variant="sat", data=data, saliency=saliency, out=str(tmp_path / "run"), model=name,
            epochs=1, batch_size=8, augment=False, device="cpu",
        )
    )  # fmt: skip
    results = evaluate(
        run, eps=(0, 2), steps=1, step_size=2, seeds=(0,), batch_size=8, device="cpu",
        strict=False,
    )  # fmt: skip
    assert results["arch"] == name and results["n"] == 8
    assert results["pgd"]["0"] == results["clean"]
