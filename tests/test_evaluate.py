import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.loader import make_loader
from satpipe.train.config import TrainConfig
from satpipe.train.eval import evaluate as evaluate_module
from satpipe.train.eval.evaluate import evaluate, failed_checks, robustness, sanity_checks
from satpipe.train.models import load_model
from satpipe.train.trainer import train
from tests.conftest import write_colour_dataset

# The colour task resists small eps; these make the attacks bite. Step 10/255 x 5 steps can
# reach the edge of every ball (with fewer, PGD is rightly flagged as weaker than FGSM).
GRID = (0, 16, 48)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = write_colour_dataset(root / "colour.zarr", n_train=64, n_test=32)
    run = train(
        TrainConfig(
            variant="original",
            data=data,
            out=str(root / "run"),
            model="smallcnn",
            epochs=3,
            batch_size=16,
            augment=False,
            device="cpu",
        )
    )
    return run, data


class Quantized(nn.Module):
    """Gradient masking by construction: rounding the input has zero gradient everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 8) / 8)


def test_trained_model_passes_the_sanity_checks(trained_run):
    run, data = trained_run
    results = evaluate(
        run, eps=GRID, steps=5, step_size=10, seeds=(0, 1), batch_size=16, device="cpu", strict=True
    )
    assert results["checks_passed"], results["checks"]
    assert results["clean"] >= 75.0
    assert results["pgd"]["0"] == results["clean"] == results["fgsm"]["0"]
    assert results["pgd"]["48"] < results["clean"] - 20  # the attack really attacks
    assert len(results["pgd_per_seed"]["16"]) == 2
    assert results["pgd_large"] <= 30.0
    assert results["train_time_s"] > 0 and results["variant"] == "original"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["pgd"] == results["pgd"]
    md = (run / "results.md").read_text()
    assert "| 16 |" in md and "PASS `large_eps_near_zero`" in md and "FAIL" not in md
    # Same call, same numbers (seeded random starts).
    again = evaluate(
        run,
        eps=(16,),
        steps=5,
        step_size=10,
        seeds=(1,),
        batch_size=16,
        device="cpu",
        out=run / "again",
    )
    assert again["pgd_per_seed"]["16"] == results["pgd_per_seed"]["16"][1:]


def test_a_masked_model_is_caught(trained_run):
    run, data = trained_run
    model, _ = load_model(run / "checkpoint.pt")
    loader = make_loader(data, "test", None, batch_size=16, shuffle=False)
    masked = Quantized(model).eval()
    checks = {c["name"]: c for c in sanity_checks(robustness(masked, loader, GRID, 5, 10), 4)}
    assert not checks["large_eps_near_zero"]["passed"], checks["large_eps_near_zero"]
    assert checks["eps0_equals_clean"]["passed"]


def test_sanity_checks_flag_each_violation():
    raw = {
        "n": 100,
        "clean": 0.9,
        "fgsm": {0.0: 0.9, 4.0: 0.5, 8.0: 0.4},
        "pgd": {0.0: [0.8], 4.0: [0.3], 8.0: [0.6]},
        "pgd_large": 0.5,
        "pgd_double_steps": 0.7,
    }
    failed = {c["name"] for c in sanity_checks(raw, num_classes=10) if not c["passed"]}
    assert failed == {
        "eps0_equals_clean",
        "non_increasing_in_eps",
        "pgd_le_fgsm",
        "large_eps_near_zero",
        "more_steps_never_help",
    }
    fine = {
        "n": 100,
        "clean": 0.9,
        "fgsm": {0.0: 0.9, 4.0: 0.5, 8.0: 0.4},
        "pgd": {0.0: [0.9], 4.0: [0.3], 8.0: [0.2]},
        "pgd_large": 0.0,
        "pgd_double_steps": 0.2,
    }
    assert all(c["passed"] for c in sanity_checks(fine, num_classes=10))


def test_the_two_steps_check_compares_on_the_images_it_ran():
    # The 2x-steps run on the first 50 images: compared with PGD on those 50, not the grid's
    # mean over all 1000 (here 0.2 overall but 0.4 on the first 50, where 2x steps gave 0.38).
    raw = {"n": 1000, "clean": 0.9, "fgsm": {0.0: 0.9, 8.0: 0.5}, "pgd": {0.0: [0.9], 8.0: [0.2]},
           "pgd_large": 0.0, "pgd_double_steps": 0.38, "pgd_double_steps_base": 0.4,
           "check_n": 50}  # fmt: skip
    (check,) = [c for c in sanity_checks(raw, 10) if c["name"] == "more_steps_never_help"]
    assert check["passed"] and "first 50 images" in check["detail"]
    # 2x steps weaker than PGD by more than 2/50 on those images: flagged.
    raw["pgd_double_steps"] = 0.46
    (check,) = [c for c in sanity_checks(raw, 10) if c["name"] == "more_steps_never_help"]
    assert not check["passed"]


def test_check_examples_runs_the_checks_on_the_first_images(trained_run):
    run, _ = trained_run
    kw = dict(eps=(16,), steps=2, step_size=10, batch_size=16, device="cpu", strict=False)
    results = evaluate(run, check_examples=10, out=run / "checks10", **kw)
    assert results["check_examples"] == 10 and results["n"] > 10
    assert any("first 10 images" in c["detail"] for c in results["checks"])
    with pytest.raises(SatpipeError, match="--check-examples must be >= 1"):
        evaluate(run, check_examples=0, **kw)


def test_cli_eval_fails_loudly_on_masking_unless_no_strict(trained_run, monkeypatch, tmp_path):
    run, _ = trained_run
    real = load_model

    def load_masked(path, device="cpu"):
        model, state = real(path, device)
        return Quantized(model).eval(), state

    args = [
        "eval",
        str(run),
        "--eps",
        "32",
        "--steps",
        "4",
        "--step-size",
        "10",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    runner = CliRunner()
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    monkeypatch.setattr(evaluate_module, "load_model", load_masked)
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1
    assert "GRADIENT-MASKING SANITY CHECKS FAILED: large_eps_near_zero" in bad.output
    assert failed_checks(json.loads((tmp_path / "results.json").read_text()))
    warn = runner.invoke(app, [*args, "--no-strict"])
    assert warn.exit_code == 0 and "warning" in warn.output


def test_evaluate_refuses_bad_input(trained_run, tmp_path):
    run, _ = trained_run
    with pytest.raises(SatpipeError, match="checkpoint not found"):
        evaluate(tmp_path, device="cpu")
    with pytest.raises(SatpipeError, match="eps"):
        evaluate(run, eps=(-1, 2), device="cpu")


# --------------------------------------------------------------------------------------------
# Attacks beyond the paper's protocol, subsets, correctness bits, bad input


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference attacks' tiny ops crawl with 2 threads when loaded
    yield
    torch.set_num_threads(before)


def test_autoattack_subset_correctness_file_and_robustbench(trained_run, tmp_path, one_thread):
    from satpipe.train.eval.per_image import load_correct

    run, _ = trained_run
    out = tmp_path / "aa"
    # At 48/255 every point falls to APGD-CE, so the ensemble's later stages have nothing left
    # to attack: the whole path runs in seconds.
    results = evaluate(
        run, attacks=("fgsm", "pgd", "autoattack"), eps=(16, 48), attack_eps={"autoattack": 48},
        attack_examples={"autoattack": 12}, n_examples=24, steps=5, step_size=10, batch_size=16,
        device="cpu", out=out,
    )  # fmt: skip
    assert results["n"] == 24 and results["subset"]["split_size"] == 32
    assert sorted(results["subset"]["class_counts"]) == sorted(results["subset"]["class_counts"])
    aa = results["attacks"]["autoattack"]
    assert list(aa["eps"]) == ["48"] and aa["eps"]["48"]["n"] == 12
    assert aa["n_target_classes"] == 3 == results["n_target_classes"]  # min(9, 4 - 1)
    assert aa["version"] == "standard" and list(aa["eps"]["48"]["stages"]) == list(aa["components"])
    names = {c["name"] for c in results["checks"]}
    assert "autoattack_le_pgd" in names and results["checks_passed"]
    for k, cell in results["robust"].items():
        for attack in cell["attacks"]:
            assert cell["accuracy"] <= results["attacks"][attack]["eps"][k]["accuracy"] + 1e-9
    clean_i = results["clean_interval"]
    assert clean_i["low"] <= results["clean"] <= clean_i["high"]

    c = load_correct(out)
    assert len(c.indices) == 24 and len(set(c.indices.tolist())) == 24
    assert c.get("autoattack", 48, 0).shape == (12,)
    assert 100 * c.runs("pgd", 16).mean() == pytest.approx(results["pgd"]["16"])
    assert 100 * c.clean.mean() == pytest.approx(results["clean"])
    assert not (c.robust(16) & ~c.get("fgsm", 16)).any()
    assert not (c.get("autoattack/square", 48, 0) & ~c.get("autoattack/apgd-ce", 48, 0)).any()
    assert results["correct"]["file"] == "correct.npz"

    record = json.loads((out / "robustbench.json").read_text())
    assert record["threat_model"] == "Linf" and record["eps"] == "48/255"
    assert record["n_examples"] == 12 and record["architecture"] == "smallcnn"
    assert float(record["autoattack_acc"]) == pytest.approx(aa["eps"]["48"]["accuracy"], abs=0.01)
    assert "| 48 |" in (out / "results.md").read_text()

    # Same call, same numbers; the subset is a prefix-stable stratified order.
    again = evaluate(
        run, attacks=("pgd",), eps=(16,), n_examples=24, steps=5, step_size=10, batch_size=16,
        device="cpu", out=tmp_path / "again",
    )  # fmt: skip
    assert again["pgd_per_seed"]["16"] == results["pgd_per_seed"]["16"]
    assert not (tmp_path / "again" / "robustbench.json").exists()
    assert load_correct(tmp_path / "again").indices.tolist() == c.indices.tolist()


class Noisy(nn.Module):
    """Randomness left on in eval mode: AutoAttack's restarts and stopping rules break."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


