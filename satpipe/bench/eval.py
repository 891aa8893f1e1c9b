"""`satpipe bench eval`: how fast PGD-5 and standard AutoAttack run on one model and one set of
images, and how close they are to the floor: img/s, the model calls each made (a forward hook),
the share of its time those calls take alone (PGD-5 >= 0.9), and on CUDA the host syncs per PGD
step (0). Without a checkpoint the model is untrained and its own predictions are the labels;
AutoAttack's later stages run only on the points that survive, so their fractions are kept.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

from satpipe.bench.base import BENCHMARKS, Part, at_least, headline_row, report_head
from satpipe.bench.timing import alternate, torch_threads
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.train.config import check_model_options
from satpipe.train.eval.attacks import AttackContext, attack_set, clean_correct

SHARE_TARGET = 0.9  # PGD-5: at least 90% of its time in the model's passes


def bench_eval(
    *, model: str = "smallcnn", n: int = 256, batch_size: int = 256, size: int = 32,
    classes: int = 10, eps: float = 8.0, device: str = "auto", checkpoint: str | None = None,
    data: str | None = None, square_queries: int = 5000, rounds: int = 1,
    threads: int | None = None, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The report on `n` random (size x size) images and an untrained `model` of `classes`
    classes, or a trained `checkpoint` on `data`'s test split (default: its own); eps in /255
    units; `threads` torch threads (restored afterwards)."""
    if checkpoint is None:
        check_model_options(model, None, None)
    at_least(1, n_images=n, batch_size=batch_size, square_queries=square_queries, rounds=rounds,
             threads=threads)  # fmt: skip
    at_least(2, classes=classes)
    if not eps > 0:
        raise SatpipeError(f"--eps must be > 0, got {eps}")
    dev = resolve_device(device)
    with torch_threads(threads):
        net, x, y, arch, k = _model_and_data(model, checkpoint, data, n, size, classes, dev, seed)
        calls: Counter[tuple[int, bool]] = Counter()  # (batch size, with gradient) -> calls

        def count(_module: nn.Module, inputs: tuple, _output: Any) -> None:
            calls[(int(inputs[0].shape[0]), torch.is_grad_enabled())] += 1

        hook = net.register_forward_hook(count)
        clean = clean_correct(net, x, y, batch_size)
        report: dict[str, Any] = {
            **report_head("eval", dev), "model": arch, "n": len(y),
            "image_size": list(x.shape[1:]), "classes": k, "batch_size": batch_size, "eps": eps,
            "clean_accuracy": float(clean.float().mean()), "synthetic": checkpoint is None,
            "square_queries": square_queries,
        }  # fmt: skip
        ctxs = {
            "pgd": AttackContext(eps=eps / 255, num_classes=k, seed=seed, steps=5,
                                 step_size=2 / 255),
            "autoattack": AttackContext(eps=eps / 255, num_classes=k, seed=seed,
                                        square_queries=square_queries),
        }  # fmt: skip

        def side(name: str):
            def attack(_i: int) -> tuple[Any, Counter]:
                calls.clear()
                out = attack_set(net, name, x, y, clean, ctxs[name], batch_size)
                return out, Counter(calls)

            return attack

        timings = alternate({name: side(name) for name in ctxs}, device=dev, rounds=rounds)
        counted = {name: timings.best(name) for name in ctxs}
        per_call = pass_seconds(net, x, [key for _, c in counted.values() for key in c])
        for name, (out, c) in counted.items():
            report[name] = _attack_row(out, c, timings.min(name), per_call, len(y))
        aa_over_pgd = report["autoattack"]["seconds"] / report["pgd"]["seconds"]
        report["autoattack_over_pgd_time"] = aa_over_pgd
        report["host_syncs_per_pgd_step"] = _host_syncs(net, x, y, clean, ctxs["pgd"], batch_size)
        report["timing"] = timings.summary()
        hook.remove()
        return report


