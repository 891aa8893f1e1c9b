"""cw-l2: agreement with an independent CW-L2 (advertorch's algorithm, written out here), the
per-radius accuracy (never rising with the radius), and its place in results.json."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torchattacks", reason="cw-l2 runs on torchattacks; `make venv` installs it")

from satpipe.train.config import TrainConfig  # noqa: E402
from satpipe.train.eval.attacks import ATTACKS, AttackContext, cw_l2, min_norm_set  # noqa: E402
from satpipe.train.eval.evaluate import evaluate  # noqa: E402
from satpipe.train.trainer import train  # noqa: E402
from tests.conftest import write_colour_dataset  # noqa: E402


def advertorch_cw(model, x, y, search_steps=3, steps=20, lr=0.01, c0=1e-3):
    """advertorch's CarliniWagnerL2Attack (untargeted, confidence 0, abort early), one Adam
    run per binary-search step over the whole batch with a per-image c. Returns the L2 norm
    of the smallest adversarial found per image (inf where none)."""
    n = len(y)
    x_atanh = torch.atanh((2 * x - 1) * 0.999999)
    onehot = F.one_hot(y, model(x[:1]).shape[1]).float()
    lower, upper = torch.zeros(n), torch.full((n,), 1e10)
    const = torch.full((n,), c0)
    best = torch.full((n,), float("inf"))
    for _ in range(search_steps):
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        found = torch.zeros(n, dtype=torch.bool)
        prev = 1e6
        for i in range(steps):
            adv = (torch.tanh(delta + x_atanh) + 1) / 2
            out = model(adv)
            l2sq = ((adv - (torch.tanh(x_atanh) + 1) / 2) ** 2).flatten(1).sum(1)
            real = (onehot * out).sum(1)
            other = ((1 - onehot) * out - onehot * 1e4).max(1)[0]
            loss = (const * (real - other).clamp(min=0)).sum() + l2sq.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i % (steps // 10 or 1) == 0:
                if loss.item() > prev * 0.999999:
                    break
                prev = loss.item()
            ok = out.detach().argmax(1) != y
            found |= ok
            norm = (adv.detach() - x).flatten(1).norm(dim=1)
            best = torch.where(ok & (norm < best), norm, best)
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    return best


@pytest.fixture(scope="module")
def model_and_batch():
    """A tiny CNN with logits large enough that CW at the SAT settings fools most images."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4)
    ).eval()
    with torch.no_grad():
        model[3].weight.mul_(10.0)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(32, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # right on every clean image
    return model, x, y


SAT_SETTINGS = ({}, (0.05, 0.1, 0.2, 0.4))
STRONGER = ({"search_steps": 5, "steps": 40, "c0": 10.0}, (0.05, 0.1, 0.2, 0.4))


@pytest.mark.parametrize(("settings", "radii"), [
    SAT_SETTINGS, pytest.param(*STRONGER, marks=pytest.mark.slow),
])  # fmt: skip
def test_cw_l2_agrees_with_advertorchs_algorithm_within_two_images(model_and_batch, settings,
                                                                   radii):  # fmt: skip
    model, x, y = model_and_batch
    ours_kw = {k: v for k, v in settings.items() if k != "c0"}
    if "c0" in settings:
        ours_kw["initial_const"] = settings["c0"]
    _, ours = cw_l2(model, x, y, **ours_kw)
    theirs = advertorch_cw(model, x, y, **settings)
    fooled = torch.isfinite(theirs).sum().item()
    assert fooled >= len(y) // 2, fooled  # the comparison is not all-robust vs all-robust
    for r in radii:
        a, b = (ours > r).sum().item(), (theirs > r).sum().item()
        assert abs(a - b) <= 2, (r, a, b)


def test_accuracy_never_rises_with_the_radius_and_run_is_the_attack_at_that_radius(
    model_and_batch,
):
    model, x, y = model_and_batch
    clean = torch.ones(len(y), dtype=torch.bool)
    ctx = AttackContext(eps=0.0, num_classes=4)
    norms = min_norm_set(model, "cw-l2", x, y, clean, ctx, batch_size=32)
    acc = [(norms > r).float().mean().item() for r in np.linspace(0, 1, 21)]
    assert all(b <= a for a, b in zip(acc, acc[1:], strict=False)) and acc[0] > acc[-1]
    r = float(norms[torch.isfinite(norms)].median())
    x_adv = ATTACKS.get("cw-l2").run(model, x, y, AttackContext(eps=r, num_classes=4))
    dist = (x_adv - x).flatten(1).norm(dim=1)
    assert (dist <= r + 1e-6).all()  # nothing beyond the radius is returned
    wrong = model(x_adv).argmax(1) != y
    assert wrong.sum().item() == (norms <= r).sum().item()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cw")
    data = write_colour_dataset(root / "colour.zarr", n_train=64, n_test=32)
    cfg = TrainConfig(variant="original", data=data, out=str(root / "run"), model="smallcnn",
                      epochs=2, batch_size=16, augment=False, device="cpu")  # fmt: skip
    return train(cfg)


def test_results_keep_cw_per_radius_its_median_norm_and_a_separate_worst_case(trained_run):
    results = evaluate(
        trained_run, attacks=("fgsm", "cw-l2"), eps=(0, 8), n_examples=16, batch_size=16,
        device="cpu", strict=False,
    )  # fmt: skip
    cw = results["attacks"]["cw-l2"]
    assert cw["norm"] == "L2" and list(cw["eps"]) == ["32", "64", "127.5", "255"]
    assert cw["settings"]["binary_search_steps"] == 3 and cw["settings"]["max_iterations"] == 20
    accs = [c["accuracy"] for c in cw["eps"].values()]
    assert accs == sorted(accs, reverse=True) and all(a <= results["clean"] for a in accs)
    assert cw["unbounded"]["accuracy"] <= accs[-1]
    if cw["successful"]:
        assert 0 < cw["median_norm"] == pytest.approx(255 * cw["median_norm_pixels"])
    # L-inf eps 8 and L2 radius 8 never meet in one worst case.
    assert results["robust"]["8"]["attacks"] == ["fgsm"]
    assert results["robust_l2"]["127.5"]["attacks"] == ["cw-l2"]
    assert "## L2 attacks" in (trained_run / "results.md").read_text()
    saved = json.loads((trained_run / "results.json").read_text())
    assert saved["attacks"]["cw-l2"]["eps"]["127.5"]["accuracy"] == cw["eps"]["127.5"]["accuracy"]
