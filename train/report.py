"""Paper-style reports from evaluated runs: tables, accuracy-vs-eps plot, training time, claims.

Input is a list of *run records*, one per trained model and seed::

    {"row": "SAT", "variant": "sat", "seed": 0, "group": "weak",
     "clean": 81.2, "pgd": {"1": 60.3, "2": 41.0, ...}, "fgsm": {...}, "train_time_s": 12.3}

Accuracies are percentages; eps keys are integers in /255 units, as strings (JSON keys). Rows of
the same `row` name are the seeds of one configuration: the report gives mean ± std over them
(population std over seeds; a single seed shows ± 0.00). Nothing here trains or evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.train.variants import VARIANTS, families


def title(variant: str) -> str:
    """The paper's display name of a variant (its own name when it has no title)."""
    return getattr(VARIANTS.get(variant), "title", variant) if variant in VARIANTS else variant


def orderings() -> list[tuple[str, str, str]]:
    """The paper's orderings (best first) that `claims.md` checks, each at every PGD eps:
    per attack family, SAT > + Uniform-Noise > plain."""
    return [
        (f["sat"], f["noise"], f["none"])
        for f in families().values()
        if {"sat", "noise", "none"} <= set(f)
    ]


def cheaper() -> list[tuple[str, str]]:
    """Training-time claims (cheap, dear): a SAT-mixed variant against its plain one."""
    return [(f["sat"], f["none"]) for f in families().values() if {"sat", "none"} <= set(f)]


