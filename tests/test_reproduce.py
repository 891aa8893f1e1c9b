"""The whole reproduce path on the `tiny` preset: data, sources, saliency, runs, eval, report."""

import json
import re

import pytest
import torch

import satpipe.reproduce.run as rp
import satpipe.train.trainer as trainer
from satpipe.core.errors import SatpipeError


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference attacks' tiny ops crawl with 2 threads when loaded
    yield
    torch.set_num_threads(before)


def test_tiny_preset_end_to_end_resumes_without_redoing_finished_runs(
    tmp_path, monkeypatch, one_thread
):
    out = tmp_path / "tiny"
    config = rp.ReproduceConfig(preset="tiny", out=str(out), device="cpu", seeds=(0,))
    real_run_student, finished = rp.run_student, []

    def killed_after_two(spec, **kwargs):
        if len(finished) == 2:
            raise KeyboardInterrupt  # what a Ctrl-C (or a kill) mid-grid looks like here
        finished.append(spec.out)
        return real_run_student(spec, **kwargs)

    monkeypatch.setattr(rp, "run_student", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce(config)
    assert not (out / "table.md").exists()

    trained = []
    real_train = trainer.train
    monkeypatch.setattr(rp, "run_student", real_run_student)
    monkeypatch.setattr(trainer, "train", lambda cfg: trained.append(cfg.out) or real_train(cfg))
    rp.reproduce(config)
    # Sources, saliency stores and the first two runs were complete: none is trained again.
    assert not set(trained) & set(finished)
    assert str(out / "sources" / "std") not in trained
    report = json.loads((out / "results.json").read_text())
    runs = report["runs"]
    # 4 weak-grid variants + the content test's SAT(masks, shuffled) and SAT without saliency
    # + SAT on 2 sources' maps and their shuffled twins + SAT on the random control (no twin:
    # its maps know nothing of the image) + the frontier's 5 baselines not in the grid
    assert len(runs) == len(trained) + 2 == 4 + 2 + 2 * 2 + 1 + 5
    names = ("table.md", "time.md", "claims.md", "robustness.png", "saliency.png")
    quality_files = ("saliency-quality.md", "quality-vs-robustness.png", "saliency-quality.json")
    for name in (*names, *quality_files, "frontier.png", "frontier.md", "distortions.png"):
        assert (out / name).stat().st_size > 0
    # The frontier: one point per listed variant, grid runs reused, the guard's run recorded.
    points = {p["variant"]: p for p in report["frontier"]}
    assert list(points) == [
        "original",
        "pgd-sat",
        "fgsm-rs",
        "rrr",
        "n-fgsm",
        "gradalign",
        "energy",
    ]
    assert points["fgsm-rs"]["options"] == {"guard_rows": 16, "lr_schedule": "cyclic"}
    assert any(p["pareto"] for p in points.values())
    assert "| FGSM-RS |" in (out / "frontier.md").read_text().replace("**", "")
    quality = json.loads((out / "saliency-quality.json").read_text())
    # Every store scored: weak masks, the random control, smoothgrad from both sources.
    assert [p["label"] for p in quality["points"]] == [
        "mask",
        "std smoothgrad",
        "adv smoothgrad",
        "random",
    ]
    assert all(
        p["quality"]["scores"]["sign-agreement"]["value"] is not None for p in quality["points"]
    )
    assert len(quality["claim_points"]) == 4  # each with its SAT row and the noise baseline
    claims = (out / "claims.md").read_text()
    assert "better saliency (sign-agreement), more robustness" in claims
    assert "Spearman" in claims
    timing = (out / "time.md").read_text()
    assert "wall time" in timing and "Machine yardstick (smallcnn input-gradient" in timing
    assert re.search(r"at 500 img/s .* about \d+\.\d-\d+\.\d min", timing)
    assert "| SAT Random |" in (out / "table.md").read_text()
    table = (out / "table.md").read_text()
    assert "| pgd-sat |" in table and "SAT smallcnn-Adv.-S.Grad" in table
    assert "ε=8/255" in table and "AA ε=8/255" in table and " [" in table  # intervals
    assert all(set(run["distortions"]) == {"contrast", "low-pass", "high-pass"} for run in runs)
    for run in runs:  # each record names its per-image bits, and the run has its record
        assert (out / run["correct"]).is_file() and run["autoattack"]["8"] >= 0
        assert (out / run["run"] / "robustbench.json").is_file()
        assert run["n"]["autoattack"]["8"] == 12 and run["robust"]["8"] <= run["pgd"]["8"]
    claims = (out / "claims.md").read_text()
    assert "## SAT > Original + Uniform-Noise > Original:" in claims and "| AA | 8 |" in claims
    # The content test opens claims.md: each store's SAT row against its shuffled twin,
    # then against SAT without saliency.
    sections = [line for line in claims.splitlines() if line.startswith("## ")]
    content = "## the map's content matters: SAT(store) > SAT(shuffled): "
    assert sections[0].startswith(content + "sat > sat shuffled:"), sections[:3]
    assert sum(line.startswith(content) for line in sections) == 3  # masks, std and adv maps
    assert any("the map adds to sign noise: sat > SAT without saliency" in ln for ln in sections)
    assert not any("source" in line and "shuffled" in line for line in sections)
    twins = [r for r in runs if r["row"].endswith(" shuffled")]
    assert {r["group"] for r in twins} == {"content"} and len(twins) == 3
    for r in twins:
        pairing = json.loads((out / r["run"] / "pairing.json").read_text())
        assert pairing["pairing"] == "shuffled" and pairing["rows"] == 96
        assert r["saliency_share"] > 0.5  # progress over one epoch: most from the map
    no_saliency = next(r for r in runs if r["row"] == "SAT without saliency")
    assert no_saliency["saliency_share"] == 0.0 and no_saliency["perturbation"] == 1.0
    assert "## What SAT took from its maps" in table and "| sat shuffled | [0] |" in table
    assert "mean \\|s\\|" in (out / "saliency-quality.md").read_text()
    mean_abs = {p["label"]: p["mean_abs"] for p in quality["points"]}
    assert mean_abs["mask"] == 1.0 and 0 < mean_abs["std smoothgrad"] < 1

    before = {
        p: (out / p).read_bytes() for p in ("table.md", "results.json", "claims.md", "frontier.md")
    }
    trained.clear()
    rp.reproduce(config)
    assert trained == []  # everything was complete
    assert before == {p: (out / p).read_bytes() for p in before}


def test_unknown_preset_and_missing_data_root_are_one_line(tmp_path):
    with pytest.raises(SatpipeError, match="choose one of tiny, quick"):
        rp.ReproduceConfig(preset="imagenet")
    with pytest.raises(SatpipeError, match="--data-root"):
        rp.reproduce(rp.ReproduceConfig(preset="cifar100", out=str(tmp_path / "c")))
