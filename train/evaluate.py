"""Robustness evaluation: clean, FGSM and PGD accuracy over an eps grid, plus the
gradient-masking sanity checks of DESIGN.md ("Evaluation and reports").

`evaluate(RUN)` writes RUN/results.json and RUN/results.md. Accuracies are percentages and eps
keys are integers (or decimals) in /255 units as strings, the run-record format that
`satpipe.train.report` reads. PGD uses a uniform random start drawn from a generator seeded by
(attack seed, batch index), so the same call gives the same numbers. Evaluation runs in fp32,
model in eval mode: attacks should not be weakened by reduced precision.

Sanity checks (a model that fails one is probably masking gradients, not robust):
  eps0_equals_clean     PGD and FGSM at eps=0 give the clean accuracy
  non_increasing_in_eps PGD accuracy never rises with eps (up to `tolerance`)
  pgd_le_fgsm           PGD is at least as strong as FGSM at every eps
  large_eps_near_zero   PGD at a very large eps (64/255, step 2.5*eps/steps, no random start)
                        drives accuracy below chance + `large_eps_margin`
  more_steps_never_help PGD with 2x the steps is not weaker at the largest eps of the grid
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.device import resolve_device
from satpipe.errors import SatpipeError
from satpipe.progress import progress
from satpipe.seeding import generator
from satpipe.train.attacks import fgsm, pgd
from satpipe.train.checkpoint import file_sha256
from satpipe.train.config import LARGE_EPS, EvalConfig
from satpipe.train.models import load_model


def clean_accuracy(model: nn.Module, loader, amp: bool = False) -> float:
    """Fraction of `loader`'s rows that `model` (put in eval mode, then restored) classifies
    correctly; `amp` uses bf16 autocast on CUDA."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), autocast:
            for x, _, y in loader:
                correct += (model(x).argmax(1) == y).sum()
                n += len(y)
    finally:
        model.train(was)
    return correct.item() / max(n, 1)


def _key(eps: float) -> str:
    return str(int(eps)) if float(eps).is_integer() else f"{eps:g}"


ATTACK_STREAM = 0xE7A1  # tags the attacks' random starts apart from every other stream


def _attack_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    return generator(seed, batch, ATTACK_STREAM, device=device)


def robustness(
    model: nn.Module,
    loader,
    eps: Sequence[float] = (0, 1, 2, 3, 4, 8),
    steps: int = 5,
    step_size: float = 2.0,
    seeds: Sequence[int] = (0,),
    large_eps: float = LARGE_EPS,
) -> dict[str, Any]:
    """Raw accuracies (fractions) of `model` on `loader`; eps and step_size in /255 units.

    Returns {"n", "clean", "fgsm": {eps: acc}, "pgd": {eps: [acc per seed]},
    "pgd_large": acc, "pgd_double_steps": acc at max(eps) with 2*steps (first seed)}.
    """
    model.eval()
    grid = sorted({0.0, *(float(e) for e in eps)})
    top = grid[-1]
    device = next(model.parameters()).device
    counts: dict[str, Any] = {
        "clean": 0,
        "fgsm": dict.fromkeys(grid, 0),
        "pgd": {e: [0] * len(seeds) for e in grid},
        "pgd_large": 0,
        "pgd_double_steps": 0,
    }
    n = 0

    def hits(x_in: torch.Tensor, y: torch.Tensor) -> int:
        with torch.no_grad():
            return int((model(x_in).argmax(1) == y).sum())

    large_step = 2.5 * large_eps / max(steps, 1) / 255  # Madry's rule: can reach the ball's edge
    with progress("attacking", len(loader)) as advance:
        for b, (x, _, y) in enumerate(loader):
            n += len(y)
            counts["clean"] += hits(x, y)
            for e in grid:
                counts["fgsm"][e] += hits(fgsm(model, x, y, e / 255), y)
                for i, seed in enumerate(seeds):
                    g = _attack_generator(seed, b, device)
                    x_adv = pgd(model, x, y, e / 255, step_size / 255, steps, generator=g)
                    counts["pgd"][e][i] += hits(x_adv, y)
            # No random start here: a model with zero gradients then keeps its clean accuracy
            # and fails loudly, instead of being "attacked" by the random start alone.
            x_large = pgd(model, x, y, large_eps / 255, large_step, max(steps, 1), False)
            counts["pgd_large"] += hits(x_large, y)
            g = _attack_generator(seeds[0], b, device)
            counts["pgd_double_steps"] += hits(
                pgd(model, x, y, top / 255, step_size / 255, 2 * steps, generator=g), y
            )
            advance()
    if n == 0:
        raise SatpipeError("evaluation split has no rows")
    return {
        "n": n,
        "clean": counts["clean"] / n,
        "fgsm": {e: c / n for e, c in counts["fgsm"].items()},
        "pgd": {e: [c / n for c in cs] for e, cs in counts["pgd"].items()},
        "pgd_large": counts["pgd_large"] / n,
        "pgd_double_steps": counts["pgd_double_steps"] / n,
    }


