"""`satpipe bench saliency`: throughput of each method against plain forward+backward, and peak
memory of the runner at two dataset sizes. Every figure is a ratio or a count within one run.

efficiency = img/s(method) x passes_per_image / img/s(forward+backward), both measured here on
the same model, batch size, device and autocast (bf16 where the method runs under it, else
fp32), in alternation (so both see the same machine load): 1.0
means a method costs exactly its passes, nothing more. Grad-CAM++ exceeds 1: its backward
stops at the CAM layer.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import SaliencyBenchConfig
from satpipe.bench.stores import random_dataset, untrained_checkpoint
from satpipe.bench.timing import Timings, alternate, forward_backward, peak_rss
from satpipe.core.defaults import batch_size as default_batch_size
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.core.version import __version__
from satpipe.pipeline.methods import get_method, model_methods
from satpipe.train.models import create_model

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# What bounds each method's efficiency (img/s x passes / forward+backward img/s), as profiled.
EFFICIENCY_LIMITS = {
    "gradient": "one forward+backward; captum's wrapper is the only extra",
    "smoothgrad": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "ig": "its passes; a pass is --batch-size images (CPU caches favour small ones)",
    "gbp": "captum's backward hook on every ReLU, registered on each call",
    "gradcam++": "backward stops at the CAM layer, so it beats a full pass",
    "guided-gradcam++": "GBP (hooks) plus a Grad-CAM++ pass",
}


def batch_size_for(config: SaliencyBenchConfig, device: torch.device) -> int:
    """Images per method call: as configured, else the saliency runner's default for the
    device (`satpipe.core.defaults.batch_size`: 64 on a CPU, GPU-sized on CUDA)."""
    if config.batch_size is not None:
        return config.batch_size
    return default_batch_size(device, config.size, config.size)


def run(config: SaliencyBenchConfig) -> dict[str, Any]:
    """Both benchmarks (methods, then peak RSS unless `rss_sizes` is empty) as one report."""
    dev = resolve_device(config.device)
    batch_size = batch_size_for(config, dev)
    report: dict[str, Any] = {
        "benchmark": "saliency",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "device": device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "model": config.model,
        "image_size": config.size,
        "batch_size": batch_size,
        "n_images": config.n_images,
    }
    report.update(bench_methods(config))
    if config.rss_sizes:
        report["peak_rss"] = bench_peak_rss(
            config.rss_sizes, model=config.model, image_size=config.size,
            batch_size=batch_size, device=str(dev),
        )  # fmt: skip
    return report


def _random_batches(config: SaliencyBenchConfig, dev: torch.device, num_classes: int) -> Batches:
    """Whole batches of random (B, 3, size, size) images in [0, 1] and labels, at least two
    (the first is also the warm-up)."""
    batch_size = batch_size_for(config, dev)
    gen = torch.Generator().manual_seed(config.seed)
    batches = []
    for _ in range(max(2, -(-config.n_images // batch_size))):
        x = torch.rand((batch_size, 3, config.size, config.size), generator=gen).to(dev)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev)
        batches.append((x, y))
    return batches


def paired_timings(
    fn: Callable, floor: Callable, batches: Batches, device: torch.device, repeats: int,
    passes: int = 1, floor_seconds: float = 0.0,
) -> Timings:  # fmt: skip
    """Timings of `fn(x, y)` ("method") and `floor(x, y)` ("floor") over all `batches`, timed
    in alternation. The floor runs `passes` times per batch, the work `fn` declares, so both
    sides are timed over about the same span: a min over a short span catches a quiet moment
    that a long one cannot."""
    # One warm-up batch each, not a whole call: that would be a full round of IG-50.
    for f in (fn, floor):
        f(*batches[0])

    def floor_side(_i: int) -> None:
        for x, y in batches:
            for _ in range(passes):
                floor(x, y)

    def method_side(_i: int) -> None:
        for x, y in batches:
            fn(x, y)

    return alternate(
        {"floor": floor_side, "method": method_side}, device=device, rounds=repeats,
        floor_seconds=floor_seconds,
    )  # fmt: skip


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


def bench_methods(config: SaliencyBenchConfig, num_classes: int = 10) -> dict[str, Any]:
    """{"forward_backward_img_s": r, "methods": {name: {img_s, passes_per_image, efficiency}}}
    on random images and an untrained `config.model` (speed does not depend on the weights)."""
    dev = resolve_device(config.device)
    methods = config.methods or tuple(model_methods())
    torch.manual_seed(config.seed)
    net = create_model(config.model, num_classes).to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    batches = _random_batches(config, dev, num_classes)
    n = sum(len(y) for _, y in batches)

    out: dict[str, Any] = {}
    floors: list[float] = []
    use_amp = config.amp and dev.type == "cuda"
    with progress("bench saliency", len(methods)) as advance:
        for name in methods:
            method = get_method(name, **config.params.get(name, {}))
            method = method.resolve(net, (3, config.size, config.size))
            # Device-dependent sizes (SmoothGrad's copies per pass, IG's pass), recorded.
            method = method.for_device(
                dev, batch_size_for(config, dev), (3, config.size, config.size)
            )
            if not method.needs_model:
                raise SatpipeError(f"bench: method '{name}' uses no model; nothing to time")
            gen_dev = torch.Generator(device=dev).manual_seed(config.seed)

            def call(x, y, method=method, gen_dev=gen_dev):
                return method(net, x, y, generator=gen_dev, amp=use_amp)

            floor_pass = method_floor(net, method, use_amp)

            passes = method.passes_per_image
            t = paired_timings(
                call, floor_pass, batches, dev, config.repeats, passes, config.floor_seconds
            )
            rate, fb = n / t.min("method"), n * passes / t.min("floor")
            floors.append(fb)
            out[name] = {
                "params": method.params,
                "img_s": round(rate, 2),
                "forward_backward_img_s": round(fb, 2),
                "passes_per_image": passes,
                "efficiency": round(rate * passes / fb, 3),
                "amp": bool(use_amp and method.amp_safe),
                "timing": t.summary(),
            }
            advance(1)
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
    """Peak RSS (MiB) of a fresh `compute_saliency` process per dataset size.

    The runner streams one shard at a time, so the peak should not grow with the dataset
    (`growth` = peak at the largest / peak at the smallest size, ~1.0)."""
    results = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ckpt = untrained_checkpoint(tmp, model)
        for n in sizes:
            data = random_dataset(tmp, f"data{n}", n, image_size, rows_per_shard=rows_per_shard)
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
    return {
        "method": method,
        "rows_per_shard": rows_per_shard,
        "sizes": results,
        "growth": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3),
    }


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Efficiency per method (target >= 0.9) and the runner's peak-RSS growth (flat)."""
    rows = [
        headline_row(
            f"saliency efficiency, {name}", m["efficiency"], ">= 0.9", m["efficiency"] >= 0.9,
            EFFICIENCY_LIMITS.get(name, "forward+backward passes of the model"),
        )
        for name, m in report["methods"].items()
    ]  # fmt: skip
    if "peak_rss" in report:
        g = report["peak_rss"]["growth"]
        rows.append(headline_row(
            "saliency runner peak RSS, large / small dataset", g, "<= 1.1 (flat)", g <= 1.1,
            "one shard in memory at a time",
        ))  # fmt: skip
    return rows


def format_report(report: dict[str, Any]) -> str:
    """img/s and efficiency per method, then the peak-RSS growth over the sizes."""
    lines = [
        f"{name:18s} {row['img_s']:10.1f} img/s  efficiency {row['efficiency']:.2f}"
        for name, row in report["methods"].items()
    ]
    if "peak_rss" in report:
        rss = report["peak_rss"]
        sizes = [int(n) for n in rss["sizes"]]
        lines.append(f"peak RSS growth {rss['growth']:.3f} over sizes {sizes}")
    return "\n".join(lines)