def summarize(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group run records by `row`: mean and std over seeds of clean, PGD/FGSM per eps, time."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["row"], []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for row, members in grouped.items():
        entry: dict[str, Any] = {
            "variant": members[0]["variant"],
            "group": members[0].get("group", "main"),
            "seeds": sorted(int(m["seed"]) for m in members),
            "clean": _stats([m["clean"] for m in members]),
            "train_time_s": _stats([m.get("train_time_s", math.nan) for m in members]),
        }
        for attack in ("pgd", "fgsm"):
            eps_keys = sorted({k for m in members for k in m.get(attack, {})}, key=int)
            entry[attack] = {k: _stats([m[attack][k] for m in members]) for k in eps_keys}
        summary[row] = entry
    return summary


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def ordered_rows(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Rows in the paper's variant order, then by name (stable across runs)."""
    rank = {v: i for i, v in enumerate(VARIANTS.names())}
    return sorted(summary, key=lambda r: (rank.get(summary[r]["variant"], 99), r))


def markdown_table(summary: dict[str, dict[str, Any]], group: str | None = None) -> str:
    """Rows x (clean, PGD eps...), `mean ± std` in %, best mean per column in bold."""
    rows = [r for r in ordered_rows(summary) if group is None or summary[r]["group"] == group]
    if not rows:
        return ""
    eps_keys = sorted({k for r in rows for k in summary[r]["pgd"]}, key=int)
    columns = [("clean", None)] + [("pgd", k) for k in eps_keys]

    def cell_value(row: str, col: tuple[str, str | None]) -> dict[str, float] | None:
        kind, eps = col
        return summary[row]["clean"] if kind == "clean" else summary[row]["pgd"].get(eps)

    best = {}
    for col in columns:
        means = [v["mean"] for r in rows if (v := cell_value(r, col)) is not None]
        best[col] = max(means) if means else None
    header = ["Method", "clean"] + [f"ε={k}/255" for k in eps_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row]
        for col in columns:
            v = cell_value(row, col)
            if v is None:
                cells.append("–")
                continue
            text = f"{v['mean']:.2f} ± {v['std']:.2f}"
            cells.append(f"**{text}**" if math.isclose(v["mean"], best[col]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_table(summary: dict[str, dict[str, Any]]) -> str:
    """Training wall time per row and its ratio to original / pgd / trades (same run)."""
    # The first row of each variant in paper order is its reference (the weak-saliency grid).
    first: dict[str, float] = {}
    for row in ordered_rows(summary):
        first.setdefault(summary[row]["variant"], summary[row]["train_time_s"]["mean"])
    base = {name: first.get(name) for name in ("original", "pgd", "trades")}
    lines = [
        "| Method | train time (s) | / Original | / PGD | / TRADES |",
        "|---|---|---|---|---|",
    ]
    for row in ordered_rows(summary):
        t = summary[row]["train_time_s"]["mean"]
        ratios = [f"{t / b:.2f}" if b and not math.isnan(t) else "–" for b in base.values()]
        lines.append(f"| {row} | {t:.1f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def check_claims(summary: dict[str, dict[str, Any]], group: str = "weak") -> list[dict[str, Any]]:
    """Each of the paper's claims with whether it held here and the numbers behind it."""
    by_variant = {s["variant"]: s for s in summary.values() if s["group"] == group}
    claims: list[dict[str, Any]] = []
    for order in orderings():
        if not all(v in by_variant for v in order):
            continue
        eps_keys = sorted(set.intersection(*(set(by_variant[v]["pgd"]) for v in order)), key=int)
        per_eps = {}
        for k in eps_keys:
            means = [by_variant[v]["pgd"][k]["mean"] for v in order]
            stds = [by_variant[v]["pgd"][k]["std"] for v in order]
            held = all(a > b for a, b in zip(means, means[1:], strict=False))
            per_eps[k] = {"means": means, "stds": stds, "held": held}
        names = " > ".join(title(v) for v in order)
        claims.append(
            {
                "claim": f"{names} (PGD accuracy at every eps)",
                "held": bool(per_eps) and all(p["held"] for p in per_eps.values()),
                "columns": [title(v) for v in order],
                "detail": per_eps,
            }
        )
    for cheap, dear in cheaper():
        if cheap not in by_variant or dear not in by_variant:
            continue
        ratio = _time(by_variant[cheap]) / _time(by_variant[dear])
        if VARIANTS.get(dear).attack == "none":  # no attack to skip: the same cost
            claim = f"{title(cheap)} costs about the same training time as {title(dear)} (<= 1.05x)"
            held = ratio <= 1.05
        else:  # the coin skips the attack on half the batches
            claim, held = f"{title(cheap)} trains faster than {title(dear)}", ratio < 1.0
        claims.append({"claim": claim, "held": held, "detail": {"ratio": ratio}})
    return claims


def _time(entry: dict[str, Any]) -> float:
    return entry["train_time_s"]["mean"]


def source_claim(summary: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> list:
    """'adversarial source > standard source' for each (adv_row, std_row) pair, per eps."""
    claims = []
    for adv, std in pairs:
        if adv not in summary or std not in summary:
            continue
        eps_keys = sorted(set(summary[adv]["pgd"]) & set(summary[std]["pgd"]), key=int)
        detail = {}
        for k in eps_keys:
            a, s = summary[adv]["pgd"][k], summary[std]["pgd"][k]
            detail[k] = {
                "adv": a["mean"],
                "std": s["mean"],
                "means": [a["mean"], s["mean"]],
                "stds": [a["std"], s["std"]],
                "held": a["mean"] > s["mean"],
            }
        claims.append(
            {
                "claim": f"adversarial source > standard source ({adv} vs {std})",
                "held": bool(detail) and all(d["held"] for d in detail.values()),
                "columns": [adv, std],
                "detail": detail,
            }
        )
    return claims


def claims_markdown(claims: Sequence[dict[str, Any]]) -> str:
    """One section per claim: held or not, and the numbers behind it (mean ± std per eps)."""
    lines = [
        "# The paper's claims, checked on this run",
        "",
        "Measured, not tuned: a claim that did not hold here is reported as such. An ordering",
        "holds at an eps when the means are strictly ordered; with few seeds, a gap smaller",
        "than the std is not evidence either way.",
        "",
    ]
    for c in claims:
        mark = "held" if c["held"] else "did NOT hold"
        detail = c["detail"]
        if "columns" not in c:  # a single ratio
            lines += [f"- **{c['claim']}**: {mark} (ratio {detail['ratio']:.2f})", ""]
            continue
        lines += [f"## {c['claim']}: {mark}", ""]
        lines.append("| ε (/255) | " + " | ".join(c["columns"]) + " | ordered |")
        lines.append("|---|" + "---|" * len(c["columns"]) + "---|")
        for k, d in detail.items():
            cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(d["means"], d["stds"], strict=True)]
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {'yes' if d['held'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else str(value)


def _panel(entry: dict[str, Any]) -> str:
    """Which panel of the robustness plot a row belongs to: its training family."""
    if entry["group"] == "frontier":
        return "cheap baselines"
    if entry["group"] != "weak":
        return "saliency methods (SAT)"
    variant = entry["variant"]
    return (
        "PGD family"
        if variant.startswith("pgd")
        else ("TRADES family" if variant.startswith("trades") else "standard family")
    )


def _style(entry: dict[str, Any]) -> dict[str, Any]:
    """Same colour for the same training input in every panel: plain, +noise, SAT."""
    if entry["group"] != "weak":
        return {}
    variant = entry["variant"]
    if variant.endswith("noise"):
        return {"color": "tab:orange", "ls": "--"}
    if variant.endswith("sat"):
        return {"color": "tab:blue", "ls": "-"}
    return {"color": "tab:gray", "ls": ":"}


def robustness_plot(summary: dict[str, dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Accuracy vs eps (clean at eps=0), one panel per training family (standard, PGD, TRADES,
    saliency-method study), one line per row, shaded ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[str]] = {}
    for row in ordered_rows(summary):
        panels.setdefault(_panel(summary[row]), []).append(row)
    order = [
        "standard family",
        "PGD family",
        "TRADES family",
        "saliency methods (SAT)",
        "cheap baselines",
    ]
    names = [p for p in order if p in panels]
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 3.8), dpi=120, sharey=True, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        for row in panels[name]:
            s = summary[row]
            keys = sorted(s["pgd"], key=int)
            xs = [0] + [int(k) for k in keys]
            means = np.array([s["clean"]["mean"]] + [s["pgd"][k]["mean"] for k in keys])
            stds = np.array([s["clean"]["std"]] + [s["pgd"][k]["std"] for k in keys])
            (line,) = ax.plot(xs, means, marker="o", ms=3, label=row, **_style(s))
            ax.fill_between(xs, means - stds, means + stds, color=line.get_color(), alpha=0.15)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("PGD ε (/255)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.suptitle(title or "Accuracy under PGD (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
