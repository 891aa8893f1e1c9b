import json

import pytest
import torch
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.train import run_dir
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig, run_config
from satpipe.train.trainer import train
from satpipe.train.variants import VARIANTS
from tests.conftest import write_colour_dataset, write_tiny_saliency


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    data = write_colour_dataset(root / "colour.zarr", n_train=64, n_test=32)
    return {
        "data": data,
        "saliency": write_tiny_saliency(root / "masks.zarr", data, channels=1),
        "incomplete": write_tiny_saliency(root / "partial.zarr", data, complete=False),
        "half_done": write_tiny_saliency(root / "half.zarr", data, shards_done=1),
        "mismatched": write_tiny_saliency(
            root / "other.zarr", data, fingerprint="sha256:" + "0" * 64
        ),
    }


# Free makes epochs / m passes: m = 2 and 4 epochs give the two passes the tests expect. RRR's
# lambda = 1000 (the paper's, for 64 epochs of decoy MNIST) keeps 8 steps near chance here, and
# so does 10 on these masks; at 1 the penalty is of the CE's size and the 8 steps learn (0.91).
PER_VARIANT = {"free": dict(free_replays=2, epochs=4), "rrr": dict(rrr_lambda=1.0)}


def config(stores, tmp_path, variant="original", **kw) -> TrainConfig:
    base = dict(
        variant=variant,
        data=stores["data"],
        saliency=stores["saliency"],
        out=str(tmp_path / variant),
        model="smallcnn",
        epochs=2,
        batch_size=16,
        attack_steps=1,
        augment=False,
        device="cpu",
    )
    base.update(PER_VARIANT.get(variant, {}))
    base.update(kw)
    return TrainConfig(**base)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", VARIANTS.names())
def test_every_variant_trains_and_beats_chance(stores, tmp_path, variant):
    run = train(config(stores, tmp_path, variant))
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["loss"] == r["loss"] and r["images_per_s"] > 0 for r in rows)  # finite
    # 4 colour-coded classes: chance is 25%; two epochs of 4 batches learn them.
    assert rows[-1]["test_acc"] >= 0.5, rows
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and state["variant"] == variant
    assert state["config"] == json.loads((run / "config.json").read_text())
    assert state["model"]["arch"] == "smallcnn" and state["model"]["num_classes"] == 4


@pytest.mark.parametrize(
    ("variant", "schedule"),
    [("pgd-sat", "cosine"), ("free", "cyclic")],  # cyclic: the lr is set at every step
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    stores, tmp_path, monkeypatch, variant, schedule
):
    kw = dict(augment=True, lr_schedule=schedule, optimizer="sgd", lr=0.05, weight_decay=5e-4)
    straight = train(config(stores, tmp_path / "a", variant, **kw))
    # The same 2-epoch run, killed right after its first checkpoint, then resumed.
    real_save = run_dir.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(stores, tmp_path / "b", variant, **kw))
    monkeypatch.setattr(run_dir, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "b" / variant / "checkpoint.pt")["epoch"] == 0
    resumed = train(config(stores, tmp_path / "b", variant, resume=True, **kw))
    a, b = (load_checkpoint(r / "checkpoint.pt") for r in (straight, resumed))
    assert a["model"]["state_dict"].keys() == b["model"]["state_dict"].keys()
    for key, tensor in a["model"]["state_dict"].items():
        assert torch.equal(tensor, b["model"]["state_dict"][key]), key
    for key, value in a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)
    assert a["scheduler"] == b["scheduler"]
    assert [r["epoch"] for r in metrics(resumed)] == [0, 1]
    assert metrics(resumed)[1]["loss"] == metrics(straight)[1]["loss"]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_resume_with_more_epochs_follows_the_new_horizon(stores, tmp_path, schedule):
    """--resume --epochs N: the lr of every later epoch is that of an N-epoch run (torch's
    scheduler state would keep the old T_max / milestones, and a cosine would rise again)."""
    short = dict(model="smallcnn", epochs=2, lr=0.01, lr_schedule=schedule)
    run = train(config(stores, tmp_path / "a", "original", **short))
    train(run_config(run, epochs=5, resume=True))
    resumed = [r["lr"] for r in metrics(run)]
    straight = train(config(stores, tmp_path / "b", "original", **{**short, "epochs": 5}))
    assert resumed[2:] == [r["lr"] for r in metrics(straight)][2:]
    # Never rising again after the old end (the bug: a cosine past T_max climbs back up).
    assert all(b <= a for a, b in zip(resumed[2:], resumed[3:], strict=False)), resumed
    assert resumed[-1] > 0


