"""The cost-robustness frontier: robust accuracy against measured training time, per variant.

Input is a list of *frontier records*, one per trained model (variant x seed), built from a
run's results.json by `run_record`::

    {"variant": "fgsm-rs", "seed": 0, "attack": "PGD-5", "eps": 8.0, "robust": 41.3 (%),
     "n": 300, "clean": 80.1 (%), "train_time_s": 12.3, "epochs": 8, "guard_fired": False,
     "options": {"lr_schedule": "cyclic"}}

A variant's point: robust accuracy pooled over its seeds with the Wilson 95% interval of the
pooled count (images x seeds; satpipe.core.stats), the range over seeds beside it, and training time
as the mean over seeds with its min-max range. A point is on the Pareto front when no other
point is at least as fast and at least as robust (and better in one). Nothing here trains or
evaluates; `satpipe reproduce` calls `write_frontier` for presets that list frontier variants.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satpipe.core.stats import wilson


@dataclass(frozen=True)
class RobustAccuracy:
    """One run's accuracy (%) under one attack at one eps, on n test images."""

    attack: str
    accuracy: float
    n: int


def _key(eps: float) -> str:
    return str(int(eps)) if float(eps).is_integer() else f"{eps:g}"


def robust_accuracy(results: dict[str, Any], eps: float) -> RobustAccuracy:
    """The accuracy at `eps` (/255) under the strongest attack a results.json holds.

    Today that is PGD (the mean over its attack seeds; the evaluation's FGSM is weaker by
    construction). The one place to change when results.json gains stronger attacks.
    """
    key = _key(eps)
    if key not in results.get("pgd", {}):
        where = results.get("checkpoint")
        raise KeyError(f"results have no PGD accuracy at eps {key}/255 ({where})")
    steps = results.get("attack", {}).get("steps")
    name = f"PGD-{steps}" if steps else "PGD"
    return RobustAccuracy(name, float(results["pgd"][key]), int(results["n"]))