def sanity_checks(
    raw: dict[str, Any],
    num_classes: int,
    tolerance: float | None = None,
    large_eps: float = LARGE_EPS,
    large_eps_margin: float = 0.05,
) -> list[dict[str, Any]]:
    """The five gradient-masking checks on `robustness()` output; each {name, passed, detail}.

    `tolerance` (fraction) absorbs the randomness of PGD's start; default max(1%, 2/n).
    """
    n = raw["n"]
    tol = max(0.01, 2.0 / n) if tolerance is None else tolerance
    grid = sorted(raw["pgd"])
    pgd_mean = {e: float(np.mean(raw["pgd"][e])) for e in grid}
    clean = raw["clean"]
    checks = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    exact = 1.0 / n + 1e-12  # one image: GPU kernels may flip a borderline prediction
    gap = max(abs(pgd_mean[0.0] - clean), abs(raw["fgsm"][0.0] - clean))
    add(
        "eps0_equals_clean",
        gap <= exact,
        f"clean {100 * clean:.2f}%, PGD(0) {100 * pgd_mean[0.0]:.2f}%, "
        f"FGSM(0) {100 * raw['fgsm'][0.0]:.2f}%",
    )
    rises = [
        (a, b) for a, b in zip(grid, grid[1:], strict=False) if pgd_mean[b] > pgd_mean[a] + tol
    ]
    add(
        "non_increasing_in_eps",
        not rises,
        "PGD accuracy never rises with eps"
        if not rises
        else "; ".join(
            f"PGD {100 * pgd_mean[a]:.2f}% at {_key(a)}/255 < {100 * pgd_mean[b]:.2f}% "
            f"at {_key(b)}/255"
            for a, b in rises
        ),
    )
    weaker = [e for e in grid if pgd_mean[e] > raw["fgsm"][e] + tol]
    add(
        "pgd_le_fgsm",
        not weaker,
        "PGD <= FGSM at every eps"
        if not weaker
        else "; ".join(
            f"PGD {100 * pgd_mean[e]:.2f}% > FGSM {100 * raw['fgsm'][e]:.2f}% at {_key(e)}/255"
            for e in weaker
        ),
    )
    limit = 1.0 / num_classes + large_eps_margin
    add(
        "large_eps_near_zero",
        raw["pgd_large"] <= limit,
        f"PGD at {_key(large_eps)}/255: {100 * raw['pgd_large']:.2f}% "
        f"(limit: chance + margin = {100 * limit:.2f}%)",
    )
    top = grid[-1]
    add(
        "more_steps_never_help",
        raw["pgd_double_steps"] <= raw["pgd"][top][0] + tol,
        f"at {_key(top)}/255: {100 * raw['pgd'][top][0]:.2f}% with the grid's steps, "
        f"{100 * raw['pgd_double_steps']:.2f}% with twice as many",
    )
    return checks


