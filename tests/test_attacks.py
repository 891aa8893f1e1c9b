import pytest
import torch
import torch.nn.functional as F
from torch import nn

from satpipe.train.eval.attacks import fgsm, input_grad, pgd, trades_attack
from satpipe.train.losses import trades_loss

EPS = 8 / 255


def colour_data(n: int, seed: int, classes: int = 4, size: int = 8):
    """Classes differ by a faint mean colour under strong pixel noise: learnable but fragile."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    palette = torch.tensor([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [0.1, 0.1, 0]])[:classes]
    x = 0.45 + palette[y][:, :, None, None] + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 1), y


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = colour_data(512, 0)
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    xt, yt = colour_data(256, 1)
    assert accuracy(model, xt, yt) > 0.8  # the fixture is a real classifier
    return model, xt, yt


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def reference_pgd(model, x, y, eps, step_size, steps, delta0):
    """Textbook PGD written independently: a delta variable, .backward(), clamp the delta."""
    delta = delta0.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        F.cross_entropy(model(x + delta), y).backward()
        delta = (delta.detach() + step_size * delta.grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    model.zero_grad(set_to_none=True)
    return (x + delta).detach()


def test_pgd_stays_in_the_ball_and_beats_fgsm(trained):
    model, x, y = trained
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, EPS, 2 / 255, 10, generator=g)
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean, acc_fgsm, acc_pgd = (accuracy(model, v, y) for v in (x, fgsm(model, x, y, EPS), x_adv))
    assert acc_fgsm < clean - 0.1  # the attack bites
    assert acc_pgd <= acc_fgsm + 1e-9
    assert acc_pgd < clean - 0.2


def test_pgd_matches_a_reference_implementation(trained):
    model, x, y = trained
    ours = pgd(model, x, y, EPS, 2 / 255, 5, random_start=False)
    ref = reference_pgd(model, x, y, EPS, 2 / 255, 5, torch.zeros_like(x))
    differs = (ours - ref).abs() > 1e-5
    assert differs.float().mean().item() < 1e-3  # equal up to rare sign flips of ~0 gradients


def test_fgsm_is_one_signed_gradient_step(trained):
    model, x, y = trained
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_req), y).backward()
    expected = (x + EPS * x_req.grad.sign()).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(fgsm(model, x, y, EPS), expected)


def test_pgd_random_start_is_seeded_and_zero_eps_is_identity(trained):
    model, x, y = trained
    a = pgd(model, x, y, EPS, 2 / 255, 2, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, EPS, 2 / 255, 2, generator=torch.Generator().manual_seed(3))
    c = pgd(model, x, y, EPS, 2 / 255, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(pgd(model, x, y, 0.0, 2 / 255, 3), x)
    assert torch.equal(fgsm(model, x, y, 0.0), x)


@pytest.mark.parametrize("training", [True, False])
def test_attacks_restore_mode_and_leave_no_param_grads(trained, training):
    model, x, y = trained
    seen = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    model.train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for attack in (
            lambda: fgsm(model, x[:8], y[:8], EPS),
            lambda: pgd(model, x[:8], y[:8], EPS, 2 / 255, 2),
        ):
            seen.clear()
            attack()
            assert model.training is training and set(seen) == {training}
        seen.clear()
        x_adv = trades_attack(model, x[:8], EPS, 2 / 255, 3)
        assert model.training is training
        assert set(seen) == {False}  # TRADES attacks in eval mode
        assert (x_adv - x[:8]).abs().max() <= EPS + 1e-6
    finally:
        hook.remove()
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    if not training:  # eval-mode attacks leave BatchNorm statistics untouched
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    model.load_state_dict(state)


def test_trades_attack_increases_the_kl(trained):
    model, x, y = trained
    x_adv = trades_attack(model, x, EPS, 2 / 255, 5, generator=torch.Generator().manual_seed(0))
    noise = (x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1)
    with torch.no_grad():
        p = F.softmax(model(x), 1)

        def kl(v):
            return F.kl_div(F.log_softmax(model(v), 1), p, reduction="batchmean").item()

        assert kl(x_adv) > 3 * kl(noise)


def test_trades_loss_equals_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    p = clean.softmax(1)
    ce = -clean.log_softmax(1)[torch.arange(6), y].mean()
    kl = (p * (p.log() - adv.log_softmax(1))).sum() / 6
    torch.testing.assert_close(trades_loss(clean, adv, y, 6.0), ce + 6.0 * kl)
    official = F.cross_entropy(clean, y) + 6.0 * nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(adv, 1), F.softmax(clean, 1)
    )
    torch.testing.assert_close(trades_loss(clean, adv, y, 6.0), official)
    torch.testing.assert_close(trades_loss(clean, clean, y, 6.0), F.cross_entropy(clean, y))


def test_masked_model_gets_zero_gradient_not_an_error():
    x = torch.rand(4, 3, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    frozen = nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).requires_grad_(False)

    def detached(v):
        return frozen(v.detach())

    assert torch.equal(fgsm(detached, x, y, EPS), x)
    x_req = x.clone().requires_grad_(True)
    loss = nn.Linear(1, 1)(torch.ones(1, 1)).sum() + 0 * x_req.detach().sum()
    assert torch.equal(input_grad(loss, x_req), torch.zeros_like(x))
