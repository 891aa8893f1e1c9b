"""One run directory, one writer (issue 16): a second `satpipe train --out RUN` (or a
`--resume`) while another trains is refused with a line naming the holder; the lock of a
process that died, SIGKILL included, is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core import locks
from satpipe.core.errors import SatpipeError
from satpipe.train.checkpoint import load_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.runlock import LOCK_NAME, RunLock
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset

# A process that takes the lock of argv[1], says so, and holds it until it is killed.
HOLDER = """
import sys, time
from satpipe.train.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""

# Processes that race for one lock once a start file appears; each prints what it got.
RACER = """
import os, sys, time
from satpipe.core.errors import SatpipeError
from satpipe.train.runlock import RunLock
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    RunLock(sys.argv[1]).acquire()
    print("got", flush=True)
    time.sleep(1.5)
except SatpipeError:
    print("refused", flush=True)
"""


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    return write_tiny_dataset(root / "d.zarr", n_train=8, n_test=4, size=8, rows_per_shard=8)


def _config(data: str, run: Path, **kw) -> TrainConfig:
    base = dict(variant="original", data=data, out=str(run), model="smallcnn", epochs=1,
                batch_size=8, augment=False, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_a_second_trainer_is_refused_naming_the_holder_then_takes_over_when_it_dies(
    data, tmp_path, capsys
):
    run = tmp_path / "run"
    train(_config(data, run))  # a finished run to resume
    assert not (run / LOCK_NAME).exists()  # released at the end
    holder = _python(HOLDER, str(run))
    try:
        assert holder.stdout.readline().strip() == "held"
        who = f"pid {holder.pid} on {socket.gethostname()}"
        for config in (_config(data, run, overwrite=True), _config(data, run, resume=True,
                                                                    epochs=2)):  # fmt: skip
            with pytest.raises(SatpipeError) as err:
                train(config)
            text = str(err.value)
            assert "\n" not in text and who in text and "is writing this run" in text, text
        result = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "2"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and who in lines[0], result.output
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 0  # nobody wrote
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays
        holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    capsys.readouterr()
    train(_config(data, run, resume=True, epochs=2))
    assert f"took over the lock of a run whose writer is no longer running (pid {holder.pid}" in (
        capsys.readouterr().err
    )
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert not (run / LOCK_NAME).exists()


def test_racing_processes_exactly_one_wins(tmp_path):
    run, go = tmp_path / "run", tmp_path / "go"
    racers = [_python(RACER, str(run), str(go)) for _ in range(4)]
    time.sleep(0.5)  # let them all start waiting
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["got", "refused", "refused", "refused"], outcomes


def test_one_process_cannot_hold_a_run_twice(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(SatpipeError, match=f"pid {os.getpid()} on"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held and (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def _finished_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_file(run: Path, pid: int, host: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))


def test_a_stale_lock_file_is_taken_over(tmp_path):
    _lock_file(tmp_path, _finished_pid(), socket.gethostname())
    with RunLock(tmp_path) as lock:  # nobody holds its flock: its writer is gone
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "_flock", lambda fd: None)  # a filesystem without flock
    host = socket.gethostname()
    _lock_file(tmp_path, os.getpid(), host)  # alive, here
    with pytest.raises(SatpipeError, match=f"pid {os.getpid()} on {host}"):
        RunLock(tmp_path).acquire()
    _lock_file(tmp_path, 12345, "elsewhere")  # another host: cannot tell
    with pytest.raises(SatpipeError, match="delete the lock file once it is gone"):
        RunLock(tmp_path).acquire()
    _lock_file(tmp_path, _finished_pid(), host)  # dead, here
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
