"""`satpipe bench saliency`: each method against plain forward+backward, and the runner's peak
memory at two dataset sizes. efficiency = img/s x passes_per_image / forward+backward img/s,
both on the same model, batch, device and autocast, timed in alternation: 1.0 means a method
costs exactly its passes (Grad-CAM++ beats 1: its backward stops at the CAM layer).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.stores import untrained_checkpoint, untrained_model
from satpipe.bench.timing import RSS_FLAT, alternate, forward_backward, peak_rss
from satpipe.core.defaults import batch_size as default_batch_size
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.data.synthetic import write_random_dataset
from satpipe.pipeline.methods import get_method, model_methods
from satpipe.train.config import check_model_options

EFFICIENCY_TARGET = 0.9  # img/s x passes / forward+backward img/s, every method
# What bounds each method's efficiency (img/s x passes / forward+backward img/s), as profiled.
EFFICIENCY_LIMITS = {
    "gradient": "one forward+backward; captum's wrapper is the only extra",
    "smoothgrad": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "ig": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "gbp": "captum's backward hook on every ReLU, registered on each call",
    "gradcam++": "backward stops at the CAM layer, so it beats a full pass",
    "guided-gradcam++": "GBP (hooks) plus a Grad-CAM++ pass",
}


def bench_saliency(
    *, methods: tuple[str, ...] | None = None, model: str = "smallcnn", size: int = 32,
    batch_size: int | None = None, n_images: int = 256, device: str = "auto",
    params: dict[str, dict[str, Any]] | None = None, rss_sizes: tuple[int, ...] = (1024, 8192),
    amp: bool = True, repeats: int = 3, floor_seconds: float = 4.0, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Each method's img/s and efficiency on random (B, 3, size, size) images in [0, 1] and an
    untrained `model` (speed does not depend on the weights), then the runner's peak RSS at
    `rss_sizes` rows (empty: skipped). methods: None times every method that uses a model.
    params: {method: {key: value}} (`--param method.key=value`). batch_size: None is the runner's
    default for the device. Each method is timed `repeats` rounds at least, and rounds are added
    until `floor_seconds` have passed (or 50 rounds)."""
    check_model_options(model, None, None)
    at_least(1, n_images=n_images, batch_size=batch_size)
    dev = resolve_device(device)
    batch_size = batch_size or default_batch_size(dev, size, size)
    report: dict[str, Any] = {
        **report_head("saliency", dev), "model": model,
        "image_size": size, "batch_size": batch_size, "n_images": n_images,
    }  # fmt: skip
    report.update(_time_methods(
        methods=methods or tuple(model_methods()), model=model, size=size,
        batch_size=batch_size, n_images=n_images, device=dev, params=params or {},
        amp=amp, repeats=repeats, floor_seconds=floor_seconds, seed=seed,
    ))  # fmt: skip
    if rss_sizes:
        report["peak_rss"] = bench_peak_rss(
            rss_sizes, model=model, image_size=size, batch_size=batch_size, device=str(dev)
        )
    return report


