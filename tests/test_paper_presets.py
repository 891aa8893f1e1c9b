"""The paper presets before a GPU hour: their data and annotations, the printed cost plan, and
`--fast-dev-run` of each on fixtures written in the real formats (tests/formats.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import satpipe.reproduce.run as rp
import satpipe.train.trainer as trainer
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.importers import import_dataset
from satpipe.pipeline.quality.sanity import cascade_blocks
from satpipe.reproduce import fastdev, plan
from satpipe.reproduce.presets import PRESETS
from satpipe.train.models import create_model
from tests.conftest import write_tiny_dataset
from tests.formats import write_cifar100, write_flowers17, write_tinyimagenet

# 3 classes x 80 images (the importer's default per class), trimaps for 5 of every 8 images.
FLOWER_TRIMAPS = [k for k in range(1, 241) if k % 8 < 5]


def _flowers(root: Path) -> Path:
    write_flowers17(root, classes=3, per_class=80, trimaps=FLOWER_TRIMAPS, shape=(20, 16), seed=2)
    return root


def test_flowers17_preset_imports_only_images_with_trimaps_and_their_masks(tmp_path):
    preset = PRESETS.get("flowers17")
    data = rp.build_data(preset, tmp_path / "out", str(_flowers(tmp_path / "src")))
    view = open_dataset(data)
    rows = {s: len(view.split(s)) for s in view.splits}
    assert sum(rows.values()) == len(FLOWER_TRIMAPS) == 150
    assert view.split("train").masks is not None and view.split("test").masks is not None
    assert view.image_shape == (32, 32, 3)
    plan.check_annotations(preset, data)  # masks there: no error
    # The fast dev run's subset keeps the masks and every class, stratified.
    small = fastdev.subset_data(data, tmp_path / "small.zarr", {"train": 12, "test": 6})
    sub = open_dataset(small)
    assert len(sub.split("train")) == 12 and sub.split("train").masks is not None
    assert np.bincount(sub.split("train").labels[:]).tolist() == [4, 4, 4]
    assert fastdev.subset_data(data, tmp_path / "small.zarr", {"train": 12}) == small  # reused


def test_weak_method_without_its_annotations_stops_in_one_line_before_training(
    tmp_path, monkeypatch
):
    src = _flowers(tmp_path / "src")
    out = tmp_path / "out"
    # A store imported before (by hand, without --masks-only) is reused by the data step ...
    import_dataset("flowers17", src, str(out / "data" / "flowers17.zarr"), per_class=80)
    monkeypatch.setattr(trainer, "train", lambda cfg: pytest.fail("trained before the check"))
    config = rp.ReproduceConfig(preset="flowers17", out=str(out), data_root=str(src),
                                device="cpu")  # fmt: skip
    with pytest.raises(SatpipeError) as err:
        rp.reproduce(config)
    message = str(err.value)
    assert "\n" not in message and "--masks-only" in message and "train/masks" in message
    # ... and boxes: a store with none (CIFAR-100) under the Tiny-ImageNet preset.
    write_cifar100(tmp_path / "cifar", n_train=4, n_test=2)
    cifar = import_dataset("cifar100", tmp_path / "cifar", str(tmp_path / "c.zarr"))
    with pytest.raises(SatpipeError, match=r"train/boxes.*val_annotations\.txt"):
        plan.check_annotations(PRESETS.get("tinyimagenet"), cifar)


def test_cifar100_plan_counts_each_step_and_prices_it(tmp_path):
    preset = PRESETS.get("cifar100")
    rows = {"train": 50_000, "test": 10_000}
    steps = {s.name: s for s in plan.grid_plan(preset, rows, 100, preset.seeds)}
    assert [n for n in steps if n.startswith("source")] == ["source std", "source adv"]
    assert sum(n.startswith("saliency") for n in steps) == 8
    assert sum(n.startswith("score") for n in steps) == 8
    runs = [s for n, s in steps.items() if n.startswith("evaluate")]
    # original, +noise, SAT on each of the 8 stores and its shuffled twin (the content control)
    assert len(runs) == 2 + 8 * 2 and all(r.count == 3 for r in runs)
    assert sum(n.startswith("train") for n in steps) == 2 + 8 * 2
    # SmoothGrad-50 over the split, and its score: the cascade re-runs it once per block.
    assert steps["saliency std smoothgrad"].passes == 50_000 * 50
    blocks = len(cascade_blocks(create_model("resnet34", 100)))
    score = steps["score std smoothgrad"].passes
    assert blocks >= 5 and score == pytest.approx(256 * (blocks + 1) * 50 + 256 * 17 * 4 / 3)
    # AutoAttack on the whole test split (RobustBench's CIFAR rule), as an upper bound.
    assert runs[0].bound == 10_000 * plan.autoattack_passes(preset, 100)
    rates = {("resnet34", "train"): 50.0, ("resnet34", "grad"): 100.0,
             ("resnet10", "train"): 150.0, ("resnet10", "grad"): 300.0}  # fmt: skip
    text = plan.plan_markdown(preset, list(steps.values()), rates, rows, "cpu")
    line = next(x for x in text.splitlines() if x.startswith("| score std smoothgrad |"))
    minutes = score / 100.0 / 60
    assert f"| {minutes:.0f} min |" in line  # 16 min per SmoothGrad-50 score at 100 img/s
    assert re.search(
        r"Total: about [\d.,]+ days without AutoAttack .* AutoAttack adds at most [\d.,]+ days",
        text,
    )
    # The rate is measured on this machine, positive and finite.
    rates = plan.pass_rates(["smallcnn"], (16, 16, 3), 4, "cpu", 8, floor_seconds=0.05)
    assert set(rates) == {("smallcnn", "train"), ("smallcnn", "grad")}
    assert all(0 < r < float("inf") for r in rates.values())


def test_fast_dev_preset_cuts_every_step_and_folders_do_not_mix(tmp_path):
    fast = fastdev.fast_dev_preset(PRESETS.get("cifar100"))
    assert fast.name == "cifar100-fast-dev-run" and fast.seeds == (0,)
    assert (fast.epochs, fast.source_epochs, fast.attack_steps, fast.eval_steps) == (1, 1, 1, 1)
    assert fast.method_params["smoothgrad"]["samples"] == 1
    assert fast.method_params["ig"]["steps"] == 1
    assert (fast.score_n, fast.autoattack_examples) == (fastdev.SCORE_N, 4)
    assert fast.study_methods == PRESETS.get("cifar100").study_methods  # the same steps
    out = tmp_path / "r"
    out.mkdir()
    (out / "preset.json").write_text(json.dumps({"name": fast.name}))
    with pytest.raises(SatpipeError, match="holds a --fast-dev-run smoke run"):
        fastdev.check_out_folder(out, fast_dev_run=False)
    fastdev.check_out_folder(out, fast_dev_run=True)
    (out / "preset.json").write_text(json.dumps({"name": "cifar100"}))
    with pytest.raises(SatpipeError, match="holds a real run"):
        fastdev.check_out_folder(out, fast_dev_run=True)
    assert rp.ReproduceConfig(preset="cifar100", fast_dev_run=True).out.endswith(
        "cifar100-fast-dev-run"
    )
    # Every Markdown page of the report opens with the banner, once however often it runs.
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=8, n_test=4)
    (out / "table.md").write_text("# table\n")
    for _ in range(2):
        fastdev.mark_smoke_pages(out, data)
    text = (out / "table.md").read_text()
    assert text.startswith("> **Smoke run**") and text.count("Smoke run") == 1
    assert "8 train / 4 test rows" in text and text.endswith("# table\n")


def _cifar(root: Path) -> Path:
    write_cifar100(root, n_train=120, n_test=40, seed=1)
    return root


def _tiny(root: Path) -> Path:
    wnids = [f"n{i:04d}" for i in range(8, 0, -1)]  # listed unsorted, as the archive may be
    write_tinyimagenet(root, size=64, wnids=wnids, per_class=15, val=wnids * 5, seed=1)
    return root


# preset -> (fixture writer, weak-grid rows, method-study rows)
FAST_DEV = {
    "cifar100": (_cifar, 0, 10),
    "tinyimagenet": (_tiny, 9, 0),
    "flowers17": (_flowers, 9, 0),
}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # CIFAR-100's two ResNet-34 sources: 5 min idle, 15 loaded (2 cores)
@pytest.mark.parametrize("name", list(FAST_DEV))
def test_fast_dev_run_of_a_paper_preset_on_its_real_format(tmp_path, name):
    writer, weak_rows, method_rows = FAST_DEV[name]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = rp.reproduce(
            rp.ReproduceConfig(preset=name, out=str(tmp_path / "out"), device="cpu",
                               data_root=str(writer(tmp_path / "src")), fast_dev_run=True)
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    pages = ("table.md", "time.md", "claims.md", "saliency-quality.md", "plan.md")
    for page in pages:
        text = (out / page).read_text()
        assert text.startswith("> **Smoke run**"), page
        assert text.count("Smoke run") == 1
    for name_ in ("robustness.png", "saliency.png", "quality-vs-robustness.png", "results.json"):
        assert (out / name_).stat().st_size > 0
    report = json.loads((out / "results.json").read_text())
    assert report["preset"]["name"] == f"{name}-fast-dev-run"
    groups = [r["group"] for r in report["runs"]]
    assert groups.count("weak") == weak_rows and groups.count("methods") == method_rows
    # Every row the grid ran (the weak grid, its content-test twins, the method study) is one
    # line of one accuracy table, each table with the AutoAttack column.
    header, rows, table = [], [], None
    for line in (out / "table.md").read_text().splitlines():
        if line.startswith("| Method"):
            header.append(line)
            table = rows
        elif not line.startswith("|"):
            table = None
        elif table is not None and "---" not in line:
            table.append(line)
    assert len(rows) == len({r["row"] for r in report["runs"]})
    assert all("AA ε=8/255" in h for h in header)
    data = open_dataset(str(out / "data" / f"{name}-fast-dev-run-rows.zarr"))
    assert len(data.split("train")) <= fastdev.FAST_DEV_ROWS["train"]
    for run in report["runs"]:
        assert run["n"]["autoattack"]["8"] <= fastdev.AUTOATTACK_EXAMPLES


def test_the_plan_prices_the_runs_reproduce_makes():
    """The quick grid: the content test at three seeds with its cheaper evaluation (8/255 only,
    checks on 200, no AutoAttack), the PGD family at one seed with the full one."""
    preset = PRESETS.get("quick")
    steps = plan.grid_plan(
        preset, {"train": 3000, "test": 1000}, 6, preset.seeds, preset.frontier_seeds,
        preset.grid_seeds,
    )  # fmt: skip
    evals = {s.name.removeprefix("evaluate "): s for s in steps if s.name.startswith("evaluate")}
    assert evals["pgd"].count == 1 and evals["sat shuffled"].count == 3
    assert evals["pgd"].bound > 0 and evals["sat shuffled"].bound == 0
    assert evals["sat"].detail.endswith("1 eps, checks on 200")
    assert evals["pgd"].detail.endswith("2 eps, checks on 500")
    assert evals["sat"].passes < evals["pgd"].passes
