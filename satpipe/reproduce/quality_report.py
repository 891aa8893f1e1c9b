"""The paper's second claim, measured: better saliency, more robustness from SAT.

Input: one *point* per saliency store that SAT trained on (the weak masks, the `random`
control, each source x method of the study)::

    {"label": "std smoothgrad", "store": "saliency/std-smoothgrad.zarr", "row": "SAT ...",
     "quality": <the store's provenance `quality` record (satpipe store score)>}

and the run records of `satpipe reproduce` (satpipe/reproduce/tables.py's format, plus `n`, the
number of test images each accuracy was measured on). A point's y is the robustness gain of its
SAT row over the matching noise baseline (`original-noise`: the same training with uniform
noise instead of the map) at each PGD eps, with a 95% interval; its x is the store's quality
score (`sign-agreement` by default: the share of the map's positive mass on the object, which
is what SAT's -s perturbation acts with), with its interval over images. The claim is the rank
correlation of x and y over the points (satpipe.core.stats.spearman, bootstrap over points).

Writes saliency-quality.md, quality-vs-robustness.png, and a section for claims.md. Nothing here
trains, evaluates or scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.stats import Interval, spearman, verdict, wilson

BASELINE = "original-noise"


# A rank correlation over n points: the smallest two-sided p of its exact permutation test is
# 2/n!, 0.083 at n = 4, 0.017 at n = 5; below 5 stores no correlation can be significant.
MIN_POINTS = 5
NO_VERDICT = f"no verdict (fewer than {MIN_POINTS} stores)"


def gain_interval(
    sat: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]],
    eps: str,
    bits=None,
):
    """SAT minus baseline PGD accuracy at `eps`, in points (%), with a 95% interval.

    sat, base: the run records of each (one per seed; accuracy % and `n` test images per
    attack and eps). With `bits` (a satpipe.reproduce.claims.CorrectBits over the directory the
    records' `correct` paths are relative to) and per-image correctness for both, the
    interval is the paired bootstrap over the same test images and seeds
    (satpipe.reproduce.claims.paired_gain), the one the paper's claims use.
    Without it each side is pooled over its seeds as one proportion (successes over n x seeds
    trials) and the difference gets Newcombe's hybrid score interval from the two Wilson
    intervals (Newcombe 1998, method 10), which treats the two as independent samples: wider,
    as both were measured on the same images.
    """
    if bits is not None and all(r.get("correct") for r in (*sat, *base)):
        from satpipe.reproduce.claims import paired_gain

        paired = paired_gain(bits, sat, base, "pgd", eps)
        if paired is not None:
            return paired
    a, b = _pooled(sat, eps), _pooled(base, eps)
    if a is None or b is None:
        return None
    diff = a.value - b.value
    low = diff - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = diff + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Interval(100 * diff, 100 * low, 100 * high)


def _pooled(records: Sequence[dict[str, Any]], eps: str) -> Interval | None:
    trials = successes = 0
    for r in records:
        acc, n = r.get("pgd", {}).get(eps), r.get("n")
        if isinstance(n, dict):  # reproduce's records: images per attack and eps
            n = (n.get("pgd") or {}).get(eps)
        if acc is None or not n:
            return None
        trials += int(n)
        successes += round(float(acc) / 100 * int(n))
    return wilson(successes, trials) if trials else None


def claim_points(
    points: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    score: str,
    baseline: str = BASELINE,
    root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Each point with x = its quality `score` and y = its SAT gain per eps (Intervals).

    The baseline is the `baseline` variant's rows in the point's own group when there are any
    (the study's own noise rows), else anywhere (the weak grid's: the same training, as noise
    needs no map). Points whose store has no such score, or whose row did not run, are left
    out."""
    from satpipe.reproduce.claims import CorrectBits

    bits = CorrectBits(root) if root is not None else None  # each correct.npz read once
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    out = []
    for p in points:
        s = ((p.get("quality") or {}).get("scores") or {}).get(score) or {}
        runs = by_row.get(p["row"])
        if s.get("value") is None or not runs:
            continue
        group = runs[0].get("group")
        base = [r for r in records if r["variant"] == baseline and r.get("group") == group]
        base = base or [r for r in records if r["variant"] == baseline]
        eps_keys = sorted({k for r in runs for k in r.get("pgd", {})}, key=float)
        gains = {k: g for k in eps_keys if (g := gain_interval(runs, base, k, bits)) is not None}
        if not gains:
            continue
        out.append(
            {
                **p,
                "x": Interval(s["value"], s["low"], s["high"]),
                "chance": s.get("chance"),
                "gains": gains,
            }
        )
    return out


def quality_claims(cpoints: Sequence[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """'better saliency, more robustness': Spearman's rho of x and y per eps, with its
    bootstrap 95% interval over the points; it holds at an eps when the interval lies above 0.
    Fewer than 3 points: nothing to correlate (an empty list)."""
    if len(cpoints) < 3:
        return []
    eps_keys = sorted(set.intersection(*(set(p["gains"]) for p in cpoints)), key=float)
    detail = {}
    for k in eps_keys:
        xs = [p["x"].value for p in cpoints]
        ys = [p["gains"][k].value for p in cpoints]
        if len(set(xs)) < 2 or len(set(ys)) < 2:
            continue
        rho = spearman(xs, ys)
        # Fewer than MIN_POINTS stores cannot reach p < 0.05 at all (the bootstrap over 3
        # points even gives a zero-width interval): no verdict, whatever rho reads.
        call = verdict(rho) if len(cpoints) >= MIN_POINTS else NO_VERDICT
        detail[k] = {"rho": rho.as_dict(), "verdict": call, "points": len(cpoints)}
    return [
        {
            "claim": f"better saliency ({score}), more robustness from SAT (gain over {BASELINE})",
            "held": bool(detail) and all(d["verdict"] == "holds" for d in detail.values()),
            "detail": detail,
        }
    ]


def quality_claims_markdown(claims: Sequence[dict[str, Any]]) -> str:
    """The claims.md section: rho [interval] and verdict per eps."""
    if not claims:
        return (
            "## better saliency, more robustness: not measured\n\n"
            "Fewer than three scored saliency stores with a SAT run and a noise baseline.\n"
        )
    lines = []
    for c in claims:
        calls = {d["verdict"] for d in c["detail"].values()}
        mark = "held" if c["held"] else "did NOT hold"
        if calls == {NO_VERDICT}:
            mark = NO_VERDICT
        lines += [f"## {c['claim']}: {mark}", ""]
        lines += [
            "Spearman's rank correlation over the saliency stores (one point each: the store's",
            "quality against its SAT row's PGD accuracy minus the noise baseline's), with a",
            "bootstrap 95% interval over the stores; it holds where the interval lies above 0.",
            "",
            "| ε (/255) | stores | Spearman ρ [95% interval] | verdict |",
            "|---|---|---|---|",
        ]
        for k, d in c["detail"].items():
            r = d["rho"]
            lines.append(
                f"| {k} | {d['points']} | {r['value']:.2f} [{r['low']:.2f}, "
                f"{r['high']:.2f}] | {d['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


def _cell(s: dict[str, Any] | None) -> str:
    if not s or s.get("value") is None:
        return "–"
    return f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}] ({_num(s.get('chance'))})"


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def saliency_quality_markdown(
    points: Sequence[dict[str, Any]],
    cpoints: Sequence[dict[str, Any]],
    score: str,
    sources: Sequence[dict[str, Any]] = (),
) -> str:
    """saliency-quality.md: the source models' accuracy, the headline localisation of every
    store, all its scores (value [95% interval] (chance)), flags and notes, then the claim's
    points (quality against SAT gain per eps)."""
    lines = ["# Saliency quality of every store this run built", ""]
    lines += _sources_section(sources)
    lines += _headline(points)
    lines += _scores_section(points)
    lines += _gain_section(cpoints, score)
    return "\n".join(lines)


def _sources_section(sources: Sequence[dict[str, Any]]) -> list[str]:
    if not sources:
        return []
    lines = [
        "## Source models",
        "",
        "| source | variant | epochs | clean test accuracy (%) |",
        "|---|---|---|---|",
    ]
    for s in sources:
        a = s["accuracy"]
        lines.append(
            f"| {s['kind']} | {s['variant']} | {s['epochs']} | {a.value:.1f} "
            f"[{a.low:.1f}, {a.high:.1f}] (n = {s['n']}) |"
        )
    return [*lines, ""]


def _scores_section(points: Sequence[dict[str, Any]]) -> list[str]:
    """Every score of every store, then each store's flags and notes."""
    names: list[str] = []
    for p in points:
        for k in (p.get("quality") or {}).get("scores") or {}:
            if k not in names:
                names.append(k)
    lines = [
        "## Every score",
        "",
        "`satpipe store score` on each store: value [95% interval over images] (chance value:",
        "the same score for a map that knows nothing, closed form or measured). Direction: "
        + ", ".join(f"{k} {_direction(points, k)}" for k in names)
        + ".",
        "",
        "| store | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for p in points:
        scores = (p.get("quality") or {}).get("scores") or {}
        lines.append(f"| {p['label']} | " + " | ".join(_cell(scores.get(k)) for k in names) + " |")
    lines.append("")
    for p in points:
        q = p.get("quality") or {}
        for text in (*q.get("flags", ()), *q.get("notes", ())):
            lines.append(f"- {p['label']}: {text}")
    return lines


def _gain_section(cpoints: Sequence[dict[str, Any]], score: str) -> list[str]:
    """The claim's points: each store's quality against SAT's gain over the noise baseline."""
    lines = ["", f"## Quality ({score}) against SAT's robustness gain over {BASELINE}", ""]
    if not cpoints:
        return [*lines, "No store had both a score and a SAT run with a noise baseline.\n"]
    eps_keys = sorted({k for p in cpoints for k in p["gains"]}, key=float)
    lines.append(
        f"| store | SAT row | {score} | "
        + " | ".join(f"gain at ε={k}/255 (points)" for k in eps_keys)
        + " |"
    )
    lines.append("|---|---|---|" + "---|" * len(eps_keys))
    for p in cpoints:
        x = p["x"]
        gains = [p["gains"].get(k) for k in eps_keys]
        cells = [f"{g.value:+.1f} [{g.low:+.1f}, {g.high:+.1f}]" if g else "–" for g in gains]
        lines.append(
            f"| {p['label']} | {p['row']} | {x.value:.3f} [{x.low:.3f}, {x.high:.3f}] | "
            + " | ".join(cells)
            + " |"
        )
    return [*lines, ""]


def _headline(points: Sequence[dict[str, Any]]) -> list[str]:
    """Does each store localise? Pointing game and relevance mass against chance (the object's
    area share), and the sign agreement SAT acts with."""
    lines = [
        "## Localisation at a glance",
        "",
        "| store | pointing game (chance) | relevance mass / area share "
        "| sign agreement (chance) | mean \\|s\\| |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        scores = (p.get("quality") or {}).get("scores") or {}
        pg, rm, sa = (
            scores.get(k) or {} for k in ("pointing-game", "relevance-mass", "sign-agreement")
        )
        ratio = "–"
        if rm.get("value") is not None and rm.get("chance"):
            ratio = f"{rm['value']:.3f} / {rm['chance']:.3f} = {rm['value'] / rm['chance']:.2f}x"
        mean_abs = "–" if p.get("mean_abs") is None else f"{p['mean_abs']:.3f}"
        lines.append(f"| {p['label']} | {_short(pg)} | {ratio} | {_short(sa)} | {mean_abs} |")
    note = (
        "mean |s|: the store's mean |s| over its training maps, the size (x eps) of SAT's "
        "map part: stores normalised differently perturb by different amounts."
    )
    return [*lines, "", note, ""]


def _short(s: dict[str, Any]) -> str:
    if s.get("value") is None:
        return "–"
    return f"{s['value']:.3f} ({_num(s.get('chance'))})"


def _direction(points: Sequence[dict[str, Any]], name: str) -> str:
    for p in points:
        s = ((p.get("quality") or {}).get("scores") or {}).get(name)
        if s:
            return "↑" if s.get("higher_is_better") else "↓"
    return "?"


def quality_robustness_plot(
    cpoints: Sequence[dict[str, Any]], out: str | Path, score: str, title: str = ""
) -> Path:
    """quality-vs-robustness.png: one panel per PGD eps, one point per store: x its quality
    score, y its SAT gain over the noise baseline, both with 95% interval bars; the chance
    value of the score (dotted) and no gain (dashed) as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_keys = sorted({k for p in cpoints for k in p["gains"]}, key=float) or ["–"]
    fig, axes = plt.subplots(
        1, len(eps_keys), figsize=(3.3 * len(eps_keys), 3.4), dpi=120, squeeze=False, sharey=False
    )
    colours = plt.get_cmap("tab10")
    for ax, k in zip(axes[0], eps_keys, strict=True):
        for i, p in enumerate(cpoints):
            g = p["gains"].get(k)
            if g is None:
                continue
            x = p["x"]
            ax.errorbar(
                x.value,
                g.value,
                xerr=[[x.value - x.low], [x.high - x.value]],
                yerr=[[g.value - g.low], [g.high - g.value]],
                fmt="o",
                ms=4,
                capsize=2,
                color=colours(i % 10),
                label=p["label"],
            )
        chances = [p["chance"] for p in cpoints if p.get("chance") is not None]
        if chances:
            ax.axvline(float(np.mean(chances)), color="gray", ls=":", lw=1)
        ax.axhline(0, color="gray", ls="--", lw=1)
        ax.set_title(f"PGD ε={k}/255", fontsize=9)
        ax.set_xlabel(f"{score} (chance: dotted)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"SAT − {BASELINE} accuracy (points)", fontsize=8)
    if cpoints:
        axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(title or "Saliency quality vs SAT's robustness gain (95% intervals)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