def _train_time(run_dir: Path) -> float | None:
    """Seconds of training in RUN/metrics.jsonl: the epochs' loops plus the overfitting
    guard's checks (part of what the method costs); evaluation on the test split excluded."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    total = 0.0
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            total += float(record.get("seconds", 0.0)) + float(record.get("guard_seconds", 0.0))
    return total


def results_markdown(results: dict[str, Any]) -> str:
    """results.md: the accuracy table and the sanity checks, for a person to read."""
    a = results["attack"]
    lines = [
        f"# Robustness: {results.get('variant') or 'model'} ({results['arch']})",
        "",
        f"Test split of `{results['data']}`, {results['n']} images. Clean accuracy "
        f"**{results['clean']:.2f}%**. PGD: {a['steps']} steps of {a['step_size']}/255, random "
        f"start, seeds {', '.join(map(str, a['seeds']))} (mean ± std over seeds).",
        "",
        "| eps (/255) | FGSM (%) | PGD (%) |",
        "|---:|---:|---:|",
    ]
    for key in results["pgd"]:
        lines.append(
            f"| {key} | {results['fgsm'][key]:.2f} | {results['pgd'][key]:.2f} ± "
            f"{results['pgd_std'][key]:.2f} |"
        )
    stopped = results.get("stopped")
    if stopped:
        lines += [
            "",
            f"Training was stopped by the catastrophic-overfitting guard after epoch "
            f"{stopped['epoch'] + 1}; these are the weights of epoch "
            f"{stopped['restored_epoch'] + 1} (best held-out PGD accuracy).",
        ]
    lines += ["", "## Gradient-masking sanity checks", ""]
    for c in results["checks"]:
        lines.append(f"- {'PASS' if c['passed'] else '**FAIL**'} `{c['name']}`: {c['detail']}")
    if not results["checks_passed"]:
        lines += [
            "",
            "**Some checks failed: these accuracies may reflect gradient masking, "
            "not robustness.**",
        ]
    return "\n".join(lines) + "\n"


def evaluate(run: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Evaluate a run directory (its checkpoint.pt) or a checkpoint file on the test split.

    options: the fields of `EvalConfig` (data, eps grid and PGD steps/step size in /255 units,
    seeds, batch_size, device, large_eps, strict, out, storage_options, ...). 0 is always added
    to the eps grid (the first sanity check needs it); PGD is reported as mean and std over
    the seeds. With `strict` (the default) a failed sanity check raises SatpipeError after the
    files are written.

    Returns:
        The results dict written to OUT/results.json (accuracies in %, eps keys in /255 units).
    """
    cfg = EvalConfig(run=str(run), **options)
    ckpt, model, state, loader = _open_for_eval(cfg)
    num_classes = state["model"]["num_classes"]
    raw = robustness(model, loader, cfg.eps, cfg.steps, cfg.step_size, cfg.seeds, cfg.large_eps)
    checks = sanity_checks(raw, num_classes, cfg.tolerance, cfg.large_eps, cfg.large_eps_margin)
    attack = {"steps": cfg.steps, "step_size": cfg.step_size, "random_start": True,
              "seeds": list(cfg.seeds), "large_eps": cfg.large_eps}  # fmt: skip
    results = _results(ckpt, state, str(loader.dataset.uri), raw, checks, attack)
    out_dir = Path(cfg.out) if cfg.out is not None else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    (out_dir / "results.md").write_text(results_markdown(results))
    warning = masking_warning(results)
    if cfg.strict and warning:
        raise SatpipeError(f"{warning}; see {out_dir / 'results.md'} (--no-strict to only warn)")
    return results


def _open_for_eval(cfg: EvalConfig):
    """(checkpoint path, model in eval mode, checkpoint dict, test loader) for `evaluate`."""
    from satpipe.data.loader import make_loader

    path = Path(cfg.run)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    dev = resolve_device(cfg.device)
    model, state = load_model(ckpt, dev)
    data = cfg.data or (state.get("config") or {}).get("data")
    if not data:
        raise SatpipeError(f"{ckpt}: checkpoint does not name its dataset; pass --data")
    loader = make_loader(
        data, "test", None, batch_size=cfg.batch_size, shuffle=False, augment=False, device=dev,
        storage_options=cfg.storage_options,
    )  # fmt: skip
    num_classes = state["model"]["num_classes"]
    if loader.num_classes != num_classes:
        raise SatpipeError(f"{data}: has {loader.num_classes} classes, the model {num_classes}")
    return ckpt, model, state, loader


def _results(ckpt: Path, state, data: str, raw, checks, attack) -> dict[str, Any]:
    """The results.json dict: accuracies in %, eps keys in /255 units."""
    pct = {e: [100 * v for v in vs] for e, vs in raw["pgd"].items()}
    config = state.get("config") or {}
    return {
        "satpipe": {"kind": "results", "format": 1},
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "variant": state.get("variant"),
        "arch": state["model"]["arch"],
        "seed": config.get("seed"),
        "epochs": (state.get("epoch", -1) + 1),
        "data": data,
        "n": raw["n"],
        "num_classes": state["model"]["num_classes"],
        "attack": attack,
        "clean": 100 * raw["clean"],
        "fgsm": {_key(e): 100 * v for e, v in raw["fgsm"].items()},
        "pgd": {_key(e): float(np.mean(v)) for e, v in pct.items()},
        "pgd_std": {_key(e): float(np.std(v)) for e, v in pct.items()},
        "pgd_per_seed": {_key(e): v for e, v in pct.items()},
        "pgd_large": 100 * raw["pgd_large"],
        "pgd_double_steps": 100 * raw["pgd_double_steps"],
        "checks": checks,
        "checks_passed": all(c["passed"] for c in checks),
        "train_time_s": _train_time(ckpt.parent),
        # The overfitting guard, when the run had one: did it fire, which epoch's weights.
        "guard": state.get("guard"),
        "stopped": state.get("stopped"),
    }


def masking_warning(results: dict[str, Any]) -> str | None:
    """The one-line warning for a results dict whose sanity checks failed, else None."""
    failed = failed_checks(results)
    if not failed:
        return None
    return (
        f"GRADIENT-MASKING SANITY CHECKS FAILED: {', '.join(failed)} "
        "(accuracies may not mean robustness)"
    )


def failed_checks(results: dict[str, Any]) -> list[str]:
    """Names of the sanity checks a results dict failed."""
    return [c["name"] for c in results["checks"] if not c["passed"]]
