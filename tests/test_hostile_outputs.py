"""Hostile cases of what satpipe writes: `--overwrite` deletes only what satpipe made, and one
writer per store. Each case ends in one line, exit != 0, no user file touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.outputs import is_run_dir, lock_path, prepare_output, store_lock
from satpipe.data.publish import publish_store
from satpipe.data.shapes import make_shapes
from satpipe.pipeline.config import SaliencyConfig, ScoreConfig
from satpipe.pipeline.quality import score_store
from satpipe.pipeline.runner import compute_saliency
from satpipe.train.config import TrainConfig
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset

SHAPES = dict(n_train=8, n_test=4, size=16, classes=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_tiny_dataset(tmp_path_factory.mktemp("d") / "d.zarr", n_train=16, n_test=8)


@pytest.fixture
def victim(tmp_path) -> Path:
    """An ordinary directory of a user's files."""
    d = tmp_path / "victim"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("four years of work")
    (d / "sub" / "notes.md").write_text("notes")
    return d


def _intact(d: Path) -> None:
    assert (d / "thesis.txt").read_text() == "four years of work"
    assert (d / "sub" / "notes.md").read_text() == "notes"


def _one_line_failure(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("satpipe: error: "), result.output
    return lines[0]


def _saliency(data: str, out: str, **kw) -> SaliencyConfig:
    return SaliencyConfig(method="random", data=data, out=out, device="cpu", **kw)


def test_overwrite_refuses_a_directory_of_user_files(victim, data):
    line = _one_line_failure(
        ["data", "make", "shapes", "--out", str(victim), "--overwrite", "--n-train", "8",
         "--n-test", "4", "--size", "16"]
    )  # fmt: skip
    assert "thesis.txt" in line and "not a satpipe dataset store" in line
    with pytest.raises(SatpipeError, match="not a satpipe saliency store"):
        compute_saliency(_saliency(data, str(victim), overwrite=True))
    _intact(victim)


def test_overwrite_never_removes_the_input(data):
    before = sorted(p.name for p in Path(data).iterdir())
    with pytest.raises(SatpipeError, match="is an input of this command"):
        compute_saliency(_saliency(data, data, overwrite=True))
    # A folder holding the input is refused too: removing it would remove the input.
    with pytest.raises(SatpipeError, match="holds an input of this command"):
        compute_saliency(_saliency(data, str(Path(data).parent), overwrite=True))
    assert sorted(p.name for p in Path(data).iterdir()) == before
    assert zarr.open_group(data, mode="r").attrs["satpipe"]["complete"] is True


@pytest.mark.parametrize("suffix", ["::x", "::new.zarr"])
def test_chained_urls_are_refused_in_one_line(victim, data, suffix, monkeypatch):
    monkeypatch.chdir(victim.parent)
    out = f"{victim.name}{suffix}"
    line = _one_line_failure(
        ["saliency", "--method", "random", "--data", data, "--out", out, "--overwrite"]
    )
    assert "'::'" in line
    with pytest.raises(SatpipeError, match="'::'"):
        make_shapes(out=out, overwrite=True, **SHAPES)
    with pytest.raises(SatpipeError, match="'::'"):
        publish_store(data, out, overwrite=True)
    _intact(victim)


def test_a_symlink_is_never_followed_by_overwrite(tmp_path, victim):
    link = tmp_path / "link.zarr"
    link.symlink_to(victim)
    with pytest.raises(SatpipeError, match="symbolic link"):
        make_shapes(out=str(link), overwrite=True, **SHAPES)
    _intact(victim)
    assert link.is_symlink()


def test_a_store_of_another_kind_is_not_replaced(tmp_path, data):
    sal = str(tmp_path / "s.zarr")
    compute_saliency(_saliency(data, sal))
    with pytest.raises(SatpipeError, match="holds a satpipe saliency store, not a satpipe dataset"):
        make_shapes(out=sal, overwrite=True, **SHAPES)
    # The expected kind is replaced, and only with --overwrite.
    with pytest.raises(SatpipeError, match="pass --overwrite"):
        compute_saliency(_saliency(data, sal, seed=1))
    compute_saliency(_saliency(data, sal, seed=1, overwrite=True))
    assert zarr.open_group(sal, mode="r").attrs["satpipe"]["seed"] == 1
    assert not lock_path(sal).exists()  # released


def test_publish_overwrite_replaces_only_a_store_of_the_source_kind(tmp_path, data, victim):
    with pytest.raises(SatpipeError, match="thesis.txt"):
        publish_store(data, str(victim), overwrite=True)
    _intact(victim)
    dst = str(tmp_path / "copy.zarr")
    publish_store(data, dst)
    publish_store(data, dst, overwrite=True)
    with pytest.raises(SatpipeError, match="is an input"):
        prepare_output(data, "dataset", True, inputs=(data,))


def test_empty_and_unfinished_outputs_may_be_replaced(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert prepare_output(str(empty), "dataset", True)
    unfinished = tmp_path / "u.zarr"
    zarr.create_group(str(unfinished), zarr_format=3).create_array("a", shape=(2,), dtype="u1")
    assert prepare_output(str(unfinished), "saliency", True)  # only zarr.json files: ours
    assert not unfinished.exists()


def test_train_out_refuses_a_directory_of_user_files(victim, data, tmp_path):
    config = TrainConfig(variant="original", data=data, out=str(victim), model="smallcnn",
                         epochs=1, batch_size=8, augment=False, device="cpu")  # fmt: skip
    with pytest.raises(SatpipeError, match="is not a satpipe run"):
        train(config)
    _intact(victim)
    assert not (victim / "train.lock").exists()
    line = _one_line_failure(
        ["train", "--variant", "original", "--data", data, "--out", str(victim), "--epochs", "1"]
    )
    assert "thesis.txt" in line
    # A lock left by a refused run is no obstacle; a real run's directory is a run.
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.lock").write_text("{}")
    assert is_run_dir(tmp_path / "r") and not is_run_dir(victim)


# ---- one writer per store ------------------------------------------------------------------

_HOLD = """
import sys
from satpipe.data.outputs import store_lock
store_lock(sys.argv[1]).__enter__()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_store_being_written_is_refused_to_every_writer_then_taken_over(tmp_path, data, capsys):
    out = str(tmp_path / "s.zarr")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        who = f"pid {holder.pid}"
        for write in (
            lambda: compute_saliency(_saliency(data, out, overwrite=True)),
            lambda: make_shapes(out=out, overwrite=True, **SHAPES),
            lambda: publish_store(data, out, overwrite=True),
            lambda: score_store(ScoreConfig(saliency=out)),  # scoring writes the provenance
        ):
            with pytest.raises(SatpipeError, match="another satpipe process is writing") as err:
                write()
            assert who in str(err.value) and "\n" not in str(err.value)
        line = _one_line_failure(["saliency", "--method", "random", "--data", data, "--out", out])
        assert who in line
        assert not Path(out).exists()  # nobody wrote
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    compute_saliency(_saliency(data, out))  # the dead holder's lock is taken over
    assert "took over the lock" in capsys.readouterr().err
    assert not lock_path(out).exists()


def test_store_lock_racing_in_one_process_one_wins(tmp_path):
    out = str(tmp_path / "x.zarr")
    with store_lock(out), pytest.raises(SatpipeError, match="is writing this store"):
        store_lock(out).__enter__()


def test_model_import_overwrite_replaces_only_a_checkpoint(tmp_path):
    import torch

    from satpipe.train.config import ModelImportConfig
    from satpipe.train.model_import import import_model
    from satpipe.train.models import create_model

    weights = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", 4, 3).state_dict(), weights)
    mine = tmp_path / "thesis.pt"
    mine.write_text("not a checkpoint")

    def config(out, **kw):
        return ModelImportConfig(weights=str(weights), model="smallcnn", num_classes=4,
                                 out=str(out), **kw)  # fmt: skip

    with pytest.raises(SatpipeError, match="is not a satpipe checkpoint"):
        import_model(config(mine, overwrite=True))
    assert mine.read_text() == "not a checkpoint"
    with pytest.raises(SatpipeError, match="is an input"):
        import_model(config(weights, overwrite=True))
    import_model(config(tmp_path / "m.pt"))
    import_model(config(tmp_path / "m.pt", overwrite=True))  # a checkpoint: replaced


def test_data_import_refuses_before_its_work(tmp_path, victim):
    from satpipe.data.importers.common import check_output

    with pytest.raises(SatpipeError, match="thesis.txt"):
        check_output(str(victim), True, None)
    _intact(victim)
