"""The catastrophic-overfitting guard: held-out rows never trained on, firing on a constructed
collapse (restore the best epoch, stop, say so), and old runs that still resume."""

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from satpipe.data.loader import LoaderOptions, make_loader
from satpipe.train import trainer
from satpipe.train.checkpoint import load_checkpoint, save_checkpoint
from satpipe.train.config import TrainConfig, run_config
from satpipe.train.guard import held_out_rows
from satpipe.train.trainer import run_finished, train
from tests.conftest import write_colour_dataset, write_tiny_dataset


def image_ids(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x]


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_excluded_rows_are_never_yielded_and_the_rest_exactly_once(tmp_path, mode):
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=40, rows_per_shard=8)
    every = make_loader(data, "train", batch_size=40, shuffle=False, mode="resident")
    ((x_all, _, _),) = list(every)
    ids = image_ids(x_all)
    held = held_out_rows(40, 7, seed=3)
    for world in (1, 2):
        seen: list[str] = []
        for rank in range(world):
            options = LoaderOptions(rank=rank, world_size=world, drop_last=world > 1)
            loader = make_loader(
                data, "train", None, options, batch_size=4, shuffle=True, seed=1, mode=mode,
                exclude_rows=held,
            )  # fmt: skip
            loader.set_epoch(2)
            seen += [i for x, _, _ in loader for i in image_ids(x)]
        assert not set(seen) & {ids[r] for r in held}
        kept = [ids[r] for r in range(40) if r not in set(held.tolist())]
        if world == 1:
            assert sorted(seen) == sorted(kept)  # each kept row once
        else:  # 33 rows over 2 ranks, tail dropped: 16 each, disjoint
            assert len(seen) == len(set(seen)) == 32 and set(seen) <= set(kept)


def test_held_out_rows_are_a_function_of_the_seed_alone():
    a, b = held_out_rows(100, 10, seed=0), held_out_rows(100, 10, seed=0)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10 and list(a) == sorted(a)
    assert not np.array_equal(a, held_out_rows(100, 10, seed=1))
    with pytest.raises(Exception, match="guard-rows"):
        held_out_rows(10, 10, seed=0)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("guard") / "colour.zarr", n_test=32)


def guarded(colour, out, **kw) -> TrainConfig:
    base = dict(variant="original", data=colour, out=str(out), model="smallcnn", epochs=6,
                batch_size=16, augment=False, device="cpu", eps=1.0, guard_rows=16,
                guard_steps=2, guard_drop=0.1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_the_guard_restores_the_best_epoch_and_stops_on_a_collapse(colour, tmp_path, monkeypatch):
    """Collapse constructed after epoch 3: the last layer's class rows are rotated, so a model
    that was right now answers y + 1. The guard must see its held-out PGD accuracy fall."""
    real_epoch = trainer.train_one_epoch

    def collapsing(model, loader, optimizer, variant, vcfg, epoch, **kw):
        stats = real_epoch(model, loader, optimizer, variant, vcfg, epoch, **kw)
        if epoch == 3:
            head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                head.weight.copy_(head.weight.roll(1, 0))
                head.bias.copy_(head.bias.roll(1, 0))
        return stats

    monkeypatch.setattr(trainer, "train_one_epoch", collapsing)
    config = guarded(colour, tmp_path / "run")
    run = train(config)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # 6 asked, stopped after the 4th
    accs = [r["guard_acc"] for r in rows]
    best_epoch = max(range(3), key=lambda e: (accs[e], e))
    assert accs[best_epoch] >= 0.5, accs  # it had learned something to lose
    assert accs[3] < accs[best_epoch] - 0.1 and rows[3]["guard_fired"]
    assert rows[3]["restored_epoch"] == best_epoch
    state, best = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(run / "best.pt")
    assert state["stopped"]["restored_epoch"] == best["epoch"] == state["weights_epoch"]
    assert state["epoch"] == 3 and state["guard"]["fired"]
    for key, tensor in best["model"]["state_dict"].items():
        assert torch.equal(state["model"]["state_dict"][key], tensor), key
    # Stopped is final: a resume trains nothing, and reproduce sees a finished run.
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    assert run_finished(config)
    train(run_config(run, resume=True))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    # The evaluation says so too.
    from satpipe.train.eval.evaluate import evaluate

    results = evaluate(run, eps=(1,), steps=1, device="cpu", strict=False)
    assert results["stopped"]["restored_epoch"] == best_epoch and results["guard"]["fired"]
    assert "stopped by the catastrophic-overfitting guard" in (run / "results.md").read_text()


def test_an_unguarded_run_keeps_every_row_and_a_guarded_one_records_its_checks(colour, tmp_path):
    run = train(guarded(colour, tmp_path / "g", epochs=1, lr_schedule="cyclic"))
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["batches"] == 3 and 0 <= row["guard_acc"] <= 1 and row["guard_seconds"] > 0
    assert (run / "best.pt").is_file()
    plain = train(guarded(colour, tmp_path / "p", epochs=1, guard_rows=0))
    (row,) = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    assert row["batches"] == 4 and "guard_acc" not in row


def test_a_run_saved_before_lr_schedule_and_the_baselines_existed_still_resumes(colour, tmp_path):
    run = train(guarded(colour, tmp_path / "old", epochs=1, guard_rows=0))
    # Rewrite it as the trainer wrote runs before: "schedule", none of the new fields.
    new_keys = {
        "fgsm_step_ratio", "free_replays", "rrr_lambda", "igr_lambda", "sgt_fraction",
        "sgt_lambda", "guard_rows", "guard_drop", "guard_steps", "guard_step_size",
    }  # fmt: skip

    def old(config):
        config = {k: v for k, v in config.items() if k not in new_keys}
        config["schedule"] = config.pop("lr_schedule")
        return config

    (run / "config.json").write_text(json.dumps(old(json.loads((run / "config.json").read_text()))))
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"] = old(state["config"])
    state.pop("satpipe")
    save_checkpoint(run / "checkpoint.pt", state)
    resumed = run_config(run, epochs=2, resume=True)
    assert resumed.lr_schedule == "none" and resumed.free_replays == 8
    train(resumed)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
