"""The cheap-robustness baselines (issue 18): each loss or perturbation against a direct
re-computation from its paper's formula on a tiny model, the bad-input refusals, the cyclic lr."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.train.config import TrainConfig
from satpipe.train.eval.attacks import fgsm_rs, project
from satpipe.train.losses import igr_loss, rrr_loss, sgt_loss
from satpipe.train.perturb import saliency_mask
from satpipe.train.schedules import lr_at
from satpipe.train.trainer import train
from satpipe.train.variants import VARIANTS, WEAK_SALIENCY, VariantConfig
from tests.conftest import write_colour_dataset, write_tiny_dataset, write_tiny_saliency


def tiny_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batchnorm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g)
    return x, torch.randint(0, 3, (b,), generator=g)


def per_image(fn, model, x, y):
    """fn(model, x_n (1, C, H, W), y_n (1,)) for each image alone, stacked: an independent
    re-computation (no batch, no create_graph tricks) of a per-image quantity."""
    return torch.stack([fn(model, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])


def input_grad_of(f, x):
    """d f(x) / d x by torch.func (a second, independent autodiff path)."""
    return torch.func.grad(f)(x)


# --------------------------------------------------------------------------------------------
# Losses against their papers' formulas


def test_rrr_loss_is_the_right_reasons_formula_and_trains_the_weights():
    """Ross et al. 2017, Eq. 1: CE + lambda sum_n sum_d (A_nd d/dx_nd sum_k log p_nk)^2, their
    A marking the irrelevant features, i.e. 1 - (inside the object) here; per-image mean."""
    model, (x, y) = tiny_model(), batch()
    relevant = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    lam = 7.0
    loss, logits = rrr_loss(model, x, y, relevant, lam)

    def reference(params):
        total = 0.0
        for i in range(len(x)):

            def log_p_sum(xi, i=i):
                out = torch.func.functional_call(model, params, (xi[None],))
                return F.log_softmax(out, 1).sum()

            g = torch.func.grad(log_p_sum)(x[i])
            ce = F.cross_entropy(
                torch.func.functional_call(model, params, (x[i : i + 1],)), y[i : i + 1]
            )
            total = total + ce + lam * (((1 - relevant[i]) * g) ** 2).sum()
        return total / len(x)

    params = dict(model.named_parameters())
    torch.testing.assert_close(loss, reference(params))
    assert torch.equal(logits.argmax(1), model(x).argmax(1))
    # Double backprop: the weights' gradient of the loss matches the reference's, the
    # penalty's second-order part included.
    grads = torch.autograd.grad(loss, list(params.values()))
    expected = torch.func.grad(reference)(params)
    for (name, _), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(g, expected[name], msg=name)
    # A = 1 everywhere: nothing is penalised, the loss is plain CE.
    plain, _ = rrr_loss(model, x, y, torch.ones_like(relevant), lam)
    torch.testing.assert_close(plain, F.cross_entropy(model(x), y))


def test_igr_loss_is_ce_plus_the_squared_input_gradient_of_each_images_ce():
    """Ross & Doshi-Velez 2018: CE + lambda sum_n ||d/dx_n CE(f(x_n), y_n)||^2, per-image mean."""
    model, (x, y) = tiny_model(), batch()
    lam = 3.0
    loss, _ = igr_loss(model, x, y, lam)

    def reference(params):
        def ce(xi, yi):
            out = torch.func.functional_call(model, params, (xi[None],))
            return F.cross_entropy(out, yi[None])

        terms = [
            ce(x[i], y[i]) + lam * (torch.func.grad(ce)(x[i], y[i]) ** 2).sum() for i in range(4)
        ]
        return torch.stack(terms).mean()

    params = dict(model.named_parameters())
    torch.testing.assert_close(loss, reference(params))
    grads = torch.autograd.grad(loss, list(params.values()))
    expected = torch.func.grad(reference)(params)
    for (name, _), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(g, expected[name], msg=name)


def test_sgt_loss_is_ce_plus_lambda_kl_of_clean_to_masked():
    """Ismail et al. 2021: CE(f(x), y) + lambda KL(p(x) || p(x~)), KL batch-mean, written out."""
    g = torch.Generator().manual_seed(0)
    clean, masked = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    p, q = clean.softmax(1), masked.softmax(1)
    kl = (p * (p.log() - q.log())).sum() / 5
    torch.testing.assert_close(
        sgt_loss(clean, masked, y, 0.5), F.cross_entropy(clean, y) + 0.5 * kl
    )


def test_sgt_masks_the_lowest_saliency_pixels_with_values_in_the_image_range():
    x, _ = batch(b=2)
    sal = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    out = saliency_mask(x, sal, 0.25, torch.Generator().manual_seed(4))
    changed = (out != x).any(1)  # (B, H, W)
    for b in range(2):
        lowest = sal[b].mean(0).flatten().argsort()[:16]  # int(0.25 * 64) pixels, signed order
        expect = torch.zeros(64, dtype=torch.bool)
        expect[lowest] = True
        assert torch.equal(changed[b].flatten(), expect)
        fill = out[b][:, changed[b]]
        assert fill.min() >= x[b].min() and fill.max() <= x[b].max()


def test_sgt_step_masks_by_the_models_gradient_as_captum_saliency_computes_it():
    import copy

    from captum.attr import Saliency

    model, (x, y) = tiny_model(batchnorm=True).train(), batch()
    # The reference first: the step's train-mode passes then move BatchNorm's statistics.
    reference = copy.deepcopy(model).eval()
    grads = Saliency(reference).attribute(x.clone().requires_grad_(), target=y, abs=False)
    expected = saliency_mask(x, grads, 0.3, torch.Generator().manual_seed(9))
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append((a[0].detach(), m.training)))
    cfg = VariantConfig(sgt_fraction=0.3)
    gen = torch.Generator().manual_seed(9)
    out = VARIANTS.get("sgt").step(model, x, None, y, epoch=0, cfg=cfg, generator=gen)
    assert [t for _, t in seen] == [False, True, True]  # saliency in eval, training in train
    torch.testing.assert_close(seen[2][0], expected)
    reference.train()
    torch.testing.assert_close(out.loss, sgt_loss(reference(x), reference(expected), y, 1.0))


# --------------------------------------------------------------------------------------------
# Perturbations: FGSM-RS and Free


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.3])
def test_fgsm_rs_is_one_sign_step_from_a_uniform_start_and_stays_in_the_ball(eps):
    model, (x, y) = tiny_model(), batch()
    x = x.clamp(0.02, 0.98)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 0.0, 1.0  # pixels at the box edges
    step = 1.25 * eps
    x_adv = fgsm_rs(model, x, y, eps, step, torch.Generator().manual_seed(5))
    # Wong et al. 2020, Alg. 3: delta ~ U(-eps, eps); delta += alpha sign(grad); project.
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    start = (x + (2 * noise - 1) * eps).clamp(0, 1)
    grad = input_grad_of(lambda z: F.cross_entropy(model(z), y), start)
    assert torch.equal(x_adv, project(start + step * grad.sign(), x, eps))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.9 * eps  # the step reaches the ball's edge somewhere


def test_fgsm_rs_sat_trains_on_x_sat_when_the_coin_says_so():
    """The coin's statistics are in the pass-counting test; here its two outcomes."""
    from satpipe.train.perturb import alpha_schedule, sat_perturb

    model, (x, y) = tiny_model().train(), batch()
    s = torch.rand(4, 1, 8, 8) * 2 - 1
    mix = VARIANTS.get("fgsm-rs-sat")
    out = mix.step(model, x, s, y, epoch=5, cfg=VariantConfig(p_mix=1.0),
                   generator=torch.Generator().manual_seed(2))  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    torch.rand((), generator=gen)  # the coin's draw
    x_sat = sat_perturb(x, s, 8 / 255, alpha_schedule(5, 0.6), gen)
    assert not out.attacked
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_sat), y))
    assert mix.step(model, x, s, y, epoch=5, cfg=VariantConfig(p_mix=0.0)).attacked
    assert VARIANTS.get("fgsm-rs").step(model, x, None, y, epoch=0, cfg=VariantConfig()).attacked


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def test_free_replays_each_batch_m_times_and_carries_delta_over():
    """Shafahi et al. 2019, Alg. 1: per replay, one backward pass gives g_theta and g_adv;
    theta steps, delta += eps sign(g_adv) clipped to [-eps, eps]; delta carries over."""
    model, (x, y) = tiny_model(), batch()
    eps, m = 8 / 255, 3
    cfg = VariantConfig(free_replays=m, eps=eps)
    opt = CountingSGD(model.parameters(), lr=0.0)  # weights stay put: delta's path is checkable
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach().clone()))
    free = VARIANTS.get("free")
    state = free.begin_epoch()
    free.train_batch(model, opt, x, None, y, epoch=0, cfg=cfg, state=state)
    free.train_batch(model, opt, x[:2], None, y[:2], epoch=0, cfg=cfg, state=state)
    hook.remove()
    assert opt.steps == 2 * m and len(seen) == 2 * m
    delta = torch.zeros_like(x)
    expected = []
    for xb, yb in ((x, y), (x[:2], y[:2])):
        d = delta[: len(xb)].clone()
        for _ in range(m):
            expected.append((xb + d).clamp(0, 1))
            g = input_grad_of(
                lambda z, xb=xb, yb=yb: F.cross_entropy(model((xb + z).clamp(0, 1)), yb), d
            )
            d = (d + eps * g.sign()).clamp(-eps, eps)
        delta[: len(xb)] = d
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(state["delta"], delta)  # rows 2, 3 kept from the first batch


