"""Saliency methods against closed forms and independent oracles (captum, autograd by hand)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, NoiseTunnel, Saliency
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods import METHODS, get_method, method_params
from satpipe.pipeline.normalize import normalize
from satpipe.train.models import create_model


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("smallcnn", 4).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30)  # logit differences well above float noise
    return model


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand((4, 3, 8, 8), generator=g), torch.randint(0, 4, (4,), generator=g)


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyCam(nn.Module):
    """conv -> ReLU -> [pool] -> conv -> ReLU -> GAP -> linear: Grad-CAM++ has a closed form."""

    cam_layer = "features"

    def __init__(self, pool: bool) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(6, 5, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_names_params_and_errors():
    assert METHODS.names() == [
        "bbox", "gbp", "gradcam++", "gradient", "guided-gradcam++", "ig", "mask", "random",
        "smoothgrad",
    ]  # fmt: skip
    with pytest.raises(SatpipeError, match="choose one of .*smoothgrad"):
        get_method("smoothgradd")
    with pytest.raises(SatpipeError, match="no parameter 'nsamples'.*samples"):
        get_method("smoothgrad", nsamples=3)
    with pytest.raises(SatpipeError, match="steps expects int"):
        get_method("ig", steps="many")
    with pytest.raises(SatpipeError, match="baseline must be one of"):
        get_method("ig", baseline="grey")
    with pytest.raises(SatpipeError, match="samples must be > 0"):
        get_method("smoothgrad", samples=0)
    # CLI strings take the parameter's type.
    sg = get_method("smoothgrad", samples="20", sigma="0.1")
    assert sg.params == {"samples": 20, "sigma": 0.1, "samples_batch_size": None}
    # Left to the device: filled in (and so recorded) for the device the maps are made on.
    on_cpu = sg.for_device("cpu", 64, (3, 32, 32))
    assert on_cpu.params == {"samples": 20, "sigma": 0.1, "samples_batch_size": 1}
    assert method_params("ig")["steps"] == 50


def test_params_json_and_passes(cnn):
    expected = {
        "gradient": 1, "gbp": 1, "gradcam++": 1, "guided-gradcam++": 2,
        "mask": 0, "bbox": 0, "random": 0,
    }  # fmt: skip
    for name in METHODS.names():
        method = get_method(name).resolve(cnn)
        assert json.loads(json.dumps(method.params)) == method.params
        assert method.name == name
        if name in expected:
            assert method.passes_per_image == expected[name]
    assert get_method("smoothgrad", samples=7).passes_per_image == 7
    assert get_method("ig", steps=12).passes_per_image == 12
    assert get_method("gradcam++").resolve(cnn).params == {"layer": "features.block2"}
    assert not get_method("mask").needs_model and not get_method("random").needs_model


# --------------------------------------------------------------------------------------------
# Gradient family


def test_gradient_equals_autograd_by_hand(cnn, batch):
    x, y = batch
    leaf = x.clone().requires_grad_(True)
    logits = cnn(leaf)
    expected = torch.autograd.grad(logits[torch.arange(len(y)), y].sum(), leaf)[0]
    got = get_method("gradient")(cnn, x, y)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_model_left_as_found_and_no_weight_grads(cnn, batch):
    x, y = batch
    model = create_model("smallcnn", 4).train()
    model.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    for name in ("gradient", "smoothgrad", "gbp", "gradcam++"):
        get_method(name, **({"samples": 2} if name == "smoothgrad" else {}))(model, x, y)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad


def test_smoothgrad_equals_captum_noise_tunnel(cnn, batch):
    x, y = batch
    # 5 samples in chunks of 2: two full chunks and a remainder, as captum splits them.
    method = get_method("smoothgrad", samples=5, sigma=0.2, samples_batch_size=2)
    got = method(cnn, x, y, generator=gen(11))
    torch.manual_seed(11)
    expected = NoiseTunnel(Saliency(cnn)).attribute(
        x.clone().requires_grad_(True),
        nt_type="smoothgrad",
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=0.2,
        target=y,
        abs=False,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_smoothgrad_seeded_and_sigma_zero_is_gradient(cnn, batch):
    x, y = batch
    method = get_method("smoothgrad", samples=4)
    a, b = method(cnn, x, y, generator=gen(3)), method(cnn, x, y, generator=gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, method(cnn, x, y, generator=gen(4)))
    grad = get_method("gradient")(cnn, x, y)
    for sigma in (0.0, 1e-7):
        smooth = get_method("smoothgrad", samples=3, sigma=sigma)(cnn, x, y, generator=gen())
        torch.testing.assert_close(smooth, grad, rtol=1e-4, atol=1e-6)


def test_gbp_closed_form_differs_from_gradient():
    # x -> W1 x -> ReLU -> W2: the gradient passes W2[t] where the ReLU is open, guided
    # backprop passes only relu(W2[t]) there.
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    x = torch.rand(4, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 1])
    w1, w2 = net[1].weight, net[3].weight
    open_ = (x.flatten(1) @ w1.T + net[1].bias > 0).float()
    guided = ((F.relu(w2[y]) * open_) @ w1).view_as(x)
    plain = ((w2[y] * open_) @ w1).view_as(x)
    got = get_method("gbp")(net, x, y)
    torch.testing.assert_close(got, guided.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(get_method("gradient")(net, x, y), plain.detach())
    assert (got - plain).abs().max() > 1e-2


def test_gbp_equals_captum_on_cnn(cnn, batch):
    x, y = batch
    got = get_method("gbp")(cnn, x, y)
    expected = GuidedBackprop(cnn).attribute(x.clone().requires_grad_(True), target=y)
    torch.testing.assert_close(got, expected)
    assert (got - get_method("gradient")(cnn, x, y)).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Integrated Gradients


def _ig_gap(model, method, x, y):
    """(|sum of attributions - (f(x) - f(x'))|, max |f(x) - f(x')|) per image."""
    attr = method(model, x, y, generator=gen(5))
    baseline = method.make_baseline(x, gen(5))
    with torch.no_grad():
        delta = model(x).gather(1, y[:, None])[:, 0] - model(baseline).gather(1, y[:, None])[:, 0]
    return (attr.sum(dim=(1, 2, 3)) - delta).abs(), delta.abs()


def test_ig_completeness(cnn, batch):
    x, y = batch
    # Stated tolerances. A smooth network: Gauss-Legendre with 50 steps is exact to 1e-4 of
    # f(x) - f(x'). The ReLU CNN: ReLU kinks are the quadrature error; within 5% per image.
    torch.manual_seed(3)
    smooth = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)
    ).eval()
    gap, delta = _ig_gap(smooth, get_method("ig"), x, y)
    assert (gap <= 1e-4 * delta + 1e-6).all(), (gap, delta)
    gap, delta = _ig_gap(cnn, get_method("ig"), x, y)
    assert (gap <= 0.05 * delta).all(), (gap, delta)
    for baseline in ("blur", "uniform"):
        coarse, _ = _ig_gap(cnn, get_method("ig", baseline=baseline, steps=8), x, y)
        fine, delta = _ig_gap(cnn, get_method("ig", baseline=baseline, steps=64), x, y)
        assert fine.max() <= 0.05 * delta.max() and fine.max() < coarse.max()


def test_ig_internal_batching_does_not_change_result(cnn, batch):
    x, y = batch
    whole = get_method("ig", steps=8, internal_batch_size=1000)(cnn, x, y)
    split = get_method("ig", steps=8, internal_batch_size=10)(cnn, x, y)
    torch.testing.assert_close(whole, split, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Grad-CAM++


def _gradcam_pp_closed_form(model: TinyCam, x, y):
    """For GAP + linear, g = w_c / Z everywhere on channel k, so
    alpha_k = 1 / (2 + S_k w_ck / Z) and w_k = relu(w_ck) / (2 + S_k w_ck / Z)."""
    with torch.no_grad():
        a = model.features(x)
        z = a.shape[2] * a.shape[3]
        w = model.fc.weight[y]  # (B, K)
        s = a.sum(dim=(2, 3))
        weights = F.relu(w) / (2 + s * w / z)
        return F.relu((weights[:, :, None, None] * a).sum(1, keepdim=True))


def test_gradcam_pp_closed_form_gap_linear():
    torch.manual_seed(4)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    model = TinyCam(pool=False).eval()
    got = get_method("gradcam++")(model, x, y)
    assert got.shape == (4, 1, 8, 8) and (got >= 0).all()
    torch.testing.assert_close(got, _gradcam_pp_closed_form(model, x, y), rtol=1e-5, atol=1e-6)
    assert got.amax() > 0
    # With a pooled layer the map is the closed form bilinearly upsampled to the input size.
    pooled = TinyCam(pool=True).eval()
    small = _gradcam_pp_closed_form(pooled, x, y)
    assert small.shape[-1] == 4
    expected = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(get_method("gradcam++")(pooled, x, y), expected)


def test_gradcam_pp_layer_option_and_guided_product(cnn, batch):
    x, y = batch
    early = get_method("gradcam++", layer="features.block1")(cnn, x, y)
    late = get_method("gradcam++")(cnn, x, y)
    assert early.shape == late.shape == (4, 1, 8, 8) and not torch.allclose(early, late)
    with pytest.raises(SatpipeError, match="no layer 'features.nope'"):
        get_method("gradcam++", layer="features.nope")(cnn, x, y)
    guided = get_method("guided-gradcam++")(cnn, x, y)
    torch.testing.assert_close(guided, get_method("gbp")(cnn, x, y) * late)


# --------------------------------------------------------------------------------------------
# Model-free methods


def test_mask_bbox_random_maps():
    masks = torch.zeros(2, 6, 6, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1
    m = get_method("mask").from_rows(masks=masks.numpy())
    assert m.shape == (2, 1, 6, 6) and torch.equal(m[:, 0], masks.float() * 2 - 1)
    boxes = [[2, 1, 5, 3], [0, 0, 6, 6]]  # (x0, y0, x1, y1), end exclusive
    b = get_method("bbox").from_rows(boxes=boxes, size=(6, 6))
    assert torch.equal(b[0, 0], m[0, 0]) and (b[1] == 1).all()
    with pytest.raises(SatpipeError, match="needs the dataset's masks"):
        get_method("mask").from_rows(boxes=boxes)
    x, y = torch.rand(3, 3, 8, 8), torch.zeros(3, dtype=torch.long)
    r = get_method("random")(None, x, y, generator=gen(1))
    assert set(r.unique().tolist()) == {-1.0, 1.0} and r.shape == x.shape
    assert torch.equal(r, get_method("random")(None, x, y, generator=gen(1)))
    assert 0.4 < (r > 0).float().mean() < 0.6
    with pytest.raises(SatpipeError, match="needs a model"):
        get_method("gradient")(None, x, y)


# --------------------------------------------------------------------------------------------
# Normalisation and bf16


def test_normalize_ranges():
    g = gen(0)
    s = torch.randn((6, 3, 5, 5), generator=g) * torch.logspace(-6, 3, 6)[:, None, None, None]
    s[0] = 0
    s[1] = 2.5
    out = normalize(s, "signed-maxabs")
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1], torch.ones_like(out[1]))
    assert (out.flatten(1).abs().amax(1)[1:] == 1).all()
    assert torch.equal(torch.sign(out), torch.sign(s))
    mm = normalize(s, "minmax")
    assert torch.equal(mm[:2], torch.zeros_like(mm[:2]))  # constant maps -> zeros
    assert (mm[2:].flatten(1).amin(1) == 0).all() and (mm[2:].flatten(1).amax(1) == 1).all()
    assert set(normalize(s, "sign").unique().tolist()) <= {-1.0, 0.0, 1.0}
    # Per image: scaling one image does not change another's map.
    s2 = s.clone()
    s2[3] *= 100
    torch.testing.assert_close(normalize(s2)[2:], out[2:])
    with pytest.raises(SatpipeError, match="choose one of signed-maxabs"):
        normalize(s, "l2")


@pytest.mark.parametrize("name", ["gradient", "smoothgrad", "gbp", "gradcam++"])
def test_bf16_autocast_agrees_with_fp32(cnn, batch, name):
    """The tolerance behind `amp_safe` (the runner uses bf16 on CUDA only; CPU bf16 autocast
    is the same number format and serves as the check here): after signed-maxabs
    normalisation every map keeps cosine similarity >= 0.98 with its fp32 map and the mean
    absolute difference stays <= 0.03 on the [-1, 1] scale."""
    x, y = batch
    method = get_method(name, **({"samples": 4} if name == "smoothgrad" else {}))
    assert method.amp_safe and not get_method("ig").amp_safe
    full = normalize(method(cnn, x, y, generator=gen(2)))
    half = normalize(method(cnn, x, y, generator=gen(2), amp=True))
    assert not torch.equal(full, half)  # autocast really ran
    cos = F.cosine_similarity(full.flatten(1), half.flatten(1))
    assert cos.min() >= 0.98 and (full - half).abs().mean() <= 0.03
