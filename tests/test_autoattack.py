"""The attack registry on tiny models: bounds from a closed form, the reference AutoAttack code
(bit for bit), and an independent implementation (torchattacks) as oracles."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.train.eval.attacks import (
    ATTACKS,
    AttackContext,
    attack_set,
    clean_correct,
    cw_margin,
    ensemble_components,
    n_target_classes,
    pgd,
)
from satpipe.train.eval.attacks.reference import standard_autoattack
from tests.test_attacks import colour_data

EPS = 4 / 255
N = 32
# Square's budget here: 5000 in standard AutoAttack (the default), fewer keeps the tests fast
# while running the same code paths on both sides of every comparison.
QUERIES = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The reference attacks make thousands of tiny tensor ops; on a loaded 2-core machine two
    # intra-op threads make them ~30x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(model: nn.Module, classes: int = 4, steps: int = 200) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = colour_data(512, 0, classes)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def linear():
    """A linear classifier: its exact robust accuracy has a closed form."""
    torch.manual_seed(0)
    model = _fit(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)))
    x, y = colour_data(N, 1)
    return model, x, y


def exact_robust(model: nn.Sequential, x, y, eps) -> torch.Tensor:
    """Exact L-inf robustness of a linear model within [0, 1]: for each wrong class j the
    margin (w_y - w_j).x' + b_y - b_j is minimised coordinate-wise over the box, at
    x'_k = clip(x_k -+ eps); the point is robust iff every such minimum stays > 0."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    xf = x.flatten(1)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    for j in range(w.shape[0]):
        d = w[y] - w[j]
        worst = torch.where(d > 0, (xf - eps).clamp(0, 1), (xf + eps).clamp(0, 1))
        ok &= ((d * worst).sum(1) + b[y] - b[j] > 0) | (y == j)
    return ok


@pytest.fixture(scope="module")
def outcomes(linear):
    model, x, y = linear
    clean = clean_correct(model, x, y, 16)
    ctx = AttackContext(eps=EPS, num_classes=4, seed=0, steps=5, step_size=2 / 255,
                        square_queries=QUERIES)  # fmt: skip
    return clean, {name: attack_set(model, name, x, y, clean, ctx, 16) for name in ATTACKS}


def test_every_attack_lies_between_the_exact_robust_accuracy_and_clean(linear, outcomes):
    model, x, y = linear
    clean, out = outcomes
    exact = exact_robust(model, x, y, EPS)
    assert 0 < exact.sum() < clean.sum()  # the test is not vacuous: some points fall, some not
    for name, o in out.items():
        assert not (exact & ~o.correct).any(), f"{name} fooled a provably robust point"
        assert not (o.correct & ~clean).any(), f"{name} counts a clean mistake as robust"
    # AutoAttack finds every non-robust point of a linear model (up to one image).
    assert int(out["autoattack"].correct.sum() - exact.sum()) <= 1
    # Worst case of an ensemble <= each of its stages, stages non-increasing.
    stages = list(out["autoattack"].components.values())
    assert all(not (b & ~a).any() for a, b in zip(stages, stages[1:], strict=False))
    assert torch.equal(stages[-1], out["autoattack"].correct)


def test_autoattack_equals_the_reference_run_standard_evaluation(linear, outcomes):
    """Our cascade over the registry's components is the library's own evaluation, bit for
    bit: same seed, same batches, same robust points."""
    model, x, y = linear
    ctx = AttackContext(eps=EPS, num_classes=4, seed=0, square_queries=QUERIES)
    aa = standard_autoattack(model, ctx, x.device)
    with torch.random.fork_rng():
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=16)
    assert torch.equal(y_adv == y, outcomes[1]["autoattack"].correct)


def test_autoattack_agrees_with_torchattacks_on_a_small_cnn():
    torchattacks = pytest.importorskip("torchattacks", reason="the oracle; `make venv` installs it")
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 4),
    )  # fmt: skip
    model = _fit(net, steps=100)
    x, y = colour_data(N, 2)
    eps = 3 / 255
    clean = clean_correct(model, x, y, 16)
    ctx = AttackContext(eps=eps, num_classes=4, square_queries=QUERIES)
    ours = attack_set(model, "autoattack", x, y, clean, ctx, 16)
    # torchattacks' AutoAttack builds its components with 10 steps; the standard protocol (and
    # the reference code) runs 100, and Square without the rescaled schedule.
    theirs = torchattacks.AutoAttack(model, eps=eps, version="standard", n_classes=4, seed=0)
    for part in theirs._autoattack.attacks:
        if hasattr(part, "steps"):
            part.steps = 100
        if hasattr(part, "rescale_schedule"):
            part.rescale_schedule, part.n_queries = False, QUERIES
    with torch.random.fork_rng():
        x_adv = theirs(x, y)
    with torch.no_grad():
        robust_theirs = clean & (model(x_adv).argmax(1) == y)
    gap = abs(int(ours.correct.sum()) - int(robust_theirs.sum()))
    assert 0 < int(robust_theirs.sum()) < int(clean.sum())  # some fall, some hold
    assert gap <= max(2, 0.01 * N), (int(ours.correct.sum()), int(robust_theirs.sum()))


