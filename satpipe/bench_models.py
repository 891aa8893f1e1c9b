"""What wrapping costs: a model from a source (`torchvision:resnet18`) through satpipe against
the same network called bare, for each saliency method.

satpipe puts the input normalisation in front of a library model (a forward pre-hook running
`(x - mean) / std`) and the methods add their checks (Guided Backprop's activation plan, the
Grad-CAM layer, both found once per model). The bare side is the identical network (same
class, same weights) with no hook, fed inputs normalised beforehand, outside the timer, and
run through the same method code, so the ratio isolates what the wrapping adds:

    ratio = img/s(method on the wrapped model) / img/s(method on the bare model)  (>= 0.95)

The two sides are timed in alternation, one batch at a time in ABBA order per round (so a
load that drifts linearly cancels; on a CPU the clock is the process's CPU time, so on a shared
machine run it with one torch thread, `torch.set_num_threads(1)`), and the ratio is the median
over rounds of the round's bare seconds / wrapped seconds, with the quartiles of those ratios
as its spread. `efficiency` is the figure of `satpipe bench saliency`, img/s x passes per
image / img/s of one forward+backward pass, with the bare model's forward+backward as the
floor for both sides.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from satpipe import __version__
from satpipe.device import resolve_device
from satpipe.pipeline.methods import get_method
from satpipe.pipeline.methods.base import frozen, input_leaf, target_logit_sum
from satpipe.train.models import create_model, input_norm

DEFAULT_METHODS = ("gradient", "smoothgrad", "ig", "gbp", "gradcam++")
SMALL_PARAMS = {"smoothgrad": {"samples": 2}, "ig": {"steps": 2}}
TARGET = 0.95


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """Wall time on a GPU (synchronised); on a CPU the process's CPU time, which the load of
    other processes on a shared machine barely changes (exact with one torch thread)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def _seconds(fn: Callable[[int], Any], i: int, device: torch.device) -> float:
    clock = _clock(device)
    t0 = clock()
    fn(i)
    _sync(device)
    return clock() - t0


def paired_ratio(
    a: Callable[[int], Any],
    b: Callable[[int], Any],
    device: torch.device,
    rounds: int,
    min_seconds: float,
) -> dict[str, float]:
    """Rate of `a` over rate of `b` (each called with a batch index): per round the order
    a, b, b, a on one batch; the median over rounds of (b seconds / a seconds), its quartiles,
    and the best seconds per call of each side."""
    a(0), b(0)  # warm-up (plans, caches, allocator)
    _sync(device)
    ratios, best_a, best_b = [], float("inf"), float("inf")
    start, k = time.perf_counter(), 0
    while k < rounds or (time.perf_counter() - start < min_seconds and k < 200):
        ta1 = _seconds(a, k, device)
        tb1 = _seconds(b, k, device)
        tb2 = _seconds(b, k, device)
        ta2 = _seconds(a, k, device)
        ratios.append((tb1 + tb2) / (ta1 + ta2))
        best_a, best_b = min(best_a, ta1, ta2), min(best_b, tb1, tb2)
        k += 1
    q1, med, q3 = (float(v) for v in np.quantile(ratios, [0.25, 0.5, 0.75]))
    return {"ratio": med, "q1": q1, "q3": q3, "rounds": k, "a_s": best_a, "b_s": best_b}


def bare_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network without satpipe's normalisation hook and module."""
    bare = copy.deepcopy(model)
    bare._forward_pre_hooks.clear()
    del bare.satpipe_normalize
    return bare


def bench_wrapped_model(
    model: str = "torchvision:resnet18",
    methods: Sequence[str] = DEFAULT_METHODS,
    size: int = 32,
    batch_size: int = 16,
    n_batches: int = 2,
    num_classes: int = 10,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    rounds: int = 5,
    min_seconds: float = 5.0,
    seed: int = 0,
) -> dict[str, Any]:
    """{"methods": {name: {ratio, ratio_quartiles, wrapped_img_s, bare_img_s,
    efficiency_wrapped, efficiency_bare, passes_per_image, ...}}, "worst_ratio", "passed"}
    on random (B, 3, size, size) images and an untrained `model` (speed does not depend on
    the weights). `params` per method default to SMALL_PARAMS (few samples/steps)."""
    dev = torch.device(resolve_device(device))
    torch.manual_seed(seed)
    wrapped = create_model(model, num_classes).to(dev).eval()
    if not hasattr(wrapped, "satpipe_normalize"):
        raise ValueError(f"{model} is a built-in model: it has no wrapper to measure")
    bare = bare_copy(wrapped)
    if dev.type == "cuda":
        wrapped = wrapped.to(memory_format=torch.channels_last)
        bare = bare.to(memory_format=torch.channels_last)
    norm = input_norm(wrapped)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(max(1, n_batches)):
        x = torch.rand((batch_size, 3, size, size), generator=gen).to(dev)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev)
        with torch.no_grad():
            xn = (x - norm.mean) / norm.std
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            xn = xn.contiguous(memory_format=torch.channels_last)
        batches.append((x, xn, y))

    def floor(i: int) -> None:  # one forward+backward of the bare model, called directly
        _, xn, y = batches[i % len(batches)]
        with frozen(bare):
            leaf = input_leaf(xn)
            torch.autograd.grad(target_logit_sum(bare(leaf), y), leaf)

    report: dict[str, Any] = {}
    given = dict(params or {})
    for name in methods:
        method = get_method(name, **dict(given.get(name, SMALL_PARAMS.get(name, {}))))
        m_wrapped = method.resolve(wrapped, (3, size, size))
        m_bare = method.resolve(bare, (3, size, size))
        gen_w = torch.Generator(device=dev).manual_seed(seed)
        gen_b = torch.Generator(device=dev).manual_seed(seed)

        def run_wrapped(i: int, m=m_wrapped, g=gen_w) -> None:
            x, _, y = batches[i % len(batches)]
            m(wrapped, x, y, generator=g)

        def run_bare(i: int, m=m_bare, g=gen_b) -> None:
            _, xn, y = batches[i % len(batches)]
            m(bare, xn, y, generator=g)

        pair = paired_ratio(run_wrapped, run_bare, dev, rounds, min_seconds)
        fb = paired_ratio(floor, run_bare, dev, 3, 0.0)  # the floor, next to the bare side
        passes = method.passes_per_image
        rate_w, rate_b = batch_size / pair["a_s"], batch_size / pair["b_s"]
        rate_fb = batch_size / fb["a_s"]
        report[name] = {
            "params": m_wrapped.params,
            "passes_per_image": passes,
            "ratio": round(pair["ratio"], 3),
            "ratio_quartiles": [round(pair["q1"], 3), round(pair["q3"], 3)],
            "rounds": pair["rounds"],
            "wrapped_img_s": round(rate_w, 2),
            "bare_img_s": round(rate_b, 2),
            "forward_backward_img_s": round(rate_fb, 2),
            "efficiency_wrapped": round(rate_w * passes / rate_fb, 3),
            "efficiency_bare": round(rate_b * passes / rate_fb, 3),
        }
    worst = min((r["ratio"] for r in report.values()), default=1.0)
    return {
        "benchmark": "wrapped-model",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": model,
        "image_size": size,
        "batch_size": batch_size,
        "n_batches": len(batches),
        "methods": report,
        "worst_ratio": worst,
        "target": f">= {TARGET} (wrapped img/s / bare img/s, every method)",
        "passed": worst >= TARGET,
    }
