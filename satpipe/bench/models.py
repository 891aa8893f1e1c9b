"""`satpipe bench models`: what wrapping a library model costs. The model through satpipe (its
input-normalisation pre-hook) against the identical network called bare on inputs normalised
outside the timer, through the same method code, for each saliency method: wrapped img/s /
bare img/s >= 0.95, the median over ABBA pairs of mirrored rounds with its quartiles. On a CPU
the clock is the process's CPU time (exact with `threads=1`), on a GPU wall time.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.saliency import PARAM_HELP
from satpipe.bench.stores import untrained_model
from satpipe.bench.timing import Timings, alternate, forward_backward, torch_threads
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods import get_method
from satpipe.train.config import MODEL_HELP, check_model_options
from satpipe.train.models import input_norm

SMALL_PARAMS = {"smoothgrad": {"samples": 2}, "ig": {"steps": 2}}
TARGET = 0.95
MAX_PAIRS = 200  # ABBA pairs at most, however short the calls


def bench_models(
    *, model: str = "torchvision:resnet18",
    methods: tuple[str, ...] = ("gradient", "smoothgrad", "ig", "gbp", "gradcam++"),
    size: int = 32, batch_size: int = 16, n_batches: int = 2, device: str = "auto",
    params: dict[str, dict[str, Any]] | None = None, rounds: int = 5, floor_seconds: float = 5.0,
    threads: int | None = None, num_classes: int = 10, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """{"methods": {name: {ratio, ratio_quartiles, wrapped_img_s, bare_img_s,
    efficiency_wrapped, efficiency_bare, passes_per_image, ...}}, "worst_ratio", "passed"} on
    `n_batches` random (batch_size, 3, size, size) batches and an untrained library `model`,
    with `threads` torch threads (restored afterwards). params: as in `bench saliency`; a
    method not named gets few samples/steps (SmoothGrad 2, IG 2), the figure being a ratio of
    two equal workloads. Each method runs `rounds` ABBA rounds at least, more until
    `floor_seconds` have passed (or MAX_PAIRS)."""
    check_model_options(model, None, None)
    at_least(1, size=size, batch_size=batch_size, n_batches=n_batches, rounds=rounds,
             threads=threads)  # fmt: skip
    params, dev = params or {}, resolve_device(device)
    with torch_threads(threads):
        wrapped = untrained_model(model, dev, num_classes, seed=seed).eval()
        if not hasattr(wrapped, "satpipe_normalize"):
            raise SatpipeError(
                f"bench models: {model} is a built-in model: it has no wrapper to measure "
                "(give a library model, e.g. torchvision:resnet18)"
            )
        bare = bare_copy(wrapped)
        batches = _batches(wrapped, n_batches, batch_size, size, num_classes, dev, seed)
        methods_report = {
            name: _time_method(
                get_method(name, **params.get(name, SMALL_PARAMS.get(name, {}))),
                wrapped, bare, batches, dev, rounds, floor_seconds, seed,
            )
            for name in methods
        }  # fmt: skip
        worst = min((r["ratio"] for r in methods_report.values()), default=1.0)
        return {
            **report_head("models", dev),
            "clock": "wall" if dev.type == "cuda" else "process cpu", "model": model,
            "image_size": size, "batch_size": batch_size, "n_batches": len(batches),
            "methods": methods_report, "worst_ratio": worst,
            "target": f">= {TARGET} (wrapped img/s / bare img/s, every method)",
            "passed": worst >= TARGET,
        }  # fmt: skip


def bare_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network without satpipe's normalisation hook and module."""
    bare = copy.deepcopy(model)
    bare._forward_pre_hooks.clear()
    del bare.satpipe_normalize
    return bare


def _batches(wrapped, n, batch_size, size, classes, dev, seed) -> list[tuple[torch.Tensor, ...]]:
    """n random (x, x normalised as the wrapper would, y) batches; channels_last on CUDA (the
    models too)."""
    norm, gen = input_norm(wrapped), torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    batches = []
    for _ in range(n):
        x = torch.rand((batch_size, 3, size, size), generator=gen).to(dev)
        y = torch.randint(0, classes, (batch_size,), generator=gen).to(dev)
        with torch.no_grad():
            xn = (x - norm.mean) / norm.std
        batches.append((x.contiguous(memory_format=fmt), xn.contiguous(memory_format=fmt), y))
    return batches