def test_resume_from_the_run_config_and_refusals(stores, tmp_path):
    run = train(config(stores, tmp_path, "original", epochs=1))
    with pytest.raises(SatpipeError, match="already holds a run"):
        train(config(stores, tmp_path, "original", epochs=1))
    with pytest.raises(SatpipeError, match="different config.*lr"):
        train(config(stores, tmp_path, "original", epochs=2, lr=0.1, resume=True))
    again = run_config(run, epochs=2, resume=True)
    assert again.variant == "original" and again.epochs == 2 and again.model == "smallcnn"
    train(again)
    assert [r["epoch"] for r in metrics(run)] == [0, 1]
    with pytest.raises(SatpipeError, match="checkpoint not found"):
        train(config(stores, tmp_path / "nothing", "original", resume=True))


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("incomplete", "incomplete"),
        ("half_done", "1 of 4"),
        ("mismatched", "dataset fingerprint mismatch: made for"),
    ],
)
def test_bad_saliency_stores_are_refused(stores, tmp_path, store, message):
    with pytest.raises(SatpipeError, match=message):
        train(config(stores, tmp_path, "sat", saliency=stores[store]))
    assert not (tmp_path / "sat" / "checkpoint.pt").exists()


def test_sat_needs_a_saliency_store_and_configs_are_checked(stores, tmp_path):
    with pytest.raises(SatpipeError, match="needs --saliency"):
        train(config(stores, tmp_path, "pgd-sat", saliency=None))
    with pytest.raises(SatpipeError, match="unknown variant.*trades-sat"):
        config(stores, tmp_path, "sat-pgd")
    with pytest.raises(SatpipeError, match="unknown optimizer"):
        config(stores, tmp_path, optimizer="lbfgs")


def test_cli_trains_and_reports_a_refused_store_on_one_line(stores, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "train",
        "--variant",
        "sat",
        "--data",
        stores["data"],
        "--model",
        "smallcnn",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-augment",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    bad = runner.invoke(app, [*args, "--saliency", stores["mismatched"]])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("satpipe: error:") and "made for" in lines[0]
    ok = runner.invoke(app, [*args, "--saliency", stores["saliency"]])
    assert ok.exit_code == 0, ok.output
    assert (out / "checkpoint.pt").is_file()
    resumed = runner.invoke(app, ["train", "--resume", "--out", str(out), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in metrics(out)] == [0, 1]
    assert json.loads((out / "config.json").read_text())["eps"] == 8.0


def test_bench_train_reports_ratios_within_one_run(tmp_path):
    from satpipe.bench import run_benchmark
    from satpipe.bench.train import ON_THE_FLY

    report = run_benchmark(
        "train",
        variants=("sat", "pgd", "pgd-sat"),
        model="smallcnn",
        teacher="smallcnn",
        batch_size=32,
        epochs=1,
        attack_steps=1,
        smoothgrad_samples=2,
        n_train=64,
        size=8,
        device="cpu",
        out=tmp_path / "bench.json",
    )
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(report))
    assert set(report["epoch_seconds"]) == {"original", "sat", "pgd", "pgd-sat", ON_THE_FLY}
    assert report["ratio_to_original"]["original"] == 1.0
    assert report["predicted_ratio_to_original"]["pgd"] == 2.0  # K=1: 2 passes vs 1
    check = report["checks"]["pgd-sat_vs_pgd"]
    q = report["attacked_batch_fraction"]["pgd-sat"]
    assert check["predicted"] == pytest.approx((1 + q) / 2)
    assert {"sat_vs_original", "precomputed_vs_smoothgrad_on_the_fly"} <= set(report["checks"])
