"""What an evaluation measures, and measuring it: per-image correctness bits per (attack, eps,
seed), the sanity checks' extra PGD runs, and the per-image worst case over attacks.

`plan(cfg, num_classes, n)` lists the measurements (the attacks asked for, plus the PGD/FGSM
runs the sanity checks need); `measure(model, evalset, plan, cfg)` runs them with one progress
bar per attack. Everything stays on the device until a measurement is done (one transfer each).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.train.config import EvalConfig
from satpipe.train.eval.attacks import (
    ATTACKS,
    Attack,
    AttackContext,
    attack_set,
    clean_correct,
    min_norm_set,
    pgd,
)
from satpipe.train.eval.attacks.reference import ensemble_components, library_warnings
from satpipe.train.eval.per_image import ROBUST, ROBUST_L2, eps_key
from satpipe.train.eval.subset import EvalSet


@dataclass(frozen=True)
class Measurement:
    """One attack at one eps (/255) with one seed (None: deterministic) on the first n images."""

    attack: str
    eps: float
    seed: int | None
    n: int

    @property
    def key(self) -> tuple[str, str, int | None]:
        return self.attack, eps_key(self.eps), self.seed


@dataclass
class Measured:
    """Results of `measure`: numpy bool arrays in evaluation order."""

    clean: np.ndarray
    bits: dict[tuple[str, str, int | None], np.ndarray] = field(default_factory=dict)
    stages: dict[tuple[str, str, int | None], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    library_warnings: dict[str, list[str]] = field(default_factory=dict)  # per attack
    # Minimum-norm attacks: per attack, (n,) float32, the norm (pixel units) of the smallest
    # adversarial found per image (0: wrong when clean, inf: none found).
    norms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.clean)

    def robust(self, norm: str = "Linf") -> dict[str, np.ndarray]:
        """Per eps key: right under every attack of threat model `norm` ("Linf", "L2") and
        seed run at that eps (on the images all of them covered: the shortest prefix); an
        L2 radius and an L-inf eps of the same number are different threats."""
        by_eps: dict[str, list[np.ndarray]] = {}
        for (attack, k, _), bits in self.bits.items():
            if ATTACKS.get(attack).norm == norm:
                by_eps.setdefault(k, []).append(bits)
        out = {}
        for k, runs in by_eps.items():
            n = min(len(b) for b in runs)
            out[k] = np.logical_and.reduce([self.clean[:n], *(b[:n] for b in runs)])
        return dict(sorted(out.items(), key=lambda kv: float(kv[0])))

    def all_bits(self) -> dict[tuple[str, str, int | None], np.ndarray]:
        """Every array correct.npz keeps: measurements, ensemble stages, the worst case."""
        out = dict(self.bits)
        for (attack, k, seed), stages in self.stages.items():
            out.update({(f"{attack}/{name}", k, seed): bits for name, bits in stages.items()})
        out.update({(ROBUST, k, None): bits for k, bits in self.robust().items()})
        out.update({(ROBUST_L2, k, None): bits for k, bits in self.robust("L2").items()})
        return out


def plan(cfg: EvalConfig, num_classes: int, n: int) -> list[Measurement]:
    """The measurements of an evaluation of `n` images, grouped by attack, in cfg order;
    then the PGD/FGSM runs the sanity checks need that were not asked for."""
    out: list[Measurement] = []
    for name in cfg.attacks:
        entry = ATTACKS.get(name)
        entry.check_classes(num_classes)
        m = cfg.attack_examples.get(name, n)
        if m > n:
            raise SatpipeError(
                f"--attack-examples {name}={m} is more than the {n} images evaluated"
            )
        seeds = cfg.seeds if entry.randomized else (None,)
        out += [Measurement(name, e, s, m) for e in cfg.grid(name) for s in seeds]
    have = {(m.attack, m.eps) for m in out}
    # The checks compare PGD with FGSM at 0, and AutoAttack with PGD wherever it ran.
    need = [("fgsm", 0.0), ("pgd", 0.0)] + [("pgd", m.eps) for m in out if m.attack == "autoattack"]
    for attack, e in dict.fromkeys(need):
        if (attack, e) not in have:
            seeds = cfg.seeds if attack == "pgd" else (None,)
            out += [Measurement(attack, e, s, n) for s in seeds]
            have.add((attack, e))
    return out


def components(cfg: EvalConfig, num_classes: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """AutoAttack's components for this evaluation, and those skipped (with why)."""
    standard, skipped = ensemble_components(num_classes)
    wanted = cfg.autoattack_components or ATTACKS.get("autoattack").components
    return tuple(c for c in wanted if c in standard), skipped