def test_free_runs_epochs_over_m_passes_and_says_so_when_it_rounds():
    free = VARIANTS.get("free")
    assert free.data_passes(16, VariantConfig(free_replays=8)) == 2
    assert free.data_passes(10, VariantConfig(free_replays=8)) == 2  # the authors' ceil
    assert "rounded up from 1.25" in free.passes_note(10, VariantConfig(free_replays=8))
    assert "rounded" not in free.passes_note(16, VariantConfig(free_replays=8))
    assert VARIANTS.get("pgd").data_passes(10, VariantConfig()) == 10


# --------------------------------------------------------------------------------------------
# The cyclic learning rate


def test_cyclic_lr_is_torchs_cyclic_lr_as_wong_et_al_run_it():
    """Their code: CyclicLR(0 -> lr_max, up for half the steps, down for the other half),
    stepped after every batch. satpipe's closed form must give the same lr at every step."""
    epochs, steps, lr_max = 3, 5, 0.2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr_max)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.0, max_lr=lr_max, step_size_up=total / 2, step_size_down=total / 2,
        cycle_momentum=False,
    )  # fmt: skip
    for i in range(total):
        expected = opt.param_groups[0]["lr"]
        got = lr_at("cyclic", lr_max, i // steps, epochs, (i % steps) / steps)
        assert got == pytest.approx(expected, abs=1e-12), i
        opt.step()
        sched.step()


# --------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no run directory


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline-stores")
    data = write_colour_dataset(root / "colour.zarr", n_train=32, n_test=16)
    other = write_tiny_dataset(root / "other.zarr", n_train=32, n_test=16)
    return {
        "data": data,
        "weak": write_tiny_saliency(root / "weak.zarr", data),
        "model_maps": write_tiny_saliency(root / "maps.zarr", data, source="random"),
        "other_dataset": write_tiny_saliency(root / "other-weak.zarr", other),
    }


def base_config(stores, tmp_path, **kw):
    cfg = dict(variant="rrr", data=stores["data"], out=str(tmp_path / "run"), model="smallcnn",
               epochs=1, batch_size=16, augment=False, device="cpu")  # fmt: skip
    cfg.update(kw)
    return TrainConfig(**cfg)


def test_weak_saliency_is_what_the_pipeline_makes_from_masks_and_boxes():
    from satpipe.pipeline.methods import METHODS

    weak = {n for n, cls in METHODS.items() if not cls.needs_model and cls.requires}
    assert weak == set(WEAK_SALIENCY)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (None, "needs --saliency S.zarr .a weak-saliency store"),
        ("model_maps", "needs a weak-saliency store .*holds 'random' maps"),
        ("other_dataset", "dataset fingerprint mismatch: made for"),
    ],
)
def test_rrr_refuses_a_missing_model_made_or_foreign_store(stores, tmp_path, store, message):
    config = base_config(stores, tmp_path, saliency=stores[store] if store else None)
    with pytest.raises(SatpipeError, match=message):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--variant", "free", "--free-replays", "0"], "--free-replays .m. must be >= 1"),
        (["--variant", "rrr", "--rrr-lambda", "-1"], "--rrr-lambda must be >= 0"),
        (["--variant", "igr", "--igr-lambda", "-0.5"], "--igr-lambda must be >= 0"),
        (["--variant", "sgt", "--sgt-lambda", "-2"], "--sgt-lambda must be >= 0"),
        (["--variant", "sgt", "--sgt-fraction", "1.5"], "--sgt-fraction must be in"),
        (["--variant", "fgsm-rs-pgd"], "unknown variant .*original.*fgsm-rs-sat.*sgt"),
    ],
)
def test_bad_values_are_one_line_with_no_run_directory(stores, tmp_path, flags, message):
    out = tmp_path / "cli"
    args = ["train", *flags, "--data", stores["data"], "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("satpipe: error:") and re.search(message, line), line
    assert not out.exists()
