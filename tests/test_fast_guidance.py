"""N-FGSM, GradAlign and the Energy loss: each against its paper's formula on a constructed
batch (their pass counts are in test_variants.py, a short run of each in test_trainer.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.train.eval.attacks import nfgsm
from satpipe.train.losses import energy_loss, gradalign_penalty, input_x_gradient
from satpipe.train.variants import VARIANTS, VariantConfig


def linear(seed=0, c=3, hw=4, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * hw * hw, k))


def batch(seed=0, b=6, c=3, hw=4, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, hw, hw, generator=g), torch.randint(0, k, (b,), generator=g)


def test_nfgsm_steps_one_eps_from_noise_of_two_eps_without_projection():
    model, (x, y), eps = linear(), batch(), 8 / 255
    got = nfgsm(model, x, y, eps, 2.0, 1.0, torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    start = (x + (2 * u - 1) * 2 * eps).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
    torch.testing.assert_close(got, (start.detach() + eps * g.sign()).clamp(0, 1))
    dist = (got - x).abs()
    assert dist.max() > eps + 1e-6  # no projection back to the eps-ball ...
    assert dist.max() <= 3 * eps + 1e-6 and got.min() >= 0 and got.max() <= 1  # ... only [0, 1]


def test_gradalign_penalty_is_lambda_one_minus_the_mean_cosine_and_trains_the_weights():
    model, (x, y), eps = linear(), batch(), 8 / 255
    eta = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 1) * eps

    def grad_at(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(z), y), z)[0].flatten(1)

    g1, g2 = grad_at(x), grad_at(x + eta)
    cos = F.cosine_similarity(g1, g2, dim=1)
    pen = gradalign_penalty(model, x, y, g1.view_as(x), eta, 0.2)
    torch.testing.assert_close(pen, 0.2 * (1 - cos.mean()))
    pen.backward()
    assert model[1].weight.grad.abs().sum() > 0  # double backprop reaches the weights
    # An image whose gradient is zero is left out of the mean, as the authors' code does.
    g1[0] = 0
    pen = gradalign_penalty(model, x, y, g1.view_as(x), eta, 1.0)
    torch.testing.assert_close(pen, 1 - cos[1:].mean(), rtol=1e-5, atol=1e-6)


def test_gradalign_step_trains_on_fgsm_of_x_plus_the_penalty():
    model, (x, y), cfg = linear(), batch(), VariantConfig()
    out = VARIANTS.get("gradalign").step(
        model, x, None, y, epoch=0, cfg=cfg, generator=torch.Generator().manual_seed(4)
    )
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    x_adv = (x + cfg.eps * g.sign()).clamp(0, 1)  # 1.25 eps from zero, clipped to the ball
    eta = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) - 1) * cfg.eps
    expected = F.cross_entropy(model(x_adv), y) + gradalign_penalty(model, x, y, g, eta, 0.2)
    torch.testing.assert_close(out.loss, expected)


def test_energy_loss_is_one_minus_the_share_of_positive_attribution_inside():
    a = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[-1.0, -2.0], [0.0, 0.0]]])
    inside = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]])
    # image 0: positive mass 3, 1 of it inside; image 1: no positive mass -> 1 - 0
    torch.testing.assert_close(energy_loss(a, inside), torch.tensor([1 - 1 / 3, 1.0]))
    assert energy_loss(a[:1], torch.ones_like(inside[:1])).item() == pytest.approx(0.0)


def test_energy_step_is_ce_plus_lambda_sum_of_the_energy_of_input_x_gradient():
    model, (x, y) = linear(), batch()
    cfg = VariantConfig(energy_lambda=0.5)
    s = -torch.ones(len(x), 1, 4, 4)
    s[:, :, :2] = 1.0  # the object: the top half
    out = VARIANTS.get("energy").step(model, x, s, y, epoch=0, cfg=cfg)
    # Linear model: d logit_y / dx = W[y], so IxG = sum_c W[y] * x in closed form.
    w = model[1].weight.detach().view(3, 3, 4, 4)
    ixg = (w[y] * x).sum(1)
    attr, _ = input_x_gradient(model, x, y)
    torch.testing.assert_close(attr, ixg)
    pos = ixg.clamp(min=0)
    energy = 1 - pos[:, :2].sum((1, 2)) / pos.sum((1, 2))
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y) + 0.5 * energy.sum())
    out.loss.backward()
    assert model[1].weight.grad.abs().sum() > 0


def test_energy_refuses_a_missing_or_model_made_store_before_any_run(tmp_path):
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train
    from tests.conftest import write_colour_dataset, write_tiny_saliency

    data = write_colour_dataset(tmp_path / "colour.zarr", n_train=32, n_test=16)
    maps = write_tiny_saliency(tmp_path / "maps.zarr", data, source="random")
    for saliency, message in ((None, "needs --saliency"), (maps, "holds 'random' maps")):
        cfg = TrainConfig(variant="energy", data=data, saliency=saliency, model="smallcnn",
                          out=str(tmp_path / "run"), epochs=1, device="cpu")  # fmt: skip
        with pytest.raises(SatpipeError, match=message):
            train(cfg)
        assert not (tmp_path / "run").exists()
    VARIANTS.get("energy").check_saliency("maps.zarr", "bbox")  # boxes and masks are fine
