"""`satpipe bench loader`: does streaming keep up with resident data? On random stores it times
loader pairs/s per mode and image side, a resnet10 training step rate fed by each mode
(streaming / resident >= 0.95: the trainer never waits for data), and the peak RSS of a fresh
process streaming one epoch at two dataset sizes (flat: bounded shuffle window).
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.stores import one_epoch, untrained_model
from satpipe.bench.timing import RSS_FLAT, alternate, peak_rss
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.data.loader import LoaderOptions, make_loader
from satpipe.data.storage import now_iso
from satpipe.data.synthetic import write_random_pair

MODES = ("resident", "streaming")
STEP_TARGET = 0.95
TRAIN_MODEL = "resnet10"
WARMUP_STEPS = 3  # untimed steps of each fresh pipeline: first shards read, kernels chosen


def bench_loader(
    *, device: str = "auto", sizes: tuple[int, ...] = (32, 64), rows: int = 8192,
    rows_per_shard: int = 1024, batch_size: int = 256, epochs: int = 2, train_steps: int = 20,
    rss_rows: tuple[int, ...] = (8192, 32768), train_batch_size: int = 128, rounds: int = 2,
    workdir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Throughput at each image side in `sizes` (`epochs` timed epochs per mode), the step rate
    at the first side (`rounds` rounds of `train_steps` steps per mode), the streaming peak RSS
    at the two `rss_rows` sizes. Temporary stores go under `workdir` (default: a temp dir)."""
    if len(rss_rows) != 2:
        shown = ",".join(map(str, rss_rows))
        raise SatpipeError(f"--rss-rows expects two integers, got '{shown}'")
    if not sizes:
        raise SatpipeError("--sizes expects at least one image side")
    at_least(1, epochs=epochs, train_steps=train_steps)
    dev = resolve_device(device)
    settings = {
        "rows": rows, "rows_per_shard": rows_per_shard, "batch_size": batch_size,
        "epochs": epochs, "augment": True, "train_model": TRAIN_MODEL,
        "train_batch_size": train_batch_size, "train_steps": train_steps, "rounds": rounds,
    }  # fmt: skip
    result: dict[str, Any] = {
        **report_head("loader", dev), "created": now_iso(), "device_type": dev.type,
        "threads": torch.get_num_threads(), "settings": settings, "throughput": {},
        "train_step": {}, "streaming_rss": {},
    }  # fmt: skip

    def loaders(data: str, sal: str, batch: int, drop_last: bool = False) -> dict[str, Any]:
        return {mode: make_loader(data, "train", sal, LoaderOptions(
            batch_size=batch, augment=True, mode=mode, device=dev, drop_last=drop_last,
        )) for mode in MODES}  # fmt: skip

    tmp = tempfile.TemporaryDirectory(prefix="satpipe-bench-", dir=workdir)
    with tmp as root, progress("bench loader", 2 * len(sizes) + 3) as advance:
        for size in sizes:
            data, sal = write_random_pair(root, f"bench{size}_{rows}", rows, size,
                                          rows_per_shard=rows_per_shard)  # fmt: skip
            advance()
            result["throughput"][f"{size}x{size}"] = throughput(
                loaders(data, sal, batch_size), dev, epochs
            )
            advance()
            if size == sizes[0]:
                timed = loaders(data, sal, train_batch_size, drop_last=True)
                steps = step_rates(timed, dev, train_steps, rounds)
                result["train_step"] = {"image_size": size, **steps}
                del timed
                advance()
        for n in rss_rows:
            data, sal = write_random_pair(root, f"bench{sizes[0]}_{n}", n, sizes[0],
                                          rows_per_shard=rows_per_shard)  # fmt: skip
            args = {"data": data, "saliency": sal, "batch_size": batch_size}
            what = f"streaming one epoch of {data}"
            result["streaming_rss"][str(n)] = peak_rss(_RSS_RUN, args, what)
            advance()
    small, large = (result["streaming_rss"][str(n)]["peak_rss_mb"] for n in rss_rows)
    result["streaming_rss"]["large_over_small"] = large / small
    return result


def throughput(loaders: dict[str, Any], dev: torch.device, epochs: int) -> dict[str, Any]:
    """Pairs per second of each loader: one warm-up epoch each, then `epochs` epochs timed
    in alternation; the best epoch is kept."""
    t = alternate({m: one_epoch(ld) for m, ld in loaders.items()}, device=dev, rounds=epochs,
                  warmup=1)  # fmt: skip
    rates = {mode: t.best(mode) / t.min(mode) for mode in loaders}
    return {
        "resident_pairs_per_s": rates["resident"],
        "streaming_pairs_per_s": rates["streaming"],
        "streaming_over_resident": rates["streaming"] / rates["resident"],
        "timing": t.summary(),
    }


def step_rates(loaders: dict[str, Any], dev: torch.device, steps: int, rounds: int) -> dict:
    """resnet10 steps/s per mode (forward, CE backward, Adam step), the modes alternated for
    `rounds` rounds, best kept. Each call opens a fresh pass over its loader (untimed, with
    WARMUP_STEPS steps) and closes it after `steps` timed steps, so no pipeline reads ahead
    while the other mode is timed."""
    sides, prepare = {}, {}
    for mode, loader in loaders.items():
        model = untrained_model(TRAIN_MODEL, dev, loader.num_classes, loader.image_shape[2])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        state: dict[str, Any] = {"epoch": 0}

        def batches(loader=loader, state=state):
            while True:
                loader.set_epoch(state["epoch"])
                yield from loader
                state["epoch"] += 1

        def step(model=model, opt=opt, state=state) -> None:
            x, s, y = next(state["batches"])
            x = (x + (8 / 255) * s.sign()).clamp_(0, 1)  # use the map, as SAT does
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def open_pass(_call: int, batches=batches, step=step, state=state) -> None:
            state["batches"] = batches()
            for _ in range(WARMUP_STEPS):
                step()

        def timed(_call: int, step=step, state=state) -> int:
            for _ in range(steps):
                step()
            state["batches"].close()
            return steps

        sides[mode], prepare[mode] = timed, open_pass
    t = alternate(sides, device=dev, rounds=rounds, prepare=prepare)
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


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The step-rate ratio (>= 0.95) and the streaming peak-RSS growth (flat)."""
    step = report["train_step"]["streaming_over_resident"]
    rss = report["streaming_rss"]["large_over_small"]
    return [
        headline_row(
            "resnet10 step rate, streaming / resident", step, f">= {STEP_TARGET}",
            "reader threads decode while the model computes; compute-bound when it holds",
        ),
        headline_row(
            "streaming peak RSS, large / small dataset", rss, RSS_FLAT,
            "bounded prefetch and shuffle window",
        ),
    ]  # fmt: skip


BENCHMARKS.register("loader", Part(
    bench_loader, headline,
    "resident vs streaming loader: pairs/s, resnet10 step rate, streaming peak RSS",
    shared=("device", "rows_per_shard"),
    options={
        "sizes": "Comma-separated image sides.",
        "rows": "Rows of each throughput dataset.",
        "batch_size": "Batch of the throughput runs.",
        "epochs": "Timed epochs per mode (after a warm-up), alternated.",
        "train_steps": "Timed resnet10 steps per mode and round.",
        "rss_rows": "Two dataset sizes for the streaming peak-RSS runs.",
    },
    quick={"rows": 1024, "rows_per_shard": 256, "train_steps": 5, "rss_rows": (1024, 4096)},
))  # fmt: skip
