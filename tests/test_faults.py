"""Faults (issue "Share stores across teams"): each one is a test.

Processes are killed with SIGKILL (no clean-up runs), files are corrupted on disk, S3 goes
away mid-write; the tests check that satpipe resumes to the same bytes, names what is broken,
and refuses what it must not trust.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from satpipe.core.errors import SatpipeError
from satpipe.train.checkpoint import load_checkpoint

from .conftest import write_tiny_dataset
from .test_s3 import same_saliency, tiny_checkpoint

# --------------------------------------------------------------------------------------------
# A checkpoint that is an arbitrary pickle


class _Payload:
    """Unpickling this opens (so creates) `path`: the stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_arbitrary_pickle_checkpoint_is_refused_and_nothing_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"satpipe": {"kind": "checkpoint", "format": 1}, "model": _Payload(str(marker))}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(SatpipeError, match="not a satpipe checkpoint") as err:
        load_checkpoint(evil)
    assert "\n" not in str(err.value) and str(evil) in str(err.value)
    assert not marker.exists(), "loading the checkpoint executed code"
    # The payload is live: an unsafe load would have run it (so the test above can fail).
    if writer == "torch.save":
        torch.load(evil, weights_only=False)
    else:
        with open(evil, "rb") as f:
            pickle.load(f)  # the unsafe load, as the oracle
    assert marker.exists()
    os.unlink(marker)


# --------------------------------------------------------------------------------------------
# `satpipe saliency` killed, or run twice at once


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "satpipe", *args]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Same intra-op threads as this process, so floating-point sums run in the same order.
    env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), SATPIPE_NO_PROGRESS="1")
    env.update(extra or {})
    return env


def _saliency_args(data: str, out: str, ckpt: str) -> list[str]:
    return [
        "saliency", "--method", "gradient", "--model", ckpt, "--data", data, "--out", out,
        "--batch-size", "2", "--device", "cpu",
    ]  # fmt: skip


def _reference(data: str, out: str, ckpt: str) -> str:
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    config = SaliencyConfig(
        method="gradient", data=data, out=out, model=ckpt, batch_size=2, device="cpu"
    )
    return compute_saliency(config)


