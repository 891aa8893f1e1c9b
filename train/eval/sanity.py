"""Gradient-masking sanity checks on an evaluation's raw accuracies (DESIGN "Evaluation").

A model that fails one is probably masking gradients, not robust:

  eps0_equals_clean      PGD and FGSM at eps=0 give the clean accuracy
  non_increasing_in_eps  no attack's accuracy rises with eps (up to `tolerance`)
  pgd_le_fgsm            PGD is at least as strong as FGSM at every eps
  large_eps_near_zero    PGD at a very large eps (64/255, step 2.5*eps/steps, no random start)
                         drives accuracy below chance + `large_eps_margin` (on the first
                         `check_n` images, default all: EvalConfig.check_examples)
  more_steps_never_help  PGD with 2x the steps is not weaker at the largest eps of the grid
  autoattack_le_pgd      AutoAttack is not weaker than PGD on the same images, at every eps
                         where both ran (it contains 100-step APGD: if PGD-5 beats it, the
                         model's gradients or its randomness are fooling the attacks)

Input `raw` (fractions, eps as floats in /255 units)::

    {"n", "clean", "fgsm": {eps: acc}, "pgd": {eps: [acc per seed]}, "pgd_large",
     "pgd_double_steps", optional "pgd_double_steps_base" and "check_n" (PGD's accuracy on the
     images of the two check runs, and how many), optional "autoattack": {eps: {"acc", "pgd",
     "n"}} (AutoAttack's accuracy, mean over seeds, and PGD's on the same first n images),
     optional "others": {attack: {eps: mean acc}}}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from satpipe.train.config import LARGE_EPS
from satpipe.train.eval.per_image import eps_key as _key


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def sanity_checks(
    raw: dict[str, Any],
    num_classes: int,
    tolerance: float | None = None,
    large_eps: float = LARGE_EPS,
    large_eps_margin: float = 0.05,
) -> list[dict[str, Any]]:
    """The gradient-masking checks on `raw`; each {name, passed, detail}.

    `tolerance` (fraction) absorbs the randomness of random starts; default max(1%, 2/n) for
    a comparison over n images."""
    n = raw["n"]
    tol = _tolerance(n, tolerance)
    pgd_mean = {e: float(np.mean(v)) for e, v in raw["pgd"].items()}
    checks: list[dict[str, Any]] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    add(*_eps0(raw, pgd_mean, n))
    add(*_monotone(pgd_mean, raw.get("others", {}), raw.get("autoattack", {}), tol))
    weaker = [
        e for e in sorted(pgd_mean) if e in raw["fgsm"] and pgd_mean[e] > raw["fgsm"][e] + tol
    ]
    add(
        "pgd_le_fgsm",
        not weaker,
        "PGD <= FGSM at every eps"
        if not weaker
        else "; ".join(
            f"PGD {_pct(pgd_mean[e])} > FGSM {_pct(raw['fgsm'][e])} at {_key(e)}/255"
            for e in weaker
        ),
    )
    limit = 1.0 / num_classes + large_eps_margin
    add(
        "large_eps_near_zero",
        raw["pgd_large"] <= limit,
        f"PGD at {_key(large_eps)}/255: {_pct(raw['pgd_large'])} "
        f"(limit: chance + margin = {_pct(limit)})",
    )
    top = max(raw["pgd"])
    # PGD's accuracy on the images the 2x-steps run used (all of them unless --check-examples)
    base = raw.get("pgd_double_steps_base", raw["pgd"][top][0])
    check_n = raw.get("check_n", n)
    check_tol = _tolerance(check_n, tolerance)
    on = "" if check_n == n else f" (first {check_n} images)"
    add(
        "more_steps_never_help",
        raw["pgd_double_steps"] <= base + check_tol,
        f"at {_key(top)}/255{on}: {_pct(base)} with the grid's steps, "
        f"{_pct(raw['pgd_double_steps'])} with twice as many",
    )
    if raw.get("autoattack"):
        add(*_autoattack_vs_pgd(raw["autoattack"], tolerance))
    return checks


def _tolerance(n: int, given: float | None) -> float:
    return max(0.01, 2.0 / n) if given is None else given


def _eps0(raw, pgd_mean, n) -> tuple[str, bool, str]:
    exact = 1.0 / n + 1e-12  # one image: GPU kernels may flip a borderline prediction
    clean = raw["clean"]
    gap = max(abs(pgd_mean[0.0] - clean), abs(raw["fgsm"][0.0] - clean))
    detail = f"clean {_pct(clean)}, PGD(0) {_pct(pgd_mean[0.0])}, FGSM(0) {_pct(raw['fgsm'][0.0])}"
    return "eps0_equals_clean", gap <= exact, detail


def _monotone(pgd_mean, others, autoattack, tol) -> tuple[str, bool, str]:
    curves = {"PGD": pgd_mean, **others}
    if autoattack:
        curves["AutoAttack"] = {e: v["acc"] for e, v in autoattack.items()}
    rises = []
    for name, curve in curves.items():
        grid = sorted(curve)
        rises += [
            f"{name} {_pct(curve[a])} at {_key(a)}/255 < {_pct(curve[b])} at {_key(b)}/255"
            for a, b in zip(grid, grid[1:], strict=False)
            if curve[b] > curve[a] + tol
        ]
    detail = "no attack's accuracy rises with eps" if not rises else "; ".join(rises)
    return "non_increasing_in_eps", not rises, detail


def _autoattack_vs_pgd(autoattack, tolerance) -> tuple[str, bool, str]:
    # Compared on AutoAttack's own images (often fewer): the default tolerance is 2 of them.
    weaker = [
        e for e, v in sorted(autoattack.items())
        if v["acc"] > v["pgd"] + _tolerance(v["n"], tolerance)
    ]  # fmt: skip
    shown = weaker or sorted(autoattack)
    detail = "; ".join(
        f"AutoAttack {_pct(autoattack[e]['acc'])} vs PGD {_pct(autoattack[e]['pgd'])} at "
        f"{_key(e)}/255 (same {autoattack[e]['n']} images)"
        for e in shown
    )
    return "autoattack_le_pgd", not weaker, detail


def failed_checks(results: dict[str, Any]) -> list[str]:
    """Names of the sanity checks a results dict failed."""
    return [c["name"] for c in results["checks"] if not c["passed"]]


def masking_warning(results: dict[str, Any]) -> str | None:
    """The one-line warning for a results dict whose sanity checks failed, else None."""
    failed = failed_checks(results)
    if not failed:
        return None
    return (
        f"GRADIENT-MASKING SANITY CHECKS FAILED: {', '.join(failed)} "
        "(accuracies may not mean robustness)"
    )