def test_autoattack_is_not_weaker_than_pgd5_and_fgsm(outcomes):
    _, out = outcomes
    aa = int(out["autoattack"].correct.sum())
    assert aa <= int(out["pgd"].correct.sum())
    assert aa <= int(out["fgsm"].correct.sum())


def test_reference_attacks_are_seeded_and_leave_the_global_rng_alone(linear):
    model, x, y = linear
    state = torch.get_rng_state()
    ctx = AttackContext(eps=EPS, num_classes=4, seed=0, square_queries=50)
    runs = [ATTACKS.get(name).run(model, x, y, ctx) for name in ("apgd-ce", "square") * 2]
    assert torch.equal(torch.get_rng_state(), state)  # the library's re-seeding was contained
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[3])
    for x_adv in runs:
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # FAB's .backward() leaves parameter gradients (the reference evaluation above left some);
    # through the registry it leaves none, and requires_grad is restored.
    model.zero_grad(set_to_none=True)
    ATTACKS.get("fab-t").run(model, x[:4], y[:4], ctx)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert ctx.library_seed() != AttackContext(eps=EPS, num_classes=4, seed=1).library_seed()


def test_pgd_restarts_keep_the_per_sample_worst_case(linear):
    model, x, y = linear
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    one = pgd(model, x, y, 6 / 255, 1 / 255, 2, generator=g(), restarts=1)
    assert torch.equal(one, pgd(model, x, y, 6 / 255, 1 / 255, 2, generator=g()))
    many = pgd(model, x, y, 6 / 255, 1 / 255, 2, generator=g(), restarts=4)
    with torch.no_grad():
        right_one, right_many = model(one).argmax(1) == y, model(many).argmax(1) == y
    assert not (right_many & ~right_one).any()  # restart 1 is among the four
    assert (many - x).abs().max() <= 6 / 255 + 1e-6


def test_cw_margin_is_the_closed_form():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 2])
    assert torch.equal(cw_margin(logits, y), torch.tensor([3.0, -2.5]))


def test_target_classes_and_few_class_data():
    assert [n_target_classes(k) for k in (2, 3, 6, 10, 100)] == [1, 2, 5, 9, 9]
    parts, skipped = ensemble_components(3)
    assert parts == ("apgd-ce", "fab-t", "square") and "apgd-t" in skipped
    assert ensemble_components(6) == (ATTACKS.get("autoattack").components, {})
    with pytest.raises(SatpipeError, match="apgd-t.*4 classes"):
        ATTACKS.get("apgd-t").check_classes(3)
    with pytest.raises(SatpipeError, match="choose one of fgsm, pgd, pgd-cw, apgd-ce"):
        ATTACKS.get("cw-inf")


def test_bench_eval_counts_the_passes_each_attack_makes():
    from satpipe.bench import run_benchmark

    # At 64/255 APGD-CE fools every image, so the later stages have nothing left: seconds.
    report = run_benchmark("eval", model="smallcnn", n=8, batch_size=8, size=8, classes=4,
                           device="cpu", square_queries=20, eps=64)  # fmt: skip
    pgd5 = report["pgd"]
    # One batch: 5 gradient steps, then one prediction on the adversarial images.
    assert pgd5["image_forwards"] == {"with_grad": 40, "no_grad": 8} and pgd5["model_calls"] == 6
    assert report["clean_accuracy"] == 1.0  # labels are the model's own predictions
    aa = report["autoattack"]
    assert list(aa["stages"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["stages"]["apgd-ce"] == 0.0 and aa["robust_accuracy"] == 0.0
    assert aa["image_forwards"]["with_grad"] >= 8 * 100 * (report["clean_accuracy"] > 0)
    for part in (pgd5, aa):
        assert part["images_per_s"] > 0 and part["share_in_passes"] > 0
    assert report["host_syncs_per_pgd_step"] is None  # CPU: nothing to count