def _time_method(method, wrapped, bare, batches, dev, rounds, floor_seconds, seed) -> dict:
    """One method's row: wrapped, bare and the bare floor timed in mirrored rounds."""
    size = tuple(batches[0][0].shape[1:])
    m_wrapped, m_bare = method.resolve(wrapped, size), method.resolve(bare, size)
    gen_w = torch.Generator(device=dev).manual_seed(seed)
    gen_b = torch.Generator(device=dev).manual_seed(seed)

    def run_wrapped(i: int) -> None:
        x, _, y = batches[i % len(batches)]
        m_wrapped(wrapped, x, y, generator=gen_w)

    def run_bare(i: int) -> None:
        _, xn, y = batches[i % len(batches)]
        m_bare(bare, xn, y, generator=gen_b)

    def floor(i: int) -> None:  # one forward+backward of the bare model, called directly
        _, xn, y = batches[i % len(batches)]
        forward_backward(bare, xn, y)

    # One warm-up call each (plans, caches, allocator); the floor sits next to the bare side,
    # so mirrored rounds run wrapped, bare, floor, floor, bare, wrapped. CPU time on a CPU
    # (other processes' load barely moves it); wall time on a GPU, where the work runs outside
    # the process's CPU time.
    t = alternate(
        {"wrapped": run_wrapped, "bare": run_bare, "floor": floor}, device=dev,
        rounds=2 * rounds, warmup=1, floor_seconds=floor_seconds, max_rounds=2 * MAX_PAIRS,
        mirror=True, clock=time.perf_counter if dev.type == "cuda" else time.process_time,
    )  # fmt: skip
    ratios = abba_ratios(t, "wrapped", "bare")
    q1, med, q3 = (float(v) for v in np.quantile(ratios, [0.25, 0.5, 0.75]))
    b, passes = len(batches[0][2]), method.passes_per_image
    rate_w, rate_b, rate_fb = b / t.min("wrapped"), b / t.min("bare"), b / t.min("floor")
    return {
        "params": m_wrapped.params, "passes_per_image": passes, "ratio": round(med, 3),
        "ratio_quartiles": [round(q1, 3), round(q3, 3)], "rounds": len(ratios),
        "wrapped_img_s": round(rate_w, 2), "bare_img_s": round(rate_b, 2),
        "forward_backward_img_s": round(rate_fb, 2),
        "efficiency_wrapped": round(rate_w * passes / rate_fb, 3),
        "efficiency_bare": round(rate_b * passes / rate_fb, 3), "timing": t.summary(),
    }  # fmt: skip


def abba_ratios(timings: Timings, a: str, b: str) -> list[float]:
    """Per ABBA pair of rounds (2k, 2k+1 of a mirrored `alternate`): b seconds / a seconds
    (a trailing unpaired round is dropped; one round alone is its own ratio)."""
    sa, sb = timings.seconds[a], timings.seconds[b]
    if len(sa) < 2:
        return [sb[0] / sa[0]]
    return [(sb[i] + sb[i + 1]) / (sa[i] + sa[i + 1]) for i in range(0, len(sa) - 1, 2)]


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Wrapped / bare img/s per method (target >= 0.95)."""
    return [
        headline_row(
            f"img/s, wrapped / bare {report['model']}, {name}", m["ratio"], f">= {TARGET}",
            "the normalisation pre-hook: one (x - mean) / std per forward",
        )
        for name, m in report["methods"].items()
    ]  # fmt: skip


BENCHMARKS.register("models", Part(
    bench_models, headline,
    "img/s of a library model wrapped by satpipe (normalisation hook) / bare, per method",
    shared=("size", "device"),
    options={
        "model": f"A library model (one satpipe wraps). {MODEL_HELP}",
        "methods": "Comma-separated methods to time.",
        "batch_size": "Images per method call.",
        "n_batches": "Distinct batches, cycled through the rounds.",
        "params": PARAM_HELP,
        "rounds": "ABBA rounds at least (wrapped, bare, bare, wrapped).",
        "floor_seconds": "Seconds each method is timed for at least.",
        "threads": "torch threads for the run (default: torch's; 1 makes the CPU clock exact).",
    },
    choices={"methods": "satpipe.pipeline.methods:model_methods"},
    quick={"batch_size": 8, "n_batches": 1, "rounds": 2, "floor_seconds": 1.0, "threads": 1},
))  # fmt: skip
