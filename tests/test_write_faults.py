"""Disk full and read-only targets (issue 16): ENOSPC or EACCES while writing a saliency shard,
a dataset import or a checkpoint ends in one line naming the path and a non-zero exit, leaves
the previous checkpoint loadable and no shard marked done that was not written, and a rerun
after the fault is gone resumes.

Faults are injected at the write itself: zarr's local store `set` (what every chunk, shard
and metadata write goes through), and for checkpoints a temp file on /dev/full (the kernel's
own ENOSPC, through torch.save) or a refused `os.replace`.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import open_dataset
from satpipe.data.importers import import_dataset
from satpipe.data.saliency_store import open_saliency
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
from satpipe.train import checkpoint as checkpoint_module
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig, run_config
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset

FAULTS = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES}


def fail_store_writes(monkeypatch, fragment: str, code: int) -> list[str]:
    """Make zarr's LocalStore refuse every write whose key contains `fragment` with OSError
    `code`, as a full or read-only disk would; returns the keys refused."""
    refused: list[str] = []
    real = zarr.storage.LocalStore.set

    async def set_(self, key, value):
        if fragment in key:
            refused.append(key)
            raise OSError(code, os.strerror(code), str(self.root / key))
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    return refused


def _one_line(err, *parts: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


# --------------------------------------------------------------------------------------------
# A saliency shard


@pytest.fixture(scope="module")
def six_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    data = write_tiny_dataset(root / "d.zarr", n_train=24, n_test=4, size=8, rows_per_shard=4)
    ref = compute_saliency(
        SaliencyConfig(method="mask", data=data, out=str(root / "ref.zarr"), device="cpu")
    )
    return data, zarr.open_group(ref, mode="r")["train/saliency"][:]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("target", ["maps", "done marker"])
def test_saliency_shard_write_fault_then_rerun_resumes(six_shards, tmp_path, monkeypatch,
                                                        fault, target):  # fmt: skip
    data, want = six_shards
    out = str(tmp_path / "s.zarr")
    config = SaliencyConfig(method="mask", data=data, out=out, device="cpu")
    fragment = "train/saliency/c/3/" if target == "maps" else "train/done/c/3"
    refused = fail_store_writes(monkeypatch, fragment, FAULTS[fault])
    with pytest.raises(SatpipeError) as err:
        compute_saliency(config)
    what = "train/saliency rows 12:16 (shard 3)" if target == "maps" else "done marker of shard 3"
    _one_line(err, out, what, os.strerror(FAULTS[fault]), refused[0])

    group = zarr.open_group(out, mode="r")
    assert group["train/done"][:].tolist() == [1, 1, 1, 0, 0, 0]
    assert group.attrs["satpipe"]["complete"] is False
    maps = group["train/saliency"]
    for k in range(3):  # every shard marked done holds its final bytes
        assert maps[4 * k : 4 * k + 4].tobytes() == want[4 * k : 4 * k + 4].tobytes()

    monkeypatch.undo()  # space freed
    assert compute_saliency(config) == out
    done = open_saliency(out)
    assert done.complete and done.split("train")[:].tobytes() == want.tobytes()


def test_saliency_cli_on_a_full_disk_is_one_line_and_exit_1(six_shards, tmp_path, monkeypatch):
    data, _ = six_shards
    out = str(tmp_path / "s.zarr")
    fail_store_writes(monkeypatch, "train/saliency/c/0/", errno.ENOSPC)
    result = CliRunner().invoke(app, ["saliency", "--method", "mask", "--data", data, "--out", out])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"satpipe: error: {out}: cannot write train/saliency rows 0:4")
    assert "No space left on device" in lines[0]


# --------------------------------------------------------------------------------------------
# A dataset import


def _cifar10(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 6), ("test_batch", 3)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (d / name).write_bytes(pickle.dumps(batch))
    return d


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fragment, what", [
    ("train/images/c/", "train/images rows 0:6"),
    ("zarr.json", "the store's root"),
])  # fmt: skip
def test_import_write_fault_then_rerun_resumes(tmp_path, monkeypatch, fault, fragment, what):
    src = _cifar10(tmp_path)
    out = str(tmp_path / "c.zarr")
    refused = fail_store_writes(monkeypatch, fragment, FAULTS[fault])
    with pytest.raises(SatpipeError) as err:
        import_dataset("cifar10", src, out)
    _one_line(err, out, f"cannot write {what}", os.strerror(FAULTS[fault]), refused[0])
    if fragment == "zarr.json":
        assert not Path(out).exists()  # nothing left behind
    else:  # never marked complete
        assert not open_dataset(out, require_complete=False).complete
        with pytest.raises(SatpipeError, match="incomplete"):
            open_dataset(out)

    monkeypatch.undo()
    # The same command again (no --overwrite): the unfinished store is replaced.
    view = open_dataset(import_dataset("cifar10", src, out))
    assert view.complete and len(view.split("train")) == 6


def test_import_cli_on_a_read_only_target_is_one_line_and_exit_1(tmp_path, monkeypatch):
    src = _cifar10(tmp_path)
    out = str(tmp_path / "c.zarr")
    fail_store_writes(monkeypatch, "train/labels/c/", errno.EACCES)
    result = CliRunner().invoke(app, ["data", "import", "cifar10", str(src), "--out", out])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert f"{out}: cannot write train/labels rows 0:6" in lines[0]
    assert "Permission denied" in lines[0]


# --------------------------------------------------------------------------------------------
# A checkpoint


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    return write_tiny_dataset(root / "c.zarr", n_train=16, n_test=8, size=8, rows_per_shard=8)


def _config(data: str, run: Path, **kw) -> TrainConfig:
    base = dict(variant="original", data=data, out=str(run), model="smallcnn", epochs=2,
                batch_size=8, augment=False, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


class _FillsUp:
    """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _on_second_save(monkeypatch, fault: str) -> None:
    """The second checkpoint (after epoch 1) fails: ENOSPC from the kernel (its temp file is
    /dev/full), ENOSPC part-way through the stream (what a real full disk does to torch's zip
    writer: its close then raises a RuntimeError), or EACCES when it replaces the first."""
    calls = {"mkstemp": 0, "replace": 0, "fdopen": 0}
    real_mkstemp, real_replace, real_fdopen = tempfile.mkstemp, os.replace, os.fdopen

    def fdopen(fd, *args, **kwargs):
        calls["fdopen"] += 1
        f = real_fdopen(fd, *args, **kwargs)
        return _FillsUp(f, 4096) if calls["fdopen"] == 2 else f

    def mkstemp(*args, **kwargs):
        calls["mkstemp"] += 1
        fd, name = real_mkstemp(*args, **kwargs)
        if calls["mkstemp"] == 2:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("checkpoint.pt"):
            calls["replace"] += 1
            if calls["replace"] == 2:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    if fault == "ENOSPC":
        monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)
    elif fault == "ENOSPC mid-stream":
        monkeypatch.setattr(checkpoint_module.os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(checkpoint_module.os, "replace", replace)


def _epochs(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fault", [*FAULTS, "ENOSPC mid-stream"])
def test_checkpoint_write_fault_keeps_the_previous_one_and_resume_continues(
    colour, tmp_path, monkeypatch, fault
):
    run = tmp_path / "run"
    _on_second_save(monkeypatch, fault)
    with pytest.raises(SatpipeError) as err:
        train(_config(colour, run))
    code = FAULTS[fault.split()[0]]
    _one_line(err, str(run / "checkpoint.pt"), "cannot write checkpoint", os.strerror(code),
              "the previous checkpoint is unchanged")  # fmt: skip
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 0  # still loadable
    assert _epochs(run) == [0]  # no metrics line for the epoch that was not saved
    assert not list(run.glob(".checkpoint.pt.*")), "temporary checkpoint left behind"
    assert not (run / "train.lock").exists()

    monkeypatch.undo()
    train(run_config(run, resume=True))
    assert _epochs(run) == [0, 1] and load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_train_cli_on_a_full_disk_is_one_line_and_exit_1(colour, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _on_second_save(monkeypatch, "EACCES")
    args = ["train", "--variant", "original", "--data", colour, "--out", str(run), "--model",
            "smallcnn", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("satpipe: error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert f"{run / 'checkpoint.pt'}: cannot write checkpoint" in errors[0]
    assert not [ln for ln in result.output.splitlines() if "Traceback" in ln]


def test_an_unwritable_run_directory_is_one_line(colour, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "config.json":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SatpipeError) as err:
        train(_config(colour, run, epochs=1))
    _one_line(err, str(run / "config.json"), "Read-only file system")
    assert not (run / "checkpoint.pt").exists()