def method_floor(
    net: torch.nn.Module, method, amp: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The floor `method` is divided by: one plain forward+backward pass of `net`, under the
    autocast the method's own passes run under (bf16 when it uses amp, else fp32), so that
    efficiency compares like with like."""

    def floor_pass(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with method.autocast(x.device.type, amp):
            return forward_backward(net, x, y)

    return floor_pass


def _time_methods(
    *, methods: Sequence[str], model: str, size: int, batch_size: int, n_images: int,
    device: Any, params: dict[str, dict[str, Any]], amp: bool, repeats: int,
    floor_seconds: float, seed: int, num_classes: int = 10,
) -> dict[str, Any]:  # fmt: skip
    """{"forward_backward_img_s": r, "methods": {name: {img_s, passes_per_image, efficiency,
    ...}}}: each method and its floor timed in alternation over the same random batches."""
    dev = resolve_device(device)
    net = untrained_model(model, dev, num_classes, seed=seed).eval()
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    gen = torch.Generator().manual_seed(seed)
    batches = [  # at least two: the first is also the warm-up
        (torch.rand((batch_size, 3, size, size), generator=gen).to(dev, memory_format=fmt),
         torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev))
        for _ in range(max(2, -(-n_images // batch_size)))
    ]  # fmt: skip
    n, use_amp = batch_size * len(batches), amp and dev.type == "cuda"
    out: dict[str, Any] = {}
    with progress("bench saliency", len(methods)) as advance:
        for name in methods:
            method = get_method(name, **params.get(name, {})).resolve(net, (3, size, size))
            # Device-dependent sizes (SmoothGrad's copies per pass, IG's pass), recorded.
            method = method.for_device(dev, batch_size, (3, size, size))
            if not method.needs_model:
                raise SatpipeError(f"bench: method '{name}' uses no model; nothing to time")
            gen_dev = torch.Generator(device=dev).manual_seed(seed)
            floor, passes = method_floor(net, method, use_amp), method.passes_per_image

            def call(x, y, method=method, gen_dev=gen_dev):
                return method(net, x, y, generator=gen_dev, amp=use_amp)

            for f in (call, floor):
                f(*batches[0])  # one warm-up batch each, not a whole round of IG-50

            # The floor runs the method's pass count per batch, so both sides are timed over
            # about the same span: a min over a short span catches a quiet moment a long can't.
            def floor_side(_i: int, floor=floor, passes=passes) -> None:
                for x, y in batches:
                    for _ in range(passes):
                        floor(x, y)

            def method_side(_i: int, call=call) -> None:
                for x, y in batches:
                    call(x, y)

            t = alternate({"floor": floor_side, "method": method_side}, device=dev,
                          rounds=repeats, floor_seconds=floor_seconds)  # fmt: skip
            rate, fb = n / t.min("method"), n * passes / t.min("floor")
            out[name] = {
                "params": method.params, "img_s": round(rate, 2),
                "forward_backward_img_s": round(fb, 2), "passes_per_image": passes,
                "efficiency": round(rate * passes / fb, 3),
                "amp": bool(use_amp and method.amp_safe), "timing": t.summary(),
            }  # fmt: skip
            advance(1)
    floors = [m["forward_backward_img_s"] for m in out.values()]
    return {"forward_backward_img_s": round(max(floors, default=0.0), 2), "methods": out}


# Runs in the probe's fresh process (satpipe.bench.timing.peak_rss): one saliency run.
_RSS_RUN = """
from satpipe.pipeline.runner import SaliencyConfig, compute_saliency
compute_saliency(SaliencyConfig(**args))
"""


def bench_peak_rss(
    sizes: Sequence[int], *, model: str, image_size: int, batch_size: int, device: str,
    method: str = "gradient", rows_per_shard: int = 512, workdir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Peak RSS (MiB) of a fresh `compute_saliency` process per dataset size. The runner
    streams one shard at a time, so `growth` (peak at the largest / at the smallest) is ~1."""
    results = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ckpt = untrained_checkpoint(tmp, model)
        for n in sizes:
            data = write_random_dataset(f"{tmp}/data{n}.zarr", n, image_size,
                                        rows_per_shard=rows_per_shard)  # fmt: skip
            cfg = {
                "method": method, "data": data, "out": str(Path(tmp) / f"sal{n}.zarr"),
                "model": ckpt, "splits": ["train"], "batch_size": batch_size, "device": device,
            }  # fmt: skip
            t0 = time.perf_counter()
            peak = peak_rss(_RSS_RUN, cfg, f"saliency run on {n} images")["peak_rss_mb"]
            results[str(n)] = {
                "peak_rss_mb": round(peak, 1),
                "seconds": round(time.perf_counter() - t0, 2),
                "dataset_mb": round(n * image_size * image_size * 3 / 2**20, 1),
            }
    first, last = results[str(sizes[0])], results[str(sizes[-1])]
    growth = round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)
    return {"method": method, "rows_per_shard": rows_per_shard, "sizes": results, "growth": growth}


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Efficiency per method (target >= 0.9) and the runner's peak-RSS growth (flat)."""
    rows = [
        headline_row(
            f"saliency efficiency, {name}", m["efficiency"], f">= {EFFICIENCY_TARGET}",
            EFFICIENCY_LIMITS.get(name, "forward+backward passes of the model"),
        )
        for name, m in report["methods"].items()
    ]  # fmt: skip
    if "peak_rss" in report:
        g = report["peak_rss"]["growth"]
        rows.append(headline_row(
            "saliency runner peak RSS, large / small dataset", g, RSS_FLAT,
            "one shard in memory at a time",
        ))  # fmt: skip
    return rows


PARAM_HELP = ("--param", "-p", "method.key=value (repeatable), e.g. smoothgrad.samples=50.")
BENCHMARKS.register("saliency", Part(
    bench_saliency, headline,
    "img/s per saliency method vs forward+backward, and the runner's peak RSS at two sizes",
    shared=("model", "size", "device"),
    options={
        "methods": "Comma-separated methods to time (default: all of these, the ones using a "
                   "model).",
        "batch_size": "Images per method call (default: 64 on CPU, 1024 on CUDA).",
        "n_images": "Images timed per method.",
        "params": PARAM_HELP,
        "rss_sizes": "Dataset sizes for the peak-RSS runs; '' skips them.",
        "amp": "bf16 autocast on CUDA where safe.",
    },
    choices={"methods": "satpipe.pipeline.methods:model_methods"},
    quick={"n_images": 64, "rss_sizes": (256, 1024)},
))  # fmt: skip