def run_record(
    results: dict[str, Any],
    *,
    variant: str,
    seed: int,
    eps: float,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The frontier record of one evaluated run (results.json as `satpipe eval` writes it)."""
    robust = robust_accuracy(results, eps)
    guard = results.get("guard") or {}
    return {
        "variant": variant,
        "seed": int(seed),
        "attack": robust.attack,
        "eps": float(eps),
        "robust": robust.accuracy,
        "n": robust.n,
        "clean": float(results["clean"]),
        "train_time_s": float(results.get("train_time_s") or math.nan),
        "epochs": int(results.get("epochs") or 0),
        "guard_fired": bool(guard.get("fired")),
        "options": dict(options or {}),
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": sum(finite) / len(finite), "min": min(finite), "max": max(finite)}


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per variant (in registry order): pooled robust accuracy with its Wilson
    interval (%), the range over seeds, clean accuracy, time (total and per epoch: mean, min,
    max over seeds), the seeds, how often the guard fired, and `pareto`."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["variant"], []).append(record)
    points = []
    for variant, runs in grouped.items():
        hits = sum(round(r["robust"] * r["n"] / 100) for r in runs)
        trials = sum(r["n"] for r in runs)
        acc = wilson(hits, trials).scaled(100.0)
        points.append(
            {
                "variant": variant,
                "title": _title(variant),
                "kind": _kind(variant),
                "seeds": sorted(r["seed"] for r in runs),
                "attack": runs[0]["attack"],
                "eps": runs[0]["eps"],
                "robust": acc.as_dict(),
                "robust_seeds": _spread([r["robust"] for r in runs]),
                "clean": _spread([r["clean"] for r in runs]),
                "time_s": _spread([r["train_time_s"] for r in runs]),
                "epoch_s": _spread([r["train_time_s"] / max(r["epochs"], 1) for r in runs]),
                "epochs": sorted({r["epochs"] for r in runs}),
                "guard_fired": sum(r["guard_fired"] for r in runs),
                "options": runs[0]["options"],
            }
        )
    order = _order()
    points.sort(key=lambda p: (order.get(p["variant"], len(order)), p["variant"]))
    front = pareto_front([(p["time_s"]["mean"], p["robust"]["value"]) for p in points])
    for point, on_front in zip(points, front, strict=True):
        point["pareto"] = on_front
    return points


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (time, accuracy) pairs: True where no other pair has time <= and accuracy >=
    with one of them strict (lower time and higher accuracy are better). NaN time: False."""
    out = []
    for i, (t, a) in enumerate(points):
        if math.isnan(t) or math.isnan(a):
            out.append(False)
            continue
        dominated = any(
            j != i and t2 <= t and a2 >= a and (t2 < t or a2 > a)
            for j, (t2, a2) in enumerate(points)
            if not (math.isnan(t2) or math.isnan(a2))
        )
        out.append(not dominated)
    return out


def _registry():
    from satpipe.train.variants import VARIANTS

    return VARIANTS


def _order() -> dict[str, int]:
    return {name: i for i, name in enumerate(_registry().names())}


def _title(variant: str) -> str:
    variants = _registry()
    return variants.get(variant).title if variant in variants else variant


def _kind(variant: str) -> str:
    variants = _registry()
    return variants.get(variant).kind if variant in variants else "other"


# --------------------------------------------------------------------------------------------
# Outputs

KIND_STYLE = {  # colour and marker per kind of method, the same in every frontier plot
    "standard": ("tab:gray", "o"),
    "adversarial": ("tab:red", "s"),
    "sat": ("tab:blue", "D"),
    "fast-at": ("tab:orange", "^"),
    "explanation": ("tab:green", "v"),
    "other": ("black", "x"),
}


def _fmt_time(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds:.1f}"


def _notes(point: dict[str, Any]) -> str:
    notes = [f"{k.replace('_', '-')}={v}" for k, v in sorted(point["options"].items())]
    if point["guard_fired"]:
        notes.append(f"guard fired in {point['guard_fired']} of {len(point['seeds'])} seeds")
    return ", ".join(notes) or "–"


def markdown(points: Sequence[dict[str, Any]], title: str = "", concurrency: str = "") -> str:
    """frontier.md: one row per variant, Pareto points in bold, and how to read it."""
    if not points:
        return f"# {title or 'Cost-robustness frontier'}\n\nNo runs.\n"
    first = points[0]
    head = (
        f"# {title or 'Cost-robustness frontier'}\n\n"
        f"Robust accuracy at eps = {_key(first['eps'])}/255 under {first['attack']} (the "
        "strongest attack the evaluation ran), against measured training time.\n\n"
    )
    lines = [
        "| Method | kind | seeds | robust acc. (%) [95% CI] | range over seeds | clean (%) | "
        "epochs | s / epoch | total s (min–max) | Pareto | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        r, rs, t = p["robust"], p["robust_seeds"], p["time_s"]
        name = f"**{p['title']}**" if p["pareto"] else p["title"]
        lines.append(
            f"| {name} | {p['kind']} | {','.join(map(str, p['seeds']))} | "
            f"{r['value']:.1f} [{r['low']:.1f}, {r['high']:.1f}] | "
            f"{rs['min']:.1f}–{rs['max']:.1f} | {p['clean']['mean']:.1f} | "
            f"{'/'.join(map(str, p['epochs']))} | {_fmt_time(p['epoch_s']['mean'])} | "
            f"{_fmt_time(t['mean'])} ({_fmt_time(t['min'])}–{_fmt_time(t['max'])}) | "
            f"{'yes' if p['pareto'] else ''} | {_notes(p)} |"
        )
    foot = (
        "\nThe interval is the Wilson 95% interval of the count pooled over seeds (test images "
        "x seeds); the range over seeds is beside it, not folded in. Time is the training "
        "loop's wall time (plus the overfitting guard's checks where a run has one; evaluation "
        "excluded), mean and range over seeds; an epoch is one pass over the data (Free "
        "replays each batch m times per pass). A bold method is on the Pareto front: no other "
        "is both as fast and as robust. "
        + (f"{concurrency} " if concurrency else "")
        + "Measured, not tuned: every method runs its paper's defaults unless a note says "
        "otherwise.\n"
    )
    return head + "\n".join(lines) + "\n" + foot


def plot(points: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """frontier.png: robust accuracy (Wilson interval) against training time (range over
    seeds), one labelled point per variant, the Pareto front as a staircase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    seen: set[str] = set()
    for p in points:
        t, r = p["time_s"], p["robust"]
        if math.isnan(t["mean"]):
            continue
        colour, marker = KIND_STYLE.get(p["kind"], KIND_STYLE["other"])
        ax.errorbar(
            t["mean"], r["value"],
            xerr=[[t["mean"] - t["min"]], [t["max"] - t["mean"]]],
            yerr=[[r["value"] - r["low"]], [r["high"] - r["value"]]],
            fmt=marker, color=colour, ms=6, capsize=3, lw=1,
            label=None if p["kind"] in seen else p["kind"],
        )  # fmt: skip
        seen.add(p["kind"])
        ax.annotate(p["title"], (t["mean"], r["value"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)  # fmt: skip
    front = sorted((p["time_s"]["mean"], p["robust"]["value"]) for p in points if p.get("pareto"))
    if front:  # ringed points, joined by the staircase of what each time budget buys
        xs, ys = zip(*front, strict=True)
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", lw=1,
                   label="Pareto front")  # fmt: skip
        ax.step(xs, ys, where="post", color="black", lw=1, ls="--", alpha=0.6)
    first = points[0] if points else {"eps": 0, "attack": "PGD"}
    ax.set_xlabel("training time (s, mean and range over seeds)")
    ax.set_ylabel(f"accuracy under {first['attack']} at ε={_key(first['eps'])}/255 (%)")
    ax.set_title(title or "Cost-robustness frontier", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_frontier(
    out_dir: str | Path, records: Sequence[dict[str, Any]], title: str = "", concurrency: str = ""
) -> list[dict[str, Any]]:
    """frontier.png and frontier.md in `out_dir` from frontier records; returns the points."""
    out_dir = Path(out_dir)
    points = summarize(records)
    plot(points, out_dir / "frontier.png", title)
    (out_dir / "frontier.md").write_text(markdown(points, title, concurrency))
    return points


__all__ = [
    "RobustAccuracy",
    "markdown",
    "pareto_front",
    "plot",
    "robust_accuracy",
    "run_record",
    "summarize",
    "write_frontier",
]
