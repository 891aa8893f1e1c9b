"""The machine yardstick that time budgets are written against: the img/s of `smallcnn`'s
input-gradient forward+backward on 32x32 images in batches of 64 (about 500 on the 2-core machine
the budgets are stated for; the same machine drifts), measured where a job runs in about a second,
so a report can scale its wall time to the reference machine (`scaled_minutes`).
"""

from __future__ import annotations

import torch

from satpipe.bench.timing import alternate, forward_backward, torch_threads
from satpipe.core.device import resolve_device
from satpipe.train.models import create_model

YARDSTICK = "smallcnn input-gradient forward+backward, 32x32, batch 64"
REFERENCE_IMG_S = 500.0  # the slow 2-core machine the budgets are written for
_BATCH, _SIZE, _CLASSES = 64, 32, 10


def yardstick_rate(
    device: str = "cpu", floor_seconds: float = 0.6, threads: int | None = None
) -> tuple[float, float]:
    """(typical, best) img/s of the yardstick on `device` (`auto`: CUDA when present): from the
    median and the fastest of repeated forward+backward calls over at least `floor_seconds`,
    on an untrained smallcnn (speed does not depend on the weights), with `threads` torch
    threads (None: as they are). A job of minutes runs at the machine's typical speed, so
    scaling uses the median; the fastest call (the benchmarks' figure) catches bursts on a
    shared machine (here it read 800-1,650 img/s within an hour)."""
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(_BATCH, 3, _SIZE, _SIZE, generator=generator).to(dev)
    y = torch.randint(0, _CLASSES, (_BATCH,), generator=generator).to(dev)
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model("smallcnn", _CLASSES).to(dev).eval()

        timings = alternate(
            {"yardstick": lambda _i: forward_backward(net, x, y)}, device=dev, warmup=2, rounds=3,
            floor_seconds=floor_seconds,
        )  # fmt: skip
    return _BATCH / timings.median("yardstick"), _BATCH / timings.min("yardstick")


def scaled_minutes(seconds: float, rate: float) -> float:
    """Minutes `seconds` of work at yardstick `rate` would take on the reference machine
    (REFERENCE_IMG_S): the time scaled by the speed ratio, as the budgets are meant."""
    return seconds * rate / REFERENCE_IMG_S / 60
