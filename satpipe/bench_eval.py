"""`satpipe bench eval`: how fast evaluation attacks run, and how close they are to the floor.

    from satpipe.bench_eval import bench_eval
    report = bench_eval(model="resnet10", n=1024, batch_size=512, device="cuda")

On one model and one set of images it times PGD-5 (2/255, random start) and standard AutoAttack
(`satpipe.train.attacks`, the reference code) at `eps`, and reports per attack:

- images_per_s: evaluated images per second (the whole attack, clean pass included);
- passes: the model calls the attack made, as image-forwards with and without a gradient
  (counted by a forward hook), so the cost is comparable across machines;
- floor_s / share_in_passes: the time the same model calls take alone (each distinct batch
  size timed: forward, plus backward to the input where the attack took a gradient), and that
  time's share of the attack's. 1.0 means the attack is nothing but model passes;
- host_syncs_per_step (CUDA only): synchronisations per PGD step, counted by
  torch.cuda.set_sync_debug_mode (0 by construction: nothing leaves the device in the loop).

Without a checkpoint the model is freshly initialised and the labels are its own predictions,
so clean accuracy is 100% and the run needs no data; AutoAttack's cost grows with the points
that survive its first stage (its later stages run only on those), so the report records the
robust fraction after each stage. Pass `checkpoint` (and `data`) for a real model.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from satpipe.device import resolve_device
from satpipe.train.attacks import AttackContext, attack_set, clean_correct
from satpipe.train.attacks.base import SQUARE_QUERIES


class PassCounter:
    """Counts the model's calls by (batch size, with gradient) through a forward hook."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: Counter[tuple[int, bool]] = Counter()
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls[(int(inputs[0].shape[0]), torch.is_grad_enabled())] += 1

    def reset(self) -> Counter[tuple[int, bool]]:
        calls, self.calls = self.calls, Counter()
        return calls

    def remove(self) -> None:
        self._handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass_time(model: nn.Module, x: torch.Tensor, grad: bool, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds of one model call on x (and a backward to x when `grad`)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(x.device)
        start = time.perf_counter()
        if grad:
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(model(xr).float().logsumexp(1).sum(), xr)
        else:
            with torch.no_grad():
                model(x)
        _sync(x.device)
        best = min(best, time.perf_counter() - start)
    return best


def floor_seconds(model: nn.Module, x: torch.Tensor, calls: Counter) -> float:
    """Time of the same model calls run alone: each distinct (batch, grad) timed once."""
    return sum(count * _pass_time(model, x[:batch], grad) for (batch, grad), count in calls.items())


def _timed(run: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = run()
    _sync(device)
    return out, time.perf_counter() - start


def _host_syncs(model, x, y, clean, ctx, batch_size) -> float | None:
    """Syncs per PGD step on CUDA (torch's sync debug mode warns once per sync)."""
    if x.device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attack_set(model, "pgd", x[:batch_size], y[:batch_size], clean[:batch_size], ctx,
                       batch_size)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode(0)
    # The final transfer of the correctness bits is one sync per call, not per step.
    return max(0, len(caught) - 1) / ctx.steps


def _model_and_data(model, checkpoint, data, n, size, classes, device, seed):
    from satpipe.seeding import generator
    from satpipe.train.models import create_model, load_model

    if checkpoint is not None:
        from satpipe.data.loader import make_loader
        from satpipe.train.evalset import load_eval_set

        net, state = load_model(checkpoint, device)
        data = data or (state.get("config") or {}).get("data")
        loader = make_loader(data, "test", None, batch_size=256, shuffle=False, device=device)
        evalset = load_eval_set(loader, min(n, loader.num_rows), seed)
        return net.eval(), evalset.x, evalset.y, state["model"]["arch"], loader.num_classes
    torch.manual_seed(seed)
    net = create_model(model, classes).to(device).eval()
    x = torch.rand((n, 3, size, size), generator=generator(seed, 0xBE, device=device),
                   device=device)  # fmt: skip
    with torch.no_grad():
        y = torch.cat([net(x[i : i + 256]).argmax(1) for i in range(0, n, 256)])
    return net, x, y, model, classes


def bench_eval(
    model: str = "smallcnn",
    n: int = 256,
    batch_size: int = 256,
    size: int = 32,
    classes: int = 10,
    eps: float = 8.0,
    device: str = "auto",
    checkpoint: str | None = None,
    data: str | None = None,
    seed: int = 0,
    square_queries: int = SQUARE_QUERIES,
) -> dict[str, Any]:
    """The `satpipe bench eval` report (JSON-ready); eps in /255 units. See the module doc."""
    dev = resolve_device(device)
    net, x, y, arch, k = _model_and_data(model, checkpoint, data, n, size, classes, dev, seed)
    counter = PassCounter(net)
    clean = clean_correct(net, x, y, batch_size)
    counter.reset()
    report: dict[str, Any] = {
        "device": str(dev), "model": arch, "n": len(y), "image_size": list(x.shape[1:]),
        "classes": k, "batch_size": batch_size, "eps": eps,
        "torch_threads": torch.get_num_threads(), "clean_accuracy": float(clean.float().mean()),
        "synthetic": checkpoint is None,
    }  # fmt: skip
    pgd_ctx = AttackContext(eps=eps / 255, num_classes=k, seed=seed, steps=5, step_size=2 / 255)
    aa_ctx = AttackContext(eps=eps / 255, num_classes=k, seed=seed, square_queries=square_queries)
    for name, ctx in (("pgd", pgd_ctx), ("autoattack", aa_ctx)):
        out, seconds = _timed(lambda n=name, c=ctx: attack_set(net, n, x, y, clean, c, batch_size),
                              dev)  # fmt: skip
        calls = counter.reset()
        floor = floor_seconds(net, x, calls)
        counter.reset()
        report[name] = {
            "seconds": seconds,
            "images_per_s": len(y) / seconds,
            "robust_accuracy": float(out.correct.float().mean()),
            "stages": {s: float(v.float().mean()) for s, v in out.components.items()},
            "image_forwards": {"with_grad": sum(b * c for (b, g), c in calls.items() if g),
                               "no_grad": sum(b * c for (b, g), c in calls.items() if not g)},
            "model_calls": sum(calls.values()),
            "floor_s": floor,
            "share_in_passes": floor / seconds,
        }  # fmt: skip
    report["autoattack_over_pgd_time"] = report["autoattack"]["seconds"] / report["pgd"]["seconds"]
    report["host_syncs_per_pgd_step"] = _host_syncs(net, x, y, clean, pgd_ctx, batch_size)
    counter.remove()
    return report
