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

from satpipe.errors import SatpipeError
from satpipe.progress import progress
from satpipe.train.attacks import fgsm, pgd

DEFAULT_EPS = (0, 1, 2, 3, 4, 8)
LARGE_EPS = 64.0  # /255


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


def _attack_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    words = np.random.SeedSequence([seed, batch, 0xE7A1]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed((int(words[0]) << 31) ^ int(words[1]))


def robustness(
    model: nn.Module,
    loader,
    eps: Sequence[float] = DEFAULT_EPS,
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
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    total = 0.0
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            total += float(json.loads(line).get("seconds", 0.0))
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


def evaluate(
    run: str | os.PathLike,
    data: str | None = None,
    eps: Sequence[float] = DEFAULT_EPS,
    steps: int = 5,
    step_size: float = 2.0,
    seeds: Sequence[int] = (0,),
    batch_size: int = 256,
    device: str = "auto",
    *,
    large_eps: float = LARGE_EPS,
    large_eps_margin: float = 0.05,
    tolerance: float | None = None,
    strict: bool = False,
    out: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory (its checkpoint.pt) or a checkpoint file on the test split.

    Args:
        run: RUN/ or a checkpoint path. data: dataset store (default: the one it trained on).
        eps: grid in /255 units (0 is always added: the first sanity check needs it).
        steps, step_size: PGD steps and step size (/255 units); paper preset 5 of 2/255.
        seeds: PGD random-start seeds; PGD is reported as mean and std over them.
        strict: raise SatpipeError (after writing the files) when a sanity check fails.
        out: directory for results.json / results.md (default: the run directory).

    Returns:
        The results dict written to results.json (accuracies in %, eps keys in /255 units).
    """
    from satpipe.data.loader import make_loader
    from satpipe.train.checkpoint import file_sha256, load_model
    from satpipe.train.trainer import resolve_device

    path = Path(run)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    run_dir = ckpt.parent
    if steps < 1 or step_size <= 0 or not seeds:
        raise SatpipeError("PGD needs steps >= 1, step size > 0 and at least one seed")
    if any(e < 0 or e > 255 for e in eps):
        raise SatpipeError(f"eps must be in [0, 255] (/255 units), got {list(eps)}")
    dev = resolve_device(device)
    model, state = load_model(ckpt, dev)
    config = state.get("config") or {}
    data = data or config.get("data")
    if not data:
        raise SatpipeError(f"{ckpt}: checkpoint does not name its dataset; pass --data")
    loader = make_loader(
        data,
        "test",
        None,
        batch_size=batch_size,
        shuffle=False,
        augment=False,
        device=dev,
        storage_options=storage_options,
    )
    num_classes = state["model"]["num_classes"]
    if loader.num_classes != num_classes:
        raise SatpipeError(f"{data}: has {loader.num_classes} classes, the model {num_classes}")
    raw = robustness(model, loader, eps, steps, step_size, seeds, large_eps)
    checks = sanity_checks(raw, num_classes, tolerance, large_eps, large_eps_margin)
    pct = {e: [100 * v for v in vs] for e, vs in raw["pgd"].items()}
    results = {
        "satpipe": {"kind": "results", "format": 1},
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "variant": state.get("variant"),
        "arch": state["model"]["arch"],
        "seed": config.get("seed"),
        "epochs": (state.get("epoch", -1) + 1),
        "data": str(data),
        "n": raw["n"],
        "num_classes": num_classes,
        "attack": {
            "steps": steps,
            "step_size": step_size,
            "random_start": True,
            "seeds": list(seeds),
            "large_eps": large_eps,
        },
        "clean": 100 * raw["clean"],
        "fgsm": {_key(e): 100 * v for e, v in raw["fgsm"].items()},
        "pgd": {_key(e): float(np.mean(v)) for e, v in pct.items()},
        "pgd_std": {_key(e): float(np.std(v)) for e, v in pct.items()},
        "pgd_per_seed": {_key(e): v for e, v in pct.items()},
        "pgd_large": 100 * raw["pgd_large"],
        "pgd_double_steps": 100 * raw["pgd_double_steps"],
        "checks": checks,
        "checks_passed": all(c["passed"] for c in checks),
        "train_time_s": _train_time(run_dir),
    }
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    (out_dir / "results.md").write_text(results_markdown(results))
    if strict and not results["checks_passed"]:
        failed = ", ".join(c["name"] for c in checks if not c["passed"])
        raise SatpipeError(
            f"GRADIENT-MASKING SANITY CHECKS FAILED ({failed}); see {out_dir / 'results.md'} "
            f"(--no-strict to only warn)"
        )
    return results


def failed_checks(results: dict[str, Any]) -> list[str]:
    """Names of the sanity checks a results dict failed."""
    return [c["name"] for c in results["checks"] if not c["passed"]]
