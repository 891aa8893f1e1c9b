"""`satpipe bench eval`: how fast evaluation attacks run, and how close they are to the floor.

    satpipe bench eval --model resnet10 --n-images 1024 --batch-size 512 --device cuda

On one model and one set of images it times PGD-5 (2/255, random start) and standard AutoAttack
(`satpipe.train.eval.attacks`, the reference code) at `eps`, and reports per attack:

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

Timing: the two attacks are timed with `alternate` (`rounds` runs each, alternated, min kept,
the counts taken from the fastest run); the floor's distinct model calls are timed together,
three rounds, min kept.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from satpipe.bench import device_name, headline_row
from satpipe.bench.config import EvalBenchConfig
from satpipe.bench.timing import alternate, torch_threads
from satpipe.core.device import resolve_device
from satpipe.core.version import __version__
from satpipe.train.eval.attacks import AttackContext, attack_set, clean_correct

SHARE_TARGET = 0.9  # PGD-5: at least 90% of its time in the model's passes


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


def _pass(model: nn.Module, x: torch.Tensor, grad: bool) -> None:
    """One model call on x, and a backward to x when `grad`."""
    if grad:
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xr).float().logsumexp(1).sum(), xr)
    else:
        with torch.no_grad():
            model(x)


def pass_seconds(model: nn.Module, x: torch.Tensor, calls: Iterable[tuple[int, bool]],
                 rounds: int = 3) -> dict[tuple[int, bool], float]:  # fmt: skip
    """Min seconds of one model call per distinct (batch, grad) in `calls`, timed together."""
    keys = sorted(set(calls))
    sides = {f"{b}{'g' if g else ''}": lambda _i, b=b, g=g: _pass(model, x[:b], g)
             for b, g in keys}  # fmt: skip
    t = alternate(sides, device=x.device, rounds=rounds)
    return {key: t.min(name) for key, name in zip(keys, sides, strict=True)}


def floor_seconds(calls: Counter, seconds: Mapping[tuple[int, bool], float]) -> float:
    """Time of the same model calls run alone: each call at its (batch, grad)'s seconds."""
    return sum(count * seconds[key] for key, count in calls.items())


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
    from satpipe.core.seeding import generator
    from satpipe.train.models import create_model, load_model

    if checkpoint is not None:
        from satpipe.data.loader import make_loader
        from satpipe.train.eval.subset import load_eval_set

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


def run(config: EvalBenchConfig) -> dict[str, Any]:
    """The `satpipe bench eval` report (JSON-ready); eps in /255 units. See the module doc.
    torch runs `config.threads` threads (restored afterwards)."""
    with torch_threads(config.threads):
        return _run(config)


def _run(config: EvalBenchConfig) -> dict[str, Any]:
    dev = resolve_device(config.device)
    net, x, y, arch, k = _model_and_data(
        config.model, config.checkpoint, config.data, config.n, config.size, config.classes,
        dev, config.seed,
    )  # fmt: skip
    batch_size, eps, seed = config.batch_size, config.eps, config.seed
    counter = PassCounter(net)
    clean = clean_correct(net, x, y, batch_size)
    counter.reset()
    report: dict[str, Any] = {
        "benchmark": "eval", "satpipe_version": __version__, "torch": torch.__version__,
        "device": device_name(dev), "model": arch, "n": len(y), "image_size": list(x.shape[1:]),
        "classes": k, "batch_size": batch_size, "eps": eps,
        "torch_threads": torch.get_num_threads(), "clean_accuracy": float(clean.float().mean()),
        "synthetic": config.checkpoint is None, "square_queries": config.square_queries,
    }  # fmt: skip
    pgd_ctx = AttackContext(eps=eps / 255, num_classes=k, seed=seed, steps=5, step_size=2 / 255)
    aa_ctx = AttackContext(
        eps=eps / 255, num_classes=k, seed=seed, square_queries=config.square_queries
    )

    def side(name: str, ctx: AttackContext) -> Callable[[int], Any]:
        def attack(_i: int) -> tuple[Any, Counter]:
            counter.reset()
            out = attack_set(net, name, x, y, clean, ctx, batch_size)
            return out, counter.reset()

        return attack

    ctxs = {"pgd": pgd_ctx, "autoattack": aa_ctx}
    timings = alternate({n: side(n, c) for n, c in ctxs.items()}, device=dev,
                        rounds=config.rounds)  # fmt: skip
    counted = {name: timings.best(name) for name in ctxs}
    every_call = [key for _, calls in counted.values() for key in calls]
    per_call = pass_seconds(net, x, every_call)
    counter.reset()
    for name, (out, calls) in counted.items():
        seconds = timings.min(name)
        floor = floor_seconds(calls, per_call)
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
    report["timing"] = timings.summary()
    counter.remove()
    return report


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The share of each attack's time spent in its model passes, AutoAttack / PGD-5 time, and
    (on CUDA) host syncs per PGD step."""
    pgd, aa = report["pgd"]["share_in_passes"], report["autoattack"]["share_in_passes"]
    rows = [
        headline_row(
            "eval PGD-5, time in model passes / attack time", pgd, f">= {SHARE_TARGET}",
            pgd >= SHARE_TARGET, "5 input-gradient passes and one prediction per batch",
        ),
        headline_row(
            "eval AutoAttack, time in model passes / attack time", aa, "- (informative)", None,
            "the reference code's work between passes (FAB's projections, Square's sampling)",
        ),
        headline_row(
            "eval time, AutoAttack / PGD-5", report["autoattack_over_pgd_time"],
            "- (informative)", None,
            "the points APGD-CE leaves robust: the later stages run only on those",
        ),
    ]  # fmt: skip
    syncs = report.get("host_syncs_per_pgd_step")
    if syncs is not None:
        rows.append(headline_row(
            "eval host syncs per PGD step (CUDA)", syncs, "0", syncs == 0,
            "nothing leaves the device inside the attack loop",
        ))  # fmt: skip
    return rows


def format_report(report: dict[str, Any]) -> str:
    """images/s, model passes and floor share per attack, then the time ratio and syncs."""
    lines = []
    for name in ("pgd", "autoattack"):
        r = report[name]
        f = r["image_forwards"]
        lines.append(
            f"{name:10s} {r['images_per_s']:9.1f} img/s  robust {r['robust_accuracy']:.3f}  "
            f"image-forwards {f['with_grad']} with grad, {f['no_grad']} without  "
            f"share in passes {r['share_in_passes']:.2f}"
        )
    lines.append(f"AutoAttack / PGD-5 time {report['autoattack_over_pgd_time']:.1f}x")
    syncs = report.get("host_syncs_per_pgd_step")
    if syncs is not None:
        lines.append(f"host syncs per PGD step {syncs:g}")
    return "\n".join(lines)
