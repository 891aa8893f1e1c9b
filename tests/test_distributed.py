"""Distributed training on CPU: 2 gloo processes running the real trainer (`train(config)`).

Each spawned rank wraps the trainer's `train_one_epoch` (a test hook from outside; the trainer
is unchanged) to record which dataset rows it saw and whether its weights equal rank 0's, then
saves its final weights. The parent checks: the ranks' rows are disjoint and cover every epoch,
and the weights (parameters) of both ranks and of rank 0's checkpoint are bit-identical.
BatchNorm running statistics are per rank under DDP; `sync_buffers` makes them agree.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from satpipe.train import distributed

from .test_loader import row_ids, write_index_pair

WORLD = 2
N_TRAIN = 16
EPOCHS = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, config: dict, out_dir: str) -> None:
    """One torchrun-like process: env vars as torchrun sets them, then the real trainer."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        SATPIPE_NO_PROGRESS="1",
    )
    torch.set_num_threads(1)
    import satpipe.train.trainer as trainer

    real_epoch = trainer.train_one_epoch
    record: dict = {"rows": [], "equal": [], "state": None}

    class Recording:
        """The rank's loader, noting the row index each image encodes."""

        def __init__(self, loader) -> None:
            self.loader, self.rows = loader, []
            record["rows"].append(self.rows)

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            for x, s, y in self.loader:
                self.rows += row_ids(x)
                yield x, s, y

    def recording_epoch(model, loader, *args, **kwargs):
        stats = real_epoch(model, Recording(loader), *args, **kwargs)
        record["equal"].append(params_equal_across_ranks(model))
        # BatchNorm statistics are per rank until averaged; averaged, everything agrees.
        probe = copy.deepcopy(model.module)
        distributed.sync_buffers(probe)
        record["synced"] = params_equal_across_ranks(probe, buffers=True)
        record["state"] = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        record["ddp"] = type(model).__name__
        return stats

    trainer.train_one_epoch = recording_epoch
    trainer.train(trainer.TrainConfig(**config))
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_on_disjoint_rows_to_identical_weights(tmp_path):
    data, sal = write_index_pair(tmp_path, n=N_TRAIN, rows_per_shard=4, n_test=4)
    run = tmp_path / "run"
    config = dict(
        variant="sat",
        data=data,
        saliency=sal,
        out=str(run),
        model="smallcnn",
        epochs=EPOCHS,
        batch_size=4,
        seed=3,
        device="cpu",
        augment=False,  # keep the encoded row index readable in every pixel
        loader_mode="streaming",
    )
    mp.start_processes(
        _rank_main,
        args=(_free_port(), config, str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    records = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert all(r["ddp"] == "DistributedDataParallel" for r in records)
    for epoch in range(EPOCHS):
        seen = [r["rows"][epoch] for r in records]
        assert len(seen[0]) == len(seen[1]) == N_TRAIN // WORLD
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))
    assert records[0]["rows"][0] != records[0]["rows"][1]  # a new order each epoch
    assert all(r["equal"] == [True] * EPOCHS for r in records)
    assert all(r["synced"] for r in records)
    state0, state1 = records[0]["state"], records[1]["state"]
    params = [k for k in state0 if "running_" not in k]
    assert state0.keys() == state1.keys() and len(params) > 10
    assert all(torch.equal(state0[k], state1[k]) for k in params)
    # Rank 0 alone wrote the checkpoint, and it holds the same weights.
    from satpipe.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "checkpoint.pt")["model"]["state_dict"]
    assert all(torch.equal(saved[k].cpu(), state0[k]) for k in state0)
    # Training moved the weights (identical-but-untrained would also be "equal").
    torch.manual_seed(3)
    from satpipe.train.models import create_model

    init = create_model("smallcnn", 5, 3).state_dict()
    assert any(not torch.equal(init[k], state0[k]) for k in init if init[k].is_floating_point())


def test_init_distributed_alone_is_rank_zero_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rank, world, local_rank, device = distributed.init_distributed("cpu")
    assert (rank, world, local_rank, device) == (0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert params_equal_across_ranks(model)
    distributed.cleanup()  # nothing to tear down: no error


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_satpipe_train_runs_unchanged_under_torchrun(tmp_path):
    """The real command line: `torchrun --nproc-per-node 2 -m satpipe train ...` on CPU."""
    data, sal = write_index_pair(tmp_path, n=N_TRAIN, rows_per_shard=4, n_test=4)
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    cmd = torchrun + [
        "--nproc-per-node",
        str(WORLD),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "-m",
        "satpipe",
        "train",
        "--variant",
        "pgd-sat",
        "--data",
        data,
        "--saliency",
        sal,
        "--model",
        "smallcnn",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "4",
        "--attack-steps",
        "1",
        "--device",
        "cpu",
        "--loader-mode",
        "streaming",
        "--out",
        str(run),
    ]
    env = dict(os.environ, SATPIPE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))  # rank 0 only
    from satpipe.train.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == EPOCHS - 1


# A check for the tests: rank 0's parameters everywhere, bit for bit.
def _state_tensors(module: torch.nn.Module, buffers: bool) -> list[torch.Tensor]:
    tensors = [p.detach() for p in module.parameters()]
    return tensors + ([b.detach() for b in module.buffers()] if buffers else [])


def params_equal_across_ranks(module: torch.nn.Module, buffers: bool = False) -> bool:
    """True when every parameter (and buffer, if `buffers`) equals rank 0's bit for bit.

    Broadcasts rank 0's tensors and compares locally; every rank gets the same answer (True
    when not distributed). Buffers are off by default: DDP keeps parameters in lockstep, but
    BatchNorm running statistics drift apart after each rank's last forward (see sync_buffers).
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return True
    tensors = _state_tensors(module, buffers)
    same = torch.ones(1, device=tensors[0].device if tensors else "cpu")
    for t in tensors:
        ref = t.clone()
        torch.distributed.broadcast(ref, src=0)
        if not torch.equal(ref, t):
            same.zero_()
    torch.distributed.all_reduce(same, op=torch.distributed.ReduceOp.MIN)
    return bool(same.item() == 1)
