"""SAT's alpha schedules, what a run took from its maps, and the shuffled (content-control)
pairing of images with maps."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.loader import make_loader
from satpipe.train import run_dir
from satpipe.train.alpha_schedules import ALPHA_SCHEDULES, alpha_at, expected_map_share
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig, run_config, upgrade_saved
from satpipe.train.eval.results import saliency_use
from satpipe.train.pairing import derangement
from satpipe.train.perturb import alpha_schedule, sat_perturb, sat_perturb_counted
from satpipe.train.trainer import train
from tests.conftest import write_colour_dataset, write_tiny_dataset, write_tiny_saliency
from tests.test_loader import row_ids, write_index_pair


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("alpha")
    data = write_colour_dataset(root / "colour.zarr", n_train=64, n_test=16)
    return {
        "data": data,
        "masks": write_tiny_saliency(root / "masks.zarr", data),
        "random": write_tiny_saliency(root / "random.zarr", data, source="random"),
    }


def config(stores, out, variant="sat", **kw) -> TrainConfig:
    base = dict(variant=variant, data=stores["data"], saliency=stores["masks"], out=str(out),
                model="smallcnn", epochs=2, batch_size=16, attack_steps=1,
                device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def digest(run) -> str:
    sd = load_checkpoint(run / "checkpoint.pt")["model"]["state_dict"]
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 98])
def test_progress_at_h100_on_a_100_epoch_run_is_the_papers_formula(steps):
    for t in range(100):
        paper = 0.6 ** (t / 10)
        assert alpha_at("progress", 0.6, t, 0, steps, 100) == paper  # bit for bit
        assert alpha_at("epoch", 0.6, t, steps - 1, steps, 100) == paper
        assert alpha_at("epoch", 0.6, t, 0, steps, 100) == alpha_schedule(t, 0.6)
    # Within an epoch `progress` falls step by step; `epoch` holds.
    inside = [alpha_at("progress", 0.6, 5, s, steps, 100) for s in range(steps)]
    assert inside == sorted(inside, reverse=True) and (steps == 1 or inside[0] > inside[-1])


def test_progress_compresses_the_curve_and_constant_holds():
    # A 3-epoch run covers the paper's curve: the last step is near 0.6^10 ~ 0.006.
    last = alpha_at("progress", 0.6, 2, 93, 94, 3)
    assert last == pytest.approx(0.6 ** (10 * (2 * 94 + 93) / (3 * 94)))
    assert last < 0.01 and alpha_at("progress", 0.6, 0, 0, 94, 3) == 1.0
    assert alpha_at("epoch", 0.6, 2, 0, 94, 3) == pytest.approx(0.9028, abs=1e-4)  # the bug
    assert alpha_at("progress", 0.6, 1, 0, 10, 2, horizon=20) == 0.6  # p = 1/2 of H = 20
    assert {alpha_at("constant", 0.25, e, s, 5, 3) for e in range(3) for s in range(5)} == {0.25}
    assert expected_map_share("progress", 0.6, 100, 1) == pytest.approx(0.80, abs=0.02)
    assert expected_map_share("epoch", 0.6, 3, 94) == pytest.approx(
        1 - (1 + 0.95 + 0.9) / 3, abs=0.01
    )
    assert set(ALPHA_SCHEDULES.names()) == {"progress", "epoch", "constant"}


def test_the_counted_perturbation_draws_the_same_bytes():
    x, s = torch.rand(4, 3, 8, 8), torch.rand(4, 1, 8, 8) * 2 - 1
    a = sat_perturb(x, s, 8 / 255, 0.4, torch.Generator().manual_seed(1))
    b, counts = sat_perturb_counted(x, s, 8 / 255, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and counts.dtype == torch.float64
    n_map, abs_sum = counts.tolist()
    assert 0 < n_map < x.numel() and 0 < abs_sum < n_map


# Model digests of runs trained by the code before the schedules existed (per-epoch
# a^(t/10), a = 0.01 so the maps weigh in epoch 1), same seed: `epoch` must reproduce them.
BEFORE = {
    "sat": "b4ba23ce74463f8b1992f1f8fd6c16095e7069d5c07544180ef9eab7279ab62a",
    "pgd-sat": "a9f7b317f7c6d15d9b290d41edbf6c7fa47abe6fafbb84fbe27f44c60cadc699",
}


@pytest.mark.parametrize("variant", sorted(BEFORE))
def test_epoch_schedule_reproduces_the_runs_before_it(stores, tmp_path, variant):
    run = train(config(stores, tmp_path / variant, variant, alpha_base=0.01, seed=3,
                       alpha_schedule="epoch"))  # fmt: skip
    assert digest(run) == BEFORE[variant]


def test_old_runs_resume_with_the_schedule_they_had():
    assert upgrade_saved({"variant": "sat"})["alpha_schedule"] == "epoch"
    assert upgrade_saved({"variant": "sat", "alpha_schedule": "constant"})["alpha_schedule"] == (
        "constant"
    )
    assert TrainConfig.__dataclass_fields__["alpha_schedule"].default == "progress"


# ---- what the run took from its map --------------------------------------------------------


def test_the_recorded_share_matches_one_minus_alpha(stores, tmp_path, capsys):
    """constant a = 0.3: every element is from the map w.p. 0.7, independently; the run's
    64 images x 768 elements x 2 epochs give a binomial standard error of ~0.0015."""
    run = train(config(stores, tmp_path / "c", saliency=stores["random"], augment=False,
                       alpha_schedule="constant", alpha_base=0.3))  # fmt: skip
    rows = metrics(run)
    for r in rows:
        se = math.sqrt(0.3 * 0.7 / r["sat_elements"])
        assert r["sat_elements"] == 64 * 3 * 16 * 16 and r["alpha_mean"] == 0.3
        assert abs(r["saliency_share"] - 0.7) < 4 * se, r
        assert r["map_delta"] == pytest.approx(0.5, abs=0.02)  # |U(-1, 1)|, no crop padding
    use = saliency_use(run)
    assert abs(use["share"] - 0.7) < 4 * math.sqrt(0.21 / use["elements"])
    assert use["perturbation"] == pytest.approx(1 - use["share"] * (1 - use["map_delta"]))
    assert "warning" not in capsys.readouterr().err  # constant: the share was chosen
    # progress: each epoch's share is 1 - its mean alpha, within the sampling error.
    run = train(config(stores, tmp_path / "p", augment=False))
    for r in metrics(run):
        se = math.sqrt(0.25 / r["sat_elements"])
        assert abs(r["saliency_share"] - (1 - r["alpha_mean"])) < 4 * se, r
        assert r["map_delta"] == 1.0  # masks: +-1
    # pgd-sat: only the batches the coin sent to x_sat count.
    run = train(config(stores, tmp_path / "m", "pgd-sat", alpha_schedule="constant",
                       alpha_base=0.0))  # fmt: skip
    r = metrics(run)[0]
    assert r["sat_elements"] < 64 * 768 and r["saliency_share"] in (1.0, None)


def test_a_run_that_took_little_from_its_map_warns_in_one_line(stores, tmp_path, capsys):
    run = train(config(stores, tmp_path / "w", alpha_schedule="epoch", epochs=2))
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "--alpha-schedule progress" in err[0], err
    assert saliency_use(run)["share"] < 0.05


def test_resumed_with_more_epochs_alpha_follows_the_new_horizon(stores, tmp_path):
    run = train(config(stores, tmp_path / "a", epochs=1, batch_size=32))
    train(run_config(run, epochs=3, resume=True))
    straight = train(config(stores, tmp_path / "b", epochs=3, batch_size=32))
    resumed = [r["alpha_mean"] for r in metrics(run)]
    assert resumed[1:] == [r["alpha_mean"] for r in metrics(straight)][1:]
    assert resumed[0] < metrics(straight)[0]["alpha_mean"]  # the 1-epoch run fell faster


# ---- shuffled pairing ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_the_shuffled_pairing_is_a_seeded_derangement(n):
    for seed in range(5):
        perm = derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n))  # every map once: the same multiset
        assert not np.any(perm == np.arange(n))
        assert np.array_equal(perm, derangement(n, seed))
    if n > 3:
        assert not np.array_equal(derangement(n, 0), derangement(n, 1))
    with pytest.raises(SatpipeError, match="at least 2"):
        derangement(1, 0)


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_both_loaders_pair_each_image_with_its_assigned_map(tmp_path, mode):
    data, sal = write_index_pair(tmp_path, n=40, rows_per_shard=8)
    perm = derangement(40, 7)
    loader = make_loader(data, "train", sal, batch_size=16, mode=mode, seed=1, map_rows=perm)
    loader.set_epoch(1)
    seen = {}
    for x, s, _ in loader:
        for row, map_row in zip(row_ids(x), s[:, 0, 0, 0].round().long().tolist(), strict=True):
            seen[row] = map_row
    assert seen == {i: int(perm[i]) for i in range(40)}


def test_shuffled_runs_record_their_pairing_and_resume_bit_for_bit(stores, tmp_path, monkeypatch):
    kw = dict(saliency_pairing="shuffled", seed=2)
    straight = train(config(stores, tmp_path / "a", **kw))
    real_save = run_dir.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(stores, tmp_path / "b", **kw))
    monkeypatch.setattr(run_dir, "save_checkpoint", real_save)
    recorded = (tmp_path / "b" / "pairing.json").read_text()
    resumed = train(config(stores, tmp_path / "b", resume=True, **kw))
    assert (resumed / "pairing.json").read_text() == recorded
    assert (straight / "pairing.json").read_text() == recorded
    assert digest(straight) == digest(resumed)
    record = json.loads(recorded)
    assert record["seed"] == 2 and record["rows"] == 64
    assert record["map_rows"] == derangement(64, 2).tolist()
    assert json.loads((resumed / "config.json").read_text())["saliency_pairing"] == "shuffled"
    # The maps the shuffled run trained on differ from the matched run's.
    assert digest(straight) != digest(train(config(stores, tmp_path / "c", seed=2)))


def _cli(args):
    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha-base", "1.5"], "--alpha-base must be in [0, 1]"),
        (["--alpha-horizon", "0"], "--alpha-horizon must be > 0"),
        (["--alpha-schedule", "linear"], "choose one of progress, epoch, constant"),
        (["--saliency-pairing", "shuffled", "--variant", "pgd"], "uses no saliency maps"),
        (["--saliency-pairing", "diagonal"], "choose one of matched, shuffled"),
    ],
)
def test_bad_alpha_and_pairing_flags_are_one_line(stores, tmp_path, extra, message):
    out = tmp_path / "bad"
    args = ["--variant", "sat", "--data", stores["data"], "--saliency", stores["masks"],
            "--model", "smallcnn", "--epochs", "1", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    result = _cli([*args, *extra])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_a_split_of_one_image_cannot_be_shuffled(tmp_path):
    data = write_tiny_dataset(tmp_path / "one.zarr", n_train=1, n_test=4, rows_per_shard=1)
    sal = write_tiny_saliency(tmp_path / "one_sal.zarr", data)
    out = tmp_path / "run"
    result = _cli(["--variant", "sat", "--data", data, "--saliency", sal, "--model", "smallcnn",
                   "--epochs", "1", "--device", "cpu", "--out", str(out),
                   "--saliency-pairing", "shuffled"])  # fmt: skip
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "at least 2 training images" in lines[0], result.output
    assert not out.exists()


def test_train_help_shows_the_schedules():
    help_ = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "240"}).output
    text = " ".join(help_.split())
    for word in ("--alpha-schedule", "--alpha-horizon", "--saliency-pairing", "progress",
                 "epoch", "constant", "shuffled"):  # fmt: skip
        assert word in text