def _objects(root: Path) -> dict[str, bytes]:
    """Every object of a local store but the root metadata (it holds `created`)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / "zarr.json"
    }


def _done_files(out: Path) -> list[Path]:
    return list((out / "train" / "done" / "c").glob("*")) if out.exists() else []


@pytest.fixture
def saliency_inputs(tmp_path):
    """(dataset with 12 shards of 2 rows, source checkpoint, reference store)."""
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=24, n_test=4, size=8, rows_per_shard=2)
    ckpt = tiny_checkpoint(tmp_path / "source.pt")
    ref = _reference(data, str(tmp_path / "ref.zarr"), ckpt)
    return data, ckpt, Path(ref)


@pytest.mark.slow
def test_kill_9_saliency_then_rerun_is_byte_identical(tmp_path, saliency_inputs):
    data, ckpt, ref = saliency_inputs
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen(
        _cli(*_saliency_args(data, str(out), ckpt)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not _done_files(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    partial = zarr.open_group(str(out), mode="r")
    done = np.asarray(partial["train/done"][:])
    assert 1 <= done.sum() < len(done), "the kill did not land mid-run"
    assert partial.attrs["satpipe"]["complete"] is False
    maps, want = partial["train/saliency"], zarr.open_group(str(ref), mode="r")["train/saliency"]
    rows = maps.shards[0]
    for k in np.flatnonzero(done):  # a shard marked done holds exactly its final bytes
        shard = slice(k * rows, (k + 1) * rows)
        assert maps[shard].tobytes() == want[shard].tobytes(), f"shard {k} marked done early"

    rerun = subprocess.run(
        _cli(*_saliency_args(data, str(out), ckpt)), env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.strip().endswith(str(out))
    same_saliency(str(out), str(ref))
    found, expected = _objects(out), _objects(ref)
    leftovers = [k for k in found if k.endswith(".partial")]
    assert not leftovers, f"temporary files left in the store: {leftovers}"
    assert found == expected


@pytest.mark.slow
def test_two_saliency_processes_on_one_output(tmp_path, saliency_inputs):
    data, ckpt, ref = saliency_inputs
    out = tmp_path / "out.zarr"
    procs = [
        subprocess.Popen(
            _cli(*_saliency_args(data, str(out), ckpt)),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    # One writer per store: one wins; the other is refused naming the holder (or, started
    # after the winner finished, finds the store complete).
    assert 0 in codes, [err[-1500:] for _, err in results]
    for code, (_, err) in zip(codes, results, strict=True):
        if code:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "is writing this saliency store" in lines[0], err
    assert zarr.open_group(str(out), mode="r").attrs["satpipe"]["complete"] is True
    same_saliency(str(out), str(ref))
    assert _objects(out) == _objects(ref)


def test_racing_creators_of_one_saliency_store_both_succeed(tmp_path):
    """The race behind two processes on one output, made likely: creators released together."""
    import threading

    from satpipe.data.saliency_store import open_saliency_for_write, saliency_attrs

    attrs = saliency_attrs(
        method="mask", params={}, normalization="signed-maxabs", seed=0,
        source_model={"arch": None, "checkpoint_sha256": None, "variant": None},
        dataset={"uri": "d.zarr", "fingerprint": "sha256:0"}, splits={"train": (8, 4, 4, 1)},
    )  # fmt: skip
    errors: list[str] = []
    for trial in range(10):
        uri = str(tmp_path / f"{trial}.zarr")
        barrier = threading.Barrier(2)

        def create(uri=uri, barrier=barrier):
            barrier.wait()
            try:
                open_saliency_for_write(uri, attrs, {"train": 2})
            except Exception as exc:  # any failure of either creator is the bug
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]


# --------------------------------------------------------------------------------------------
# A corrupted chunk file


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_corrupted_chunk_is_named_by_verify_and_refused_by_the_trainer(tmp_path):
    from satpipe.data.inspect import verify_store
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train

    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=16, n_test=4, size=8, rows_per_shard=4)
    sal = compute_saliency(
        SaliencyConfig(method="mask", data=data, out=str(tmp_path / "s.zarr"), device="cpu")
    )
    assert verify_store(sal, data=data) == []
    shard = Path(sal) / "train" / "saliency" / "c" / "2" / "0" / "0" / "0"
    _flip_byte(shard)

    problems = verify_store(sal, data=data)
    assert problems, "verify missed a corrupted shard"
    # Shard 2 holds rows 8:12; its object key is train/saliency/c/2/0/0/0.
    named = [p for p in problems if "train/saliency" in p]
    assert named and all("c/2/0/0/0" in p or "rows 8:12" in p for p in named), problems

    config = TrainConfig(
        variant="sat", data=data, saliency=sal, out=str(tmp_path / "run"), model="smallcnn",
        epochs=1, batch_size=8, device="cpu",
    )  # fmt: skip
    with pytest.raises(SatpipeError) as err:
        train(config)
    assert "\n" not in str(err.value) and str(sal) in str(err.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------
# `satpipe train` killed mid-epoch, then --resume


def _epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_kill_9_train_mid_epoch_then_resume_loses_only_that_epoch(tmp_path):
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
    from satpipe.train.checkpoint import load_checkpoint
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train

    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=48, n_test=8, size=8, rows_per_shard=8)
    sal = compute_saliency(
        SaliencyConfig(method="mask", data=data, out=str(tmp_path / "s.zarr"), device="cpu")
    )
    common = dict(variant="sat", data=data, saliency=sal, model="smallcnn", epochs=3,
                  batch_size=4, device="cpu", loader_mode="resident")  # fmt: skip
    run = tmp_path / "run"
    args = ["train", "--out", str(run)]
    for key, value in common.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not _epochs(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # epoch 0 is saved; epoch 1 is in flight
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    finished = _epochs(run)
    saved = load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert finished and finished[-1] < 2, "the kill did not land mid-run"
    assert saved == finished[-1]  # the checkpoint holds every finished epoch

    resumed = subprocess.run(_cli("train", "--resume", "--out", str(run)), env=_env(),
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs(run) == [0, 1, 2]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2

    # Bit for bit: the same weights as a run that was never interrupted.
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **common))
    got = load_checkpoint(run / "checkpoint.pt")["model"]["state_dict"]
    want = load_checkpoint(straight / "checkpoint.pt")["model"]["state_dict"]
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "resume changed the weights"


# --------------------------------------------------------------------------------------------
# S3 stopped mid-write


@pytest.mark.slow
def test_s3_stopped_mid_write_then_rerun_resumes(s3, tmp_path, saliency_inputs):
    import s3fs

    data, ckpt, ref = saliency_inputs
    out = s3.url("outage.zarr")
    fs = s3fs.S3FileSystem(**s3.storage_options, skip_instance_cache=True)
    done_dir = out[len("s3://") :] + "/train/done/c"
    args = _cli(*_saliency_args(data, out, ckpt), *s3.cli_options)
    proc = subprocess.Popen(args, env=s3.env | _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists(done_dir) and fs.ls(done_dir):
            break
        time.sleep(0.01)
    with s3.stopped():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("satpipe: error: "), stderr[-2000:]
    assert out in lines[0] and "storage unreachable" in lines[0]

    fs.invalidate_cache()
    assert 1 <= len(fs.ls(done_dir)) < 12, "the outage did not land mid-run"
    rerun = subprocess.run(args, env=s3.env | _env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    same_saliency(out, str(ref), s3.storage_options)
