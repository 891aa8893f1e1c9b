"""The CUDA paths on a real GPU (`pytest -m gpu`; all skipped without CUDA).

`scripts/gpu-check.sh` runs these first on a lent GPU. What each checks:

- the trainer: bf16 autocast in every forward pass, channels_last batches and weights, CUDA
  step generators, no host sync inside a step (torch's sync debug mode), a finite loss;
- resume with CUDA RNG state: an interrupted deterministic run resumed on the GPU ends with the
  bytes of an uninterrupted one; a checkpoint holding 8 GPUs' states resumes on this one;
- saliency under bf16 against fp32 on the GPU: the tolerance behind `amp_safe` (cosine
  similarity >= 0.98 per map and mean absolute difference <= 0.03 after signed-maxabs
  normalisation, as tests/test_methods.py states it for CPU bf16);
- saliency stores on the GPU: close to the CPU's maps, and with --deterministic the same
  bytes twice; through dask-cuda's LocalCUDACluster the same bytes as in-process;
- NCCL DDP on 2 processes (torchrun) when 2 GPUs exist;
- AutoAttack, the overfitting guard and the quality scores on CUDA (the sanity check's step 0
  recomputes the store's bf16 maps under bf16: rank correlation >= 0.95).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from satpipe.data.loader import make_loader
from satpipe.data.saliency_store import open_saliency
from satpipe.pipeline.methods import get_method
from satpipe.pipeline.normalize import normalize
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
from satpipe.train import epoch, rng, trainer
from satpipe.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from satpipe.train.config import TrainConfig
from satpipe.train.eval.evaluate import evaluate
from satpipe.train.models import create_model
from satpipe.train.variants import VARIANTS
from tests.conftest import write_tiny_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.fixture(autouse=True)
def numerics():
    """--deterministic is process-wide: leave torch's flags as each test found them."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 16x16 dataset (64 train, 32 test rows), a ResNet-10 source and its gradient store
    made on the GPU (bf16: gradient is amp_safe)."""
    root = tmp_path_factory.mktemp("gpu")
    data = write_tiny_dataset(root / "d.zarr", n_train=64, n_test=32, size=16, rows_per_shard=16)
    torch.manual_seed(0)
    ckpt = root / "src.pt"
    save_checkpoint(ckpt, {"model": model_record(create_model("resnet10", 4), 4, 3)})
    sal = compute_saliency(
        SaliencyConfig(method="gradient", data=data, model=str(ckpt), out=str(root / "g.zarr"),
                       device="cuda")
    )  # fmt: skip
    return {"root": root, "data": data, "ckpt": str(ckpt), "sal": sal}


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(path) / "checkpoint.pt")["model"]["state_dict"]


# --------------------------------------------------------------------------------------------
# Trainer


def test_a_cuda_step_uses_autocast_channels_last_and_device_generators(work, monkeypatch):
    config = TrainConfig(variant="pgd-sat", data=work["data"], saliency=work["sal"],
                         out=str(work["root"] / "unused"), model="resnet10", batch_size=16,
                         attack_steps=2, p_mix=0.5, device="cuda")  # fmt: skip
    loader = make_loader(work["data"], "train", work["sal"], batch_size=16, device="cuda",
                         augment=True, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = create_model("resnet10", 4).cuda().to(memory_format=torch.channels_last)
    assert model.fc.weight.is_cuda
    assert next(model.features.parameters()).is_contiguous(memory_format=torch.channels_last)
    seen = []

    def note(module, args):
        layout = args[0].is_contiguous(memory_format=torch.channels_last)
        seen.append((torch.is_autocast_enabled("cuda"), layout))

    model.register_forward_pre_hook(note)
    generators = []
    real = epoch.step_generator
    monkeypatch.setattr(
        epoch, "step_generator",
        lambda *a: generators.append(real(*a)) or generators[-1],
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = epoch.train_one_epoch(
        model, loader, optimizer, VARIANTS.get("pgd-sat"), config.variant_config(), 0,
        amp=True, show_progress=False,
    )  # fmt: skip
    assert seen and set(seen) == {(True, True)}
    assert generators and {g.device.type for g in generators} == {"cuda"}
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["images"] == 64
    # No host sync inside a step: sync debug mode raises on the first one.
    x, s, y = next(iter(loader))
    variant, vcfg = VARIANTS.get("pgd-sat"), config.variant_config()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            gen = rng.step_generator(0, 0, step, 0, torch.device("cuda"))
            variant.train_batch(
                model, optimizer, x, s, y, epoch=0, cfg=vcfg, generator=gen,
                attack_model=model, autocast=torch.autocast("cuda", dtype=torch.bfloat16),
                state=variant.begin_epoch(),
            )  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_resume_on_cuda_gives_the_bytes_of_an_uninterrupted_run(work, tmp_path):
    """With --deterministic, on one GPU: interrupted after epoch 1 and resumed == straight."""
    common = dict(variant="pgd-sat", data=work["data"], saliency=work["sal"], model="resnet10",
                  batch_size=16, attack_steps=2, device="cuda", deterministic=True)  # fmt: skip
    straight = trainer.train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **common))
    trainer.train(TrainConfig(out=str(tmp_path / "b"), epochs=1, **common))
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert len(state["rng"]["cuda"]) == torch.cuda.device_count()
    resumed = trainer.train(TrainConfig(out=str(tmp_path / "b"), epochs=2, resume=True, **common))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rng_states_of_8_gpus_resume_on_this_one():
    torch.cuda.init()
    state = rng.rng_state()
    mine = torch.cuda.get_rng_state(0)
    state["cuda"] = [mine] + [torch.cuda.get_rng_state(0)] * 7  # saved on an 8-GPU machine
    torch.cuda.manual_seed(123)  # moves this GPU's generator
    rng.set_rng_state(state, torch.device("cuda", 0))
    assert torch.equal(torch.cuda.get_rng_state(0), mine)


def test_the_guard_runs_on_cuda(work, tmp_path):
    run = trainer.train(
        TrainConfig(variant="pgd", data=work["data"], model="resnet10", out=str(tmp_path / "g"),
                    epochs=1, batch_size=16, attack_steps=1, guard_rows=16, device="cuda")
    )  # fmt: skip
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["guard_acc"] <= 1.0 and record["guard_seconds"] > 0


# --------------------------------------------------------------------------------------------
# Saliency


@pytest.mark.parametrize("name", ["gradient", "smoothgrad", "gbp", "gradcam++"])
def test_bf16_saliency_agrees_with_fp32_on_cuda(name):
    torch.manual_seed(0)
    net = create_model("resnet10", 10).cuda().eval().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((32, 3, 32, 32), generator=g).cuda()
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), generator=g).cuda()
    method = get_method(name, **({"samples": 8} if name == "smoothgrad" else {}))
    method = method.resolve(net, (3, 32, 32))

    def maps(amp):
        gen = torch.Generator(device="cuda").manual_seed(2)
        return normalize(method(net, x, y, generator=gen, amp=amp))

    full, half = maps(False), maps(True)
    assert not torch.equal(full, half)  # autocast really ran
    cos = F.cosine_similarity(full.flatten(1), half.flatten(1))
    assert cos.min() >= 0.98 and (full - half).abs().mean() <= 0.03


def test_cuda_stores_are_close_to_cpu_and_deterministic_ones_repeat(work, tmp_path):
    def store(name, **kw):
        out = compute_saliency(
            SaliencyConfig(method="smoothgrad", params={"samples": 4}, data=work["data"],
                           model=work["ckpt"], out=str(tmp_path / name), batch_size=16, **kw)
        )  # fmt: skip
        return open_saliency(out)

    cpu = store("cpu.zarr", device="cpu")
    gpu = store("gpu.zarr", device="cuda", amp=False)
    assert gpu.attrs["compute"]["batch_size"] == 16
    a = torch.from_numpy(cpu.split("train").saliency[:].astype("float32"))
    b = torch.from_numpy(gpu.split("train").saliency[:].astype("float32"))
    # Different noise streams (CPU vs CUDA generators): close in the mean, not equal.
    assert (a.sign() == b.sign()).float().mean() > 0.5
    d1 = store("det1.zarr", device="cuda", deterministic=True)
    d2 = store("det2.zarr", device="cuda", deterministic=True)
    assert d1.attrs["compute"]["deterministic"] is True
    assert (d1.split("train").saliency[:] == d2.split("train").saliency[:]).all()


def test_dask_cuda_workers_make_the_in_process_bytes(work, tmp_path):
    pytest.importorskip("dask_cuda")

    def store(name, **kw):
        out = compute_saliency(
            SaliencyConfig(method="gradient", data=work["data"], model=work["ckpt"],
                           out=str(tmp_path / name), batch_size=16, device="cuda",
                           deterministic=True, **kw)
        )  # fmt: skip
        return open_saliency(out).split("train").saliency[:]

    alone = store("alone.zarr")
    workers = store("dask.zarr", workers=torch.cuda.device_count())
    assert (alone == workers).all()


def test_default_sizes_on_cuda_are_recorded(work, tmp_path):
    out = compute_saliency(
        SaliencyConfig(method="smoothgrad", params={"samples": 8}, data=work["data"],
                       model=work["ckpt"], out=str(tmp_path / "d.zarr"), device="cuda")
    )  # fmt: skip
    attrs = open_saliency(out).attrs
    assert attrs["compute"]["batch_size"] == 1024  # 16x16 images: the cap
    assert attrs["params"]["samples_batch_size"] == 8  # all copies fit one pass


# --------------------------------------------------------------------------------------------
# Evaluation and scores


def test_autoattack_runs_on_cuda(work, tmp_path):
    run = trainer.train(
        TrainConfig(variant="original", data=work["data"], model="resnet10",
                    out=str(tmp_path / "r"), epochs=1, batch_size=16, device="cuda")
    )  # fmt: skip
    results = evaluate(
        run, attacks=("fgsm", "autoattack"), eps=(0, 8), attack_eps={"autoattack": (8,)},
        n_examples=16, device="cuda", strict=False, out=str(tmp_path / "eval"),
    )  # fmt: skip
    assert "autoattack" in results["attacks"]
    assert (tmp_path / "eval" / "robustbench.json").is_file()


def test_scores_on_cuda_recompute_the_store_maps(work):
    from satpipe.pipeline.config import ScoreConfig
    from satpipe.pipeline.quality.score import score_store

    assert open_saliency(work["sal"]).attrs["compute"]["amp"] is True
    quality = score_store(
        ScoreConfig(work["sal"], model=work["ckpt"], n=16, device="cuda", write=False)
    )
    assert quality["settings"]["batch_size"] == 1024
    curve = quality["curves"]["randomisation"]
    assert curve[0]["randomised"] == "none" and curve[0]["value"] >= 0.95
    assert quality["scores"]["deletion"]["value"] is not None


# --------------------------------------------------------------------------------------------
# NCCL DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@two_gpus
def test_nccl_ddp_on_two_gpus(work, tmp_path):
    """torchrun --nproc-per-node 2 with --device cuda: each rank on its own GPU (NCCL refuses
    two ranks on one), rank 0's checkpoint written once."""
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        "-m", "satpipe", "train", "--variant", "pgd-sat", "--data", work["data"],
        "--saliency", work["sal"], "--model", "resnet10", "--epochs", "2", "--batch-size", "16",
        "--attack-steps", "1", "--device", "cuda", "--out", str(run),
    ]  # fmt: skip
    env = dict(os.environ, SATPIPE_NO_PROGRESS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
