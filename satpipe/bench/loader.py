"""`satpipe bench loader`: does streaming keep up with resident data? (JSON, ratios in one run)

Builds its own temporary stores (random uint8 images, float16 one-channel maps), then measures
1. loader throughput (pairs/s, augmentation on) in resident and streaming mode at 32x32 and
   64x64, and the streaming / resident ratio (epochs alternated between the modes);
2. a training step rate (forward + backward + Adam step of `resnet10`, batch from the loader)
   with streaming divided by the rate with resident data (target >= 0.95: the trainer never
   waits for data);
3. peak RSS of a process that streams one epoch, at two dataset sizes (a subprocess each); with
   a bounded shuffle buffer it must not grow with the dataset.

Every figure that matters is a ratio of two measurements taken in the same run, on the same
machine, so it travels between machines better than any absolute number.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import LoaderBenchConfig
from satpipe.bench.stores import random_pair
from satpipe.bench.timing import alternate, peak_rss
from satpipe.core.device import resolve_device
from satpipe.core.progress import progress
from satpipe.data.loader import make_loader
from satpipe.data.storage import now_iso
from satpipe.train.models import create_model

MODES = ("resident", "streaming")
STEP_TARGET = 0.95
TRAIN_MODEL = "resnet10"
WARMUP_STEPS = 3  # untimed steps of each fresh pipeline: first shards read, kernels chosen


def _loaders(data: str, sal: str, dev: torch.device, batch_size: int, **kw) -> dict[str, Any]:
    return {
        mode: make_loader(data, "train", sal, batch_size=batch_size, augment=True, mode=mode,
                          device=dev, **kw)
        for mode in MODES
    }  # fmt: skip


def throughput(loaders: dict[str, Any], dev: torch.device, epochs: int) -> dict[str, float]:
    """Pairs per second of each loader: one warm-up epoch each, then `epochs` epochs timed
    in alternation; the best epoch is kept."""

    def epoch_of(loader):
        def one_epoch(epoch: int) -> int:
            loader.set_epoch(epoch)
            return sum(len(y) for _, _, y in loader)

        return one_epoch

    t = alternate({m: epoch_of(ld) for m, ld in loaders.items()}, device=dev, rounds=epochs,
                  warmup=1)  # fmt: skip
    rates = {mode: t.best(mode) / t.min(mode) for mode in loaders}
    return {
        "resident_pairs_per_s": rates["resident"],
        "streaming_pairs_per_s": rates["streaming"],
        "streaming_over_resident": rates["streaming"] / rates["resident"],
        "timing": t.summary(),
    }


class Stepper:
    """Training steps of resnet10 (forward, CE backward, Adam step) fed by one loader.

    `prepare()` opens a fresh pass over the loader and runs the warm-up steps; `__call__` runs
    `steps` timed steps and closes the pass, so no pipeline reads ahead while the other mode is
    being timed."""

    def __init__(self, loader, device: torch.device, steps: int) -> None:
        torch.manual_seed(0)
        model = create_model(TRAIN_MODEL, loader.num_classes, loader.image_shape[2]).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model, self.loader, self.steps, self.epoch = model, loader, steps, 0
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.batches: Iterator | None = None

    def _batches(self) -> Iterator:
        while True:
            self.loader.set_epoch(self.epoch)
            yield from self.loader
            self.epoch += 1

    def _step(self) -> None:
        x, s, y = next(self.batches)
        # Use the map, as SAT does, so its transfer cannot be skipped.
        x = (x + (8 / 255) * s.sign()).clamp_(0, 1)
        with self.autocast:
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def prepare(self, _call: int) -> None:
        self.batches = self._batches()
        for _ in range(WARMUP_STEPS):
            self._step()

    def __call__(self, _call: int) -> int:
        for _ in range(self.steps):
            self._step()
        self.batches.close()
        return self.steps


def step_rates(loaders: dict[str, Any], dev: torch.device, steps: int, rounds: int) -> dict:
    """resnet10 steps/s per mode, the modes alternated for `rounds` rounds, best kept."""
    steppers = {mode: Stepper(loader, dev, steps) for mode, loader in loaders.items()}
    prepare = {mode: s.prepare for mode, s in steppers.items()}
    t = alternate(steppers, device=dev, rounds=rounds, prepare=prepare)
    rates = {mode: steps / t.min(mode) for mode in loaders}
    return {
        "resident_steps_per_s": rates["resident"],
        "streaming_steps_per_s": rates["streaming"],
        "streaming_over_resident": rates["streaming"] / rates["resident"],
        "target": STEP_TARGET,
        "timing": t.summary(),
    }


# Runs in the probe's fresh process (satpipe.bench.timing.peak_rss): one streamed epoch.
_RSS_RUN = """
from satpipe.data.loader import make_loader
loader = make_loader(args["data"], "train", args["saliency"], batch_size=args["batch_size"],
                     mode="streaming", augment=True)