def _attack_row(out: Any, calls: Counter, seconds: float, per_call: dict, n: int) -> dict:
    """One attack's figures: img/s, robust fractions, the model calls it made and the share of
    its time those calls take when run alone (each at its (batch, grad)'s seconds)."""
    floor = sum(count * per_call[key] for key, count in calls.items())
    return {
        "seconds": seconds, "images_per_s": n / seconds,
        "robust_accuracy": float(out.correct.float().mean()),
        "stages": {s: float(v.float().mean()) for s, v in out.components.items()},
        "image_forwards": {"with_grad": sum(b * c for (b, g), c in calls.items() if g),
                           "no_grad": sum(b * c for (b, g), c in calls.items() if not g)},
        "model_calls": sum(calls.values()), "floor_s": floor, "share_in_passes": floor / seconds,
    }  # fmt: skip


def pass_seconds(model: nn.Module, x: torch.Tensor, calls: list[tuple[int, bool]],
                 rounds: int = 3) -> dict[tuple[int, bool], float]:  # fmt: skip
    """Min seconds of one model call per distinct (batch, grad) in `calls`, timed together:
    a forward, and a backward to the input where the attack took a gradient."""

    def one(b: int, grad: bool) -> None:
        if grad:
            xr = x[:b].clone().requires_grad_(True)
            torch.autograd.grad(model(xr).float().logsumexp(1).sum(), xr)
        else:
            with torch.no_grad():
                model(x[:b])

    keys = sorted(set(calls))
    sides = {f"{b}{'g' if g else ''}": lambda _i, b=b, g=g: one(b, g) for b, g in keys}
    t = alternate(sides, device=x.device, rounds=rounds)
    return {key: t.min(name) for key, name in zip(keys, sides, strict=True)}


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
    """(net in eval mode, x (n, 3, size, size) in [0, 1], y, architecture, classes)."""
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


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The share of each attack's time spent in its model passes, AutoAttack / PGD-5 time, and
    (on CUDA) host syncs per PGD step."""
    pgd, aa = report["pgd"]["share_in_passes"], report["autoattack"]["share_in_passes"]
    rows = [
        headline_row(
            "eval PGD-5, time in model passes / attack time", pgd, f">= {SHARE_TARGET}",
            "5 input-gradient passes and one prediction per batch",
        ),
        headline_row(
            "eval AutoAttack, time in model passes / attack time", aa, "- (informative)",
            "the reference code's work between passes (FAB's projections, Square's sampling)",
        ),
        headline_row(
            "eval time, AutoAttack / PGD-5", report["autoattack_over_pgd_time"],
            "- (informative)",
            "the points APGD-CE leaves robust: the later stages run only on those",
        ),
    ]  # fmt: skip
    syncs = report.get("host_syncs_per_pgd_step")
    if syncs is not None:
        rows.append(headline_row(
            "eval host syncs per PGD step (CUDA)", syncs, "0",
            "nothing leaves the device inside the attack loop", syncs == 0,
        ))  # fmt: skip
    return rows


BENCHMARKS.register("eval", Part(
    bench_eval, headline,
    "PGD-5 vs AutoAttack img/s, time share in model passes, syncs/step (`all`: only by name)",
    shared=("model", "size", "device"),
    options={
        "n": ("--n-images", "Images attacked."),
        "batch_size": "Images per attack batch.",
        "classes": "Classes of the untrained model.",
        "eps": "eps of both attacks, /255 units.",
        "checkpoint": "A trained checkpoint to attack instead.",
        "data": "Dataset store for --checkpoint (default: its own).",
        "square_queries": "Square's queries (AutoAttack's standard: 5000).",
        "rounds": "Timed runs of each attack, alternated (min is kept).",
        "threads": "torch threads for the run (default: torch's).",
    },
    # 10 classes: at 8/255 the untrained model's own labels survive APGD-CE, so every stage
    # runs on every point (~2900 small model calls, ~30 s on one CPU thread even at quick
    # sizes, far more at full size), hence not part of the default `all`. One thread: on 2
    # loaded cores, 2 threads made the same quick run take 10 minutes.
    quick={"n": 16, "batch_size": 16, "size": 16, "square_queries": 50, "threads": 1},
    in_all=False,
))  # fmt: skip