class Flat(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).flatten()


@pytest.mark.parametrize(
    "args, wrapper, message",
    [
        (["--attack", "cw-inf"], None, "unknown attack 'cw-inf'; choose one of fgsm, pgd,"),
        (["--eps", "2,300"], None, "eps must be in [0, 255]"),
        (["--n-examples", "33"], None, "--n-examples 33 is outside [1, 32]"),
        (["--n-examples", "0"], None, "--n-examples must be >= 1"),
        (["--attack", "pgd", "--attack-examples", "pgd=40", "--n-examples", "20"], None,
         "pgd=40 is more than the 20 images"),
        (["--attack", "pgd", "--attack-eps", "autoattack=8"], None, "which --attack does not run"),
        (["--attack", "pgd"], Flat, "the model must return (B, classes) logits, got (4,)"),
        (["--attack", "autoattack"], Noisy, "model output is random in eval mode"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    trained_run, tmp_path, monkeypatch, args, wrapper, message
):
    run, _ = trained_run
    if wrapper is not None:
        real = load_model
        monkeypatch.setattr(
            evaluate_module,
            "load_model",
            lambda p, d="cpu": (wrapper(real(p, d)[0]), real(p, d)[1]),
        )
    out = tmp_path / "bad"
    result = CliRunner().invoke(
        app, ["eval", str(run), "--device", "cpu", "--out", str(out), *args]
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("satpipe: error:"), result.output
    assert message in lines[0]
    assert not (out / "results.json").exists() and not (out / "correct.npz").exists()