result["rss_before_mb"] = vm_hwm_mb()
result["rows"] = sum(len(y) for _, _, y in loader)
result["max_shards_held"] = loader.stats.max_shards_held
"""


def streaming_peak_rss(data: str, sal: str, batch_size: int) -> dict[str, Any]:
    """Peak RSS (MiB, /proc VmHWM; Linux) of a fresh process streaming one epoch of `data`."""
    args = {"data": data, "saliency": sal, "batch_size": batch_size}
    return peak_rss(_RSS_RUN, args, f"streaming one epoch of {data}")


def _header(config: LoaderBenchConfig, dev: torch.device) -> dict[str, Any]:
    settings = {
        "rows": config.rows, "rows_per_shard": config.rows_per_shard,
        "batch_size": config.batch_size, "epochs": config.epochs, "augment": True,
        "train_model": TRAIN_MODEL, "train_batch_size": config.train_batch_size,
        "train_steps": config.train_steps, "rounds": config.rounds,
    }  # fmt: skip
    return {
        "benchmark": "loader", "created": now_iso(), "device": device_name(dev),
        "device_type": dev.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": settings, "throughput": {}, "train_step": {}, "streaming_rss": {},
    }  # fmt: skip


def run(config: LoaderBenchConfig) -> dict[str, Any]:
    """Throughput at each size, the step rate at the first size, peak RSS at two sizes."""
    dev = resolve_device(config.device)
    result = _header(config, dev)
    shard, first = config.rows_per_shard, config.sizes[0]
    tmp = tempfile.TemporaryDirectory(prefix="satpipe-bench-", dir=config.workdir)
    with tmp as root, progress("bench loader", 2 * len(config.sizes) + 3) as advance:
        for size in config.sizes:
            data, sal = random_pair(root, f"bench{size}_{config.rows}", config.rows, size,
                                    rows_per_shard=shard)  # fmt: skip
            advance()
            loaders = _loaders(data, sal, dev, config.batch_size)
            result["throughput"][f"{size}x{size}"] = throughput(loaders, dev, config.epochs)
            advance()
            if size == first:
                loaders = _loaders(data, sal, dev, config.train_batch_size, drop_last=True)
                steps = step_rates(loaders, dev, config.train_steps, config.rounds)
                result["train_step"] = {"image_size": size, **steps}
                advance()
            del loaders
        for n in config.rss_rows:
            data, sal = random_pair(root, f"bench{first}_{n}", n, first, rows_per_shard=shard)
            result["streaming_rss"][str(n)] = streaming_peak_rss(data, sal, config.batch_size)
            advance()
    small, large = (result["streaming_rss"][str(n)]["peak_rss_mb"] for n in config.rss_rows)
    result["streaming_rss"]["large_over_small"] = large / small
    return result


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The step-rate ratio (>= 0.95) and the streaming peak-RSS growth (flat)."""
    step = report["train_step"]["streaming_over_resident"]
    rss = report["streaming_rss"]["large_over_small"]
    return [
        headline_row(
            "resnet10 step rate, streaming / resident", step, f">= {STEP_TARGET}",
            step >= STEP_TARGET,
            "reader threads decode while the model computes; compute-bound when it holds",
        ),
        headline_row(
            "streaming peak RSS, large / small dataset", rss, "<= 1.1 (flat)", rss <= 1.1,
            "bounded prefetch and shuffle window",
        ),
    ]  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """pairs/s per size and mode, the step-rate ratio, the peak RSS at both sizes."""
    lines = [
        f"{size:8s} resident {row['resident_pairs_per_s']:10.0f}  streaming "
        f"{row['streaming_pairs_per_s']:10.0f} pairs/s  ratio {row['streaming_over_resident']:.2f}"
        for size, row in report["throughput"].items()
    ]
    step = report["train_step"]
    lines.append(
        f"resnet10 step rate streaming/resident {step['streaming_over_resident']:.3f} "
        f"(target {step['target']})"
    )
    rss = {k: v for k, v in report["streaming_rss"].items() if k != "large_over_small"}
    (small, a), (large, b) = rss.items()
    lines.append(
        f"streaming peak RSS {a['peak_rss_mb']:.0f} MiB at {small} rows, "
        f"{b['peak_rss_mb']:.0f} MiB at {large} rows"
    )
    return "\n".join(lines)
