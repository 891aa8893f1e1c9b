"""`satpipe bench models`: what wrapping costs. A model from a source (`torchvision:resnet18`)
through satpipe against the same network called bare, for each saliency method.

satpipe puts the input normalisation in front of a library model (a forward pre-hook running
`(x - mean) / std`) and the methods add their checks (Guided Backprop's activation plan, the
Grad-CAM layer, both found once per model). The bare side is the identical network (same
class, same weights) with no hook, fed inputs normalised beforehand, outside the timer, and
run through the same method code, so the ratio isolates what the wrapping adds:

    ratio = img/s(method on the wrapped model) / img/s(method on the bare model)  (>= 0.95)

The sides are timed with `alternate` in mirrored rounds, one batch per call, so rounds 2k and
2k+1 are an ABBA pair (a load that drifts linearly cancels). On a CPU the clock is the
process's CPU time (on a shared machine run it with one torch thread, `--threads 1`: spinning
threads count as CPU time too); on a GPU, wall time. The ratio is the median over ABBA pairs of the
pair's bare seconds / wrapped seconds, with the quartiles of those ratios as its spread.
`efficiency` is the figure of `satpipe bench saliency`, img/s x passes per image / img/s of one
forward+backward pass, with the bare model's forward+backward (a third side of the same
rounds) as the floor for both sides.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import ModelsBenchConfig
from satpipe.bench.timing import Timings, alternate, forward_backward, torch_threads
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.version import __version__
from satpipe.pipeline.methods import get_method
from satpipe.train.models import create_model, input_norm

SMALL_PARAMS = {"smoothgrad": {"samples": 2}, "ig": {"steps": 2}}
TARGET = 0.95
MAX_PAIRS = 200  # ABBA pairs at most, however short the calls


def bare_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network without satpipe's normalisation hook and module."""
    bare = copy.deepcopy(model)
    bare._forward_pre_hooks.clear()
    del bare.satpipe_normalize
    return bare


def abba_ratios(timings: Timings, a: str, b: str) -> list[float]:
    """Per ABBA pair of rounds (2k, 2k+1 of a mirrored `alternate`): b seconds / a seconds
    (a trailing unpaired round is dropped; one round alone is its own ratio)."""
    sa, sb = timings.seconds[a], timings.seconds[b]
    if len(sa) < 2:
        return [sb[0] / sa[0]]
    pairs = range(0, len(sa) - 1, 2)
    return [(sb[i] + sb[i + 1]) / (sa[i] + sa[i + 1]) for i in pairs]


def run(config: ModelsBenchConfig) -> dict[str, Any]:
    """{"methods": {name: {ratio, ratio_quartiles, wrapped_img_s, bare_img_s,
    efficiency_wrapped, efficiency_bare, passes_per_image, ...}}, "worst_ratio", "passed"}
    on random (B, 3, size, size) images and an untrained `config.model` (speed does not depend
    on the weights), with `config.threads` torch threads (restored afterwards)."""
    with torch_threads(config.threads):
        return _run(config)


