import pytest
import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.train.losses import trades_loss
from satpipe.train.perturb import alpha_schedule, sat_perturb
from satpipe.train.variants import PAPER_VARIANTS, VARIANTS, Cost, VariantConfig

NINE = [
    "original",
    "original-noise",
    "sat",
    "pgd",
    "pgd-noise",
    "pgd-sat",
    "trades",
    "trades-noise",
    "trades-sat",
]


class Recorder(nn.Module):
    """A tiny classifier that counts forward and backward passes and keeps its inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        self.forwards, self.backwards, self.graphs, self.inputs = 0, 0, 0, []

    def _count_backward(self, grad):
        self.backwards += 1
        self.graphs += torch.is_grad_enabled()  # a create_graph pass (double backprop)

    def forward(self, x):
        self.forwards += 1
        self.inputs.append((x.detach().clone(), self.training))
        out = self.net(x)
        if out.requires_grad:  # fires once per backward pass through this forward
            out.register_hook(self._count_backward)
        return out


def batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g)
    s = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    return x, s, torch.randint(0, 3, (b,), generator=g)


def test_registry_has_the_nine_variants_in_table_order():
    assert VARIANTS.names()[:9] == NINE == list(PAPER_VARIANTS)  # the baselines come after
    assert [v for v in NINE if VARIANTS.get(v).needs_saliency] == ["sat", "pgd-sat", "trades-sat"]
    with pytest.raises(SatpipeError, match="pgd-sat"):
        VARIANTS.get("fgsm-sat")


def test_costs_follow_the_table():
    k = 7
    assert VARIANTS.get("original").cost(k) == Cost(1, 1) == VARIANTS.get("sat").cost(k)
    assert VARIANTS.get("pgd").cost(k) == Cost(k + 1, k + 1)
    assert VARIANTS.get("pgd-sat").cost(k) == Cost(1 + k / 2, 1 + k / 2)
    assert VARIANTS.get("pgd-noise").cost(k, p_mix=0.25).forward == 1 + 0.75 * k
    assert VARIANTS.get("trades").cost(k) == Cost(k + 3, k + 2)
    ratio = VARIANTS.get("pgd-sat").cost(k).work / VARIANTS.get("pgd").cost(k).work
    assert ratio == pytest.approx((1 + k / 2) / (1 + k))
    assert VARIANTS.get("trades-sat").cost(k).work < VARIANTS.get("trades").cost(k).work


COIN = {"pgd-noise", "pgd-sat", "trades-noise", "trades-sat", "fgsm-rs-sat"}


def test_the_coin_mixed_variants_are_the_ones_a_coin_decides():
    depends = {n for n in VARIANTS if VARIANTS.get(n).cost(3, 0.0) != VARIANTS.get(n).cost(3, 1.0)}
    assert depends == COIN


@pytest.mark.parametrize("name", VARIANTS.names())
def test_measured_passes_match_the_declared_cost(name):
    """Count real forward/backward passes of what the trainer calls per batch (`train_batch`,
    Free's replays included) over many batches: the mean must match cost()."""
    variant, cfg = VARIANTS.get(name), VariantConfig(attack_steps=3, free_replays=3)
    model = Recorder().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(0)
    x, s, y = batch()
    state = variant.begin_epoch()
    n = 120 if name in COIN else 3
    for _ in range(n):
        variant.train_batch(model, opt, x, s, y, epoch=0, cfg=cfg, generator=g, state=state)
        assert model.training
    expected = variant.cost(cfg=cfg)
    assert expected == variant.cost(3, cfg.p_mix, cfg)
    tol = 0.0 if n == 3 else 4 * 0.5 * 4 / n**0.5  # 4 sigma of a fair coin times K+1 passes
    assert model.forwards / n == pytest.approx(expected.forward, abs=tol)
    assert model.backwards / n == pytest.approx(expected.backward, abs=tol)
    assert model.graphs / n == pytest.approx(expected.create_graph, abs=tol)


def test_baseline_costs_follow_their_definitions():
    cfg = VariantConfig(free_replays=8)
    assert VARIANTS.get("fgsm-rs").cost(cfg=cfg) == Cost(2, 2)
    assert VARIANTS.get("fgsm-rs-sat").cost(cfg=cfg) == Cost(1.5, 1.5)
    assert VARIANTS.get("free").cost(cfg=cfg) == Cost(8, 8)  # per batch: 8 replays
    assert VARIANTS.get("rrr").cost() == VARIANTS.get("igr").cost() == Cost(1, 2, 1)
    assert VARIANTS.get("sgt").cost() == Cost(3, 3)
    original = VARIANTS.get("original").cost().work
    assert VARIANTS.get("fgsm-rs").cost().work / original == 2.0
    assert VARIANTS.get("igr").cost().work / original == 3.0  # double backprop


def test_sat_step_trains_on_x_sat_with_alpha_t():
    model, cfg = Recorder().train(), VariantConfig()
    x, s, y = batch()
    out = VARIANTS.get("sat").step(
        model, x, s, y, epoch=20, cfg=cfg, generator=torch.Generator().manual_seed(5)
    )
    expected = sat_perturb(x, s, cfg.eps, alpha_schedule(20, 0.6), torch.Generator().manual_seed(5))
    ((x_in, training),) = model.inputs
    assert training and torch.equal(x_in, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(model.net(expected), y))


def test_trades_step_is_the_trades_loss_on_clean_and_attacked_inputs():
    model, cfg = Recorder().train(), VariantConfig(attack_steps=2)
    x, s, y = batch()
    out = VARIANTS.get("trades").step(
        model, x, s, y, epoch=0, cfg=cfg, generator=torch.Generator().manual_seed(0)
    )
    # attack: clean (eval) + 2 steps (eval); training: clean (train) + adversarial (train)
    modes = [t for _, t in model.inputs]
    assert modes == [False, False, False, True, True]
    x_clean, x_adv = model.inputs[3][0], model.inputs[4][0]
    assert torch.equal(x_clean, x) and (x_adv - x).abs().max() <= cfg.eps + 1e-6
    with torch.no_grad():  # train mode: BatchNorm uses batch statistics, as in the step
        expected = trades_loss(model.net(x_clean), model.net(x_adv), y, 6.0)
    torch.testing.assert_close(out.loss.detach(), expected)


def test_steps_are_deterministic_given_the_generator():
    x, s, y = batch()
    for name in ("pgd-sat", "trades-noise"):
        losses = []
        for _ in range(2):
            model = Recorder().train()
            g = torch.Generator().manual_seed(11)
            losses.append(
                [
                    VARIANTS.get(name)
                    .step(model, x, s, y, epoch=3, cfg=VariantConfig(), generator=g)
                    .loss.item()
                    for _ in range(5)
                ]
            )
        assert losses[0] == losses[1]


def test_sat_variants_refuse_missing_saliency_and_config_checks():
    x, _, y = batch()
    with pytest.raises(SatpipeError, match="saliency"):
        VARIANTS.get("pgd-sat").step(Recorder(), x, None, y, epoch=0, cfg=VariantConfig())
    with pytest.raises(SatpipeError, match="p_mix"):
        VariantConfig(p_mix=1.5)