def measure(
    model: nn.Module, data: EvalSet, measurements: Iterable[Measurement], cfg: EvalConfig,
    num_classes: int,
) -> Measured:  # fmt: skip
    """Run every measurement (one progress bar per attack), then the checks' extra PGD runs."""
    bs = cfg.batch_size
    result = Measured(clean_correct(model, data.x, data.y, bs).cpu().numpy())
    clean = torch.as_tensor(result.clean, device=data.y.device)
    parts, _ = components(cfg, num_classes)
    groups: dict[str, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.attack, []).append(m)
    for name, group in groups.items():
        entry = ATTACKS.get(name)
        stages = len(parts) if entry.components else 1
        total = sum(m.n for m in group) * stages
        if entry.min_norm is not None:  # one run; every radius is read off its norms
            total = max(m.n for m in group)
        start = time.perf_counter()
        with progress(_bar(name, group), total) as advance, library_warnings() as caught:
            if entry.min_norm is not None:
                _min_norm_group(model, data, clean, cfg, num_classes, entry, group, result,
                                advance)  # fmt: skip
                group = []
            for m in group:
                ctx = _context(cfg, m, num_classes)
                sl = slice(0, m.n)
                out = attack_set(
                    model, entry, data.x[sl], data.y[sl], clean[sl], ctx, bs, advance,
                    parts if entry.components else None,
                )  # fmt: skip
                result.bits[m.key] = out.correct.cpu().numpy()
                if out.components:
                    result.stages[m.key] = {k: v.cpu().numpy() for k, v in out.components.items()}
        result.seconds[name] = time.perf_counter() - start
        result.library_warnings[name] = list(caught.messages)
    result.extras = _check_runs(model, data, clean, cfg, num_classes, result)
    return result


def _min_norm_group(model, data, clean, cfg, num_classes, entry, group, result, advance):
    """A minimum-norm attack: run once on the most images any radius asks for; correct at
    radius r (/255) = clean and no adversarial of norm <= r found."""
    n = max(m.n for m in group)
    ctx = _context(cfg, max(group, key=lambda m: m.eps), num_classes)
    sl = slice(0, n)
    norms = min_norm_set(model, entry, data.x[sl], data.y[sl], clean[sl], ctx, cfg.batch_size,
                         advance)  # fmt: skip
    for m in group:
        result.bits[m.key] = (clean[: m.n] & (norms[: m.n] > m.eps / 255)).cpu().numpy()
    result.norms[entry.name] = norms.float().cpu().numpy()


def _bar(name: str, group: list[Measurement]) -> str:
    grid = sorted({m.eps for m in group})
    seeds = sorted({m.seed for m in group if m.seed is not None})
    text = f"{name} eps {','.join(eps_key(e) for e in grid)}"
    return text + (f" seeds {','.join(map(str, seeds))}" if seeds else "")


def _context(cfg: EvalConfig, m: Measurement, num_classes: int, **changes) -> AttackContext:
    fields = dict(
        eps=m.eps / 255, num_classes=num_classes, seed=0 if m.seed is None else m.seed,
        steps=cfg.steps, step_size=cfg.step_size / 255, restarts=cfg.restarts,
    )  # fmt: skip
    fields.update(changes)
    return AttackContext(**fields)