def _run(config: ModelsBenchConfig) -> dict[str, Any]:
    dev = resolve_device(config.device)
    size, batch_size, k = config.size, config.batch_size, config.num_classes
    torch.manual_seed(config.seed)
    wrapped = create_model(config.model, k).to(dev).eval()
    if not hasattr(wrapped, "satpipe_normalize"):
        raise SatpipeError(
            f"bench models: {config.model} is a built-in model: it has no wrapper to measure "
            "(give a library model, e.g. torchvision:resnet18)"
        )
    bare = bare_copy(wrapped)
    if dev.type == "cuda":
        wrapped = wrapped.to(memory_format=torch.channels_last)
        bare = bare.to(memory_format=torch.channels_last)
    norm = input_norm(wrapped)
    gen = torch.Generator().manual_seed(config.seed)
    batches = []
    for _ in range(config.n_batches):
        x = torch.rand((batch_size, 3, size, size), generator=gen).to(dev)
        y = torch.randint(0, k, (batch_size,), generator=gen).to(dev)
        with torch.no_grad():
            xn = (x - norm.mean) / norm.std
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            xn = xn.contiguous(memory_format=torch.channels_last)
        batches.append((x, xn, y))

    def floor(i: int) -> None:  # one forward+backward of the bare model, called directly
        _, xn, y = batches[i % len(batches)]
        forward_backward(bare, xn, y)

    # CPU time on a CPU (other processes' load barely moves it); wall time on a GPU, where
    # the work runs outside the process's CPU time.
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    methods: dict[str, Any] = {}
    for name in config.methods:
        method = get_method(name, **config.params.get(name, SMALL_PARAMS.get(name, {})))
        m_wrapped = method.resolve(wrapped, (3, size, size))
        m_bare = method.resolve(bare, (3, size, size))
        gen_w = torch.Generator(device=dev).manual_seed(config.seed)
        gen_b = torch.Generator(device=dev).manual_seed(config.seed)

        def run_wrapped(i: int, m=m_wrapped, g=gen_w) -> None:
            x, _, y = batches[i % len(batches)]
            m(wrapped, x, y, generator=g)

        def run_bare(i: int, m=m_bare, g=gen_b) -> None:
            _, xn, y = batches[i % len(batches)]
            m(bare, xn, y, generator=g)

        # One warm-up call each (plans, caches, allocator); the floor sits next to the bare
        # side, so mirrored rounds run wrapped, bare, floor, floor, bare, wrapped.
        t = alternate(
            {"wrapped": run_wrapped, "bare": run_bare, "floor": floor}, device=dev,
            rounds=2 * config.rounds, warmup=1, floor_seconds=config.floor_seconds,
            max_rounds=2 * MAX_PAIRS, mirror=True, clock=clock,
        )  # fmt: skip
        ratios = abba_ratios(t, "wrapped", "bare")
        q1, med, q3 = (float(v) for v in np.quantile(ratios, [0.25, 0.5, 0.75]))
        passes = method.passes_per_image
        rate_w, rate_b = batch_size / t.min("wrapped"), batch_size / t.min("bare")
        rate_fb = batch_size / t.min("floor")
        methods[name] = {
            "params": m_wrapped.params,
            "passes_per_image": passes,
            "ratio": round(med, 3),
            "ratio_quartiles": [round(q1, 3), round(q3, 3)],
            "rounds": len(ratios),
            "wrapped_img_s": round(rate_w, 2),
            "bare_img_s": round(rate_b, 2),
            "forward_backward_img_s": round(rate_fb, 2),
            "efficiency_wrapped": round(rate_w * passes / rate_fb, 3),
            "efficiency_bare": round(rate_b * passes / rate_fb, 3),
            "timing": t.summary(),
        }
    worst = min((r["ratio"] for r in methods.values()), default=1.0)
    return {
        "benchmark": "models",
        "satpipe_version": __version__,
        "torch": torch.__version__,
        "device": device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "clock": "wall" if dev.type == "cuda" else "process cpu",
        "model": config.model,
        "image_size": size,
        "batch_size": batch_size,
        "n_batches": len(batches),
        "methods": methods,
        "worst_ratio": worst,
        "target": f">= {TARGET} (wrapped img/s / bare img/s, every method)",
        "passed": worst >= TARGET,
    }


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Wrapped / bare img/s per method (target >= 0.95)."""
    return [
        headline_row(
            f"img/s, wrapped / bare {report['model']}, {name}", m["ratio"], f">= {TARGET}",
            m["ratio"] >= TARGET,
            "the normalisation pre-hook: one (x - mean) / std per forward",
        )
        for name, m in report["methods"].items()
    ]  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """Per method: the ratio with its quartiles, both rates, then the worst ratio."""
    lines = [
        f"{name:18s} ratio {m['ratio']:.3f} [{m['ratio_quartiles'][0]:.3f}, "
        f"{m['ratio_quartiles'][1]:.3f}]  wrapped {m['wrapped_img_s']:.1f} img/s, "
        f"bare {m['bare_img_s']:.1f} img/s  efficiency {m['efficiency_wrapped']:.2f}"
        for name, m in report["methods"].items()
    ]
    lines.append(f"worst ratio {report['worst_ratio']:.3f} (target {report['target']})")
    return "\n".join(lines)
