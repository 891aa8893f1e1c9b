"""`satpipe bench loader`: does streaming keep up with resident data? (JSON, ratios in one run)

Builds its own temporary stores (random uint8 images, float16 one-channel maps), then measures
1. loader throughput (pairs/s, augmentation on) in resident and streaming mode at 32x32 and
   64x64, and the streaming / resident ratio;
2. a training step rate (forward + backward + Adam step of `resnet10`, batch from the loader)
   with streaming divided by the rate with resident data (target >= 0.95: the trainer never
   waits for data);
3. peak RSS of a process that streams one epoch, at two dataset sizes (a subprocess each); with
   a bounded shuffle buffer it must not grow with the dataset.

Every figure that matters is a ratio of two measurements taken in the same run, on the same
machine, so it travels between machines better than any absolute number.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from satpipe.data.loader import make_loader
from satpipe.data.store import now_iso
from satpipe.data.synthetic import write_random_dataset, write_random_saliency
from satpipe.progress import progress
from satpipe.train.models import create_model


def write_bench_pair(
    root: str | Path, n: int, size: int, rows_per_shard: int, seed: int = 0
) -> tuple[str, str]:
    """A random dataset store (n train rows, size x size x 3, 10 classes) and a complete
    one-channel saliency store for it, under `root`. Written block by block (bounded memory)."""
    root = Path(root)
    data, sal = str(root / f"bench{size}_{n}.zarr"), str(root / f"bench{size}_{n}_sal.zarr")
    write_random_dataset(
        data, n, size, rows_per_shard=rows_per_shard, seed=seed,
        generator="satpipe.train.bench_loader",
    )  # fmt: skip
    return data, write_random_saliency(sal, data, 1, seed=seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(loader, device: torch.device, epochs: int) -> float:
    """Pairs per second over `epochs` full epochs (after one warm-up epoch)."""
    loader.set_epoch(0)
    for _ in loader:
        pass
    _sync(device)
    rows, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for _, _, y in loader:
            rows += len(y)
        _sync(device)
    return rows / (time.perf_counter() - start)


def step_rate(loader, device: torch.device, steps: int, warmup: int = 3) -> float:
    """Training steps per second of resnet10 (forward, CE backward, Adam step) fed by `loader`."""
    torch.manual_seed(0)
    model = create_model("resnet10", loader.num_classes, loader.image_shape[2]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = batches()
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, s, y = next(it)
        # Use the map, as SAT does, so its transfer cannot be skipped.
        x = (x + (8 / 255) * s.sign()).clamp_(0, 1)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    it.close()
    return steps / (time.perf_counter() - start)


_RSS_SCRIPT = """
import json, sys
from satpipe.data.loader import make_loader

def hwm_mb():
    # VmHWM: peak RSS of this process image. (ru_maxrss would also count the parent's RSS,
    # which Linux carries over into the child at fork/exec.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

data, sal, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
loader = make_loader(data, "train", sal, batch_size=batch, mode="streaming", augment=True)
before = hwm_mb()
rows = sum(len(y) for _, _, y in loader)
print(json.dumps({"rows": rows, "rss_before_mb": before, "peak_rss_mb": hwm_mb(),
                  "max_shards_held": loader.stats.max_shards_held}))
"""


def streaming_peak_rss(data: str, sal: str, batch_size: int) -> dict[str, Any]:
    """Peak RSS (MiB, /proc VmHWM; Linux) of a fresh process streaming one epoch of `data`."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, data, sal, str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_loader(
    out: str | Path | None = None,
    *,
    device: str = "auto",
    sizes: tuple[int, ...] = (32, 64),
    rows: int = 8192,
    rows_per_shard: int = 1024,
    batch_size: int = 256,
    epochs: int = 2,
    train_batch_size: int = 128,
    train_steps: int = 20,
    rounds: int = 2,
    rss_rows: tuple[int, int] = (8192, 32768),
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the loader benchmark; write JSON to `out` when given and return the dict.

    rows: dataset rows per image size for the throughput runs; train_steps: timed resnet10
    steps per mode and round (modes alternate for `rounds` rounds, best kept); rss_rows: the
    two dataset sizes (32x32) of the peak-RSS runs. Temporary stores go to `workdir`
    (default: a temp dir).
    """
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    result: dict[str, Any] = {
        "benchmark": "loader",
        "created": now_iso(),
        "device": (
            torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"{platform.machine()} CPU, {os.cpu_count()} cores"
        ),
        "device_type": dev.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {
            "rows": rows,
            "rows_per_shard": rows_per_shard,
            "batch_size": batch_size,
            "epochs": epochs,
            "augment": True,
            "train_model": "resnet10",
            "train_batch_size": train_batch_size,
            "train_steps": train_steps,
            "rounds": rounds,
        },
        "throughput": {},
        "train_step": {},
        "streaming_rss": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="satpipe-bench-", dir=workdir)
    total = len(sizes) * 3 + 2
    with tmp as root, progress("bench loader", total) as advance:
        for size in sizes:
            data, sal = write_bench_pair(root, rows, size, rows_per_shard)
            advance()
            rates = {}
            for mode in ("resident", "streaming"):
                loader = make_loader(
                    data, "train", sal, batch_size=batch_size, augment=True, mode=mode, device=dev
                )
                rates[mode] = loader_rate(loader, dev, epochs)
                del loader
                advance()
            result["throughput"][f"{size}x{size}"] = {
                "resident_pairs_per_s": rates["resident"],
                "streaming_pairs_per_s": rates["streaming"],
                "streaming_over_resident": rates["streaming"] / rates["resident"],
            }
            if size == sizes[0]:
                loaders = {
                    mode: make_loader(
                        data,
                        "train",
                        sal,
                        batch_size=train_batch_size,
                        augment=True,
                        mode=mode,
                        device=dev,
                        drop_last=True,
                    )
                    for mode in ("resident", "streaming")
                }
                # Alternate the modes and keep each one's best round: the machine's load
                # drifts, and a ratio of two rates taken minutes apart would measure the drift.
                steps = {mode: 0.0 for mode in loaders}
                for _ in range(rounds):
                    for mode, loader in loaders.items():
                        steps[mode] = max(steps[mode], step_rate(loader, dev, train_steps))
                del loaders
                result["train_step"] = {
                    "image_size": size,
                    "resident_steps_per_s": steps["resident"],
                    "streaming_steps_per_s": steps["streaming"],
                    "streaming_over_resident": steps["streaming"] / steps["resident"],
                    "target": 0.95,
                }
        for n in rss_rows:
            data, sal = write_bench_pair(root, n, sizes[0], rows_per_shard)
            result["streaming_rss"][str(n)] = streaming_peak_rss(data, sal, batch_size)
            advance()
        small, large = (result["streaming_rss"][str(n)]["peak_rss_mb"] for n in rss_rows)
        result["streaming_rss"]["large_over_small"] = large / small
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