def _large_pgd(model, x, y, ctx):
    # No random start: a model with zero gradients then keeps its clean accuracy and fails
    # loudly, instead of being "attacked" by the random start alone.
    return pgd(model, x, y, ctx.eps, ctx.step_size, ctx.steps, random_start=False)


_LARGE = Attack("pgd-large-eps", "the large-eps check's PGD", _large_pgd, randomized=False)


def _check_runs(model, data, clean, cfg, num_classes, result) -> dict[str, np.ndarray]:
    """The large-eps PGD and the 2x-steps PGD at the top of the PGD grid (first seed), on the
    first `cfg.check_examples` images (all by default), and PGD's own bits at the top on the
    same images (`pgd_double_steps_base`: what the 2x-steps run is compared with)."""
    top = max(float(k) for (a, k, _) in result.bits if a == "pgd")
    top_bits = result.bits[("pgd", eps_key(top), cfg.seeds[0])]
    limit = cfg.check_examples or len(clean)
    n_top = min(limit, len(top_bits))  # the first images of PGD's, so the same ones
    steps = max(cfg.steps, 1)
    large_step = 2.5 * cfg.large_eps / steps / 255  # Madry's rule: can reach the ball's edge
    runs = {
        "pgd_large": (_LARGE, Measurement("pgd", cfg.large_eps, None, min(limit, len(clean))),
                      {"step_size": large_step}),
        "pgd_double_steps": (ATTACKS.get("pgd"), Measurement("pgd", top, cfg.seeds[0], n_top),
                             {"steps": 2 * cfg.steps}),
    }  # fmt: skip
    out = {"pgd_double_steps_base": top_bits[:n_top]}
    total = sum(m.n for _, m, _ in runs.values())
    with progress("sanity checks (large eps, 2x steps)", total) as advance:
        for name, (entry, m, changes) in runs.items():
            ctx = _context(cfg, m, num_classes, **changes)
            sl = slice(0, m.n)
            got = attack_set(model, entry, data.x[sl], data.y[sl], clean[sl], ctx,
                             cfg.batch_size, advance)  # fmt: skip
            out[name] = got.correct.cpu().numpy()
    return out


def raw_accuracies(result: Measured) -> dict[str, Any]:
    """The sanity checks' input (satpipe.train.eval.sanity) from measured bits: fractions, eps as
    floats; means over seeds."""
    acc: dict[str, dict[float, list[float]]] = {}
    for (attack, k, _), bits in result.bits.items():
        acc.setdefault(attack, {}).setdefault(float(k), []).append(float(bits.mean()))
    raw: dict[str, Any] = {
        "n": result.n,
        "clean": float(result.clean.mean()),
        "fgsm": {e: v[0] for e, v in sorted(acc.get("fgsm", {}).items())},
        "pgd": dict(sorted(acc.get("pgd", {}).items())),
        "pgd_large": float(result.extras["pgd_large"].mean()),
        "pgd_double_steps": float(result.extras["pgd_double_steps"].mean()),
        "pgd_double_steps_base": float(result.extras["pgd_double_steps_base"].mean()),
        "check_n": len(result.extras["pgd_double_steps"]),
        "others": {
            a: {e: float(np.mean(v)) for e, v in sorted(per.items())}
            for a, per in acc.items()
            if a not in ("fgsm", "pgd", "autoattack")
        },
    }
    raw["autoattack"] = _autoattack_vs_pgd(result)
    return raw


def _autoattack_vs_pgd(result: Measured) -> dict[float, dict[str, float]]:
    out = {}
    for (attack, k, _), bits in result.bits.items():
        if attack != "autoattack":
            continue
        n = len(bits)
        pgd_runs = [b[:n].mean() for (a, kk, _), b in result.bits.items() if a == "pgd" and kk == k]
        entry = out.setdefault(float(k), {"acc": [], "pgd": float(np.mean(pgd_runs)), "n": n})
        entry["acc"].append(float(bits.mean()))
    for v in out.values():
        v["acc"] = float(np.mean(v["acc"]))
    return out
