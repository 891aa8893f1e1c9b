"""Paper-style reports from evaluated runs: tables and plots with intervals, training time, and
claims decided by paired tests.

Input is a list of *run records*, one per trained model and seed::

    {"row": "SAT", "variant": "sat", "seed": 0, "group": "weak",
     "clean": 81.2, "pgd": {"1": 60.3, ...}, "fgsm": {...}, "autoattack": {"8": 30.1},
     "robust": {"8": 29.8},                         # per-image worst case over attacks
     "n": {"clean": 300, "pgd": {"1": 300, ...}, "autoattack": {"8": 100}},
     "correct": "runs/sat/seed0/correct.npz",       # per-image bits, relative to the report
     "train_time_s": 12.3}

Accuracies are percentages; eps keys are /255 units as strings. Rows of the same `row` name are
the seeds of one configuration. Every cell reports mean ± std over seeds (population std; one
seed shows ± 0.00) and, when `n` is known, the 95% Wilson interval of the pooled count over the
row's runs (seeds x images). Claims need the `correct` files: a paired bootstrap over the same
test images and seed pairs (`satpipe.core.stats.paired_test`). Nothing here trains or evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.stats import wilson
from satpipe.train.eval.per_image import ROBUST
from satpipe.train.variants import VARIANTS, families

# Record keys that hold {eps: accuracy} of an attack, in the order tables show them.
ATTACK_KEYS = ("pgd", "fgsm", "pgd-cw", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack",
               ROBUST)  # fmt: skip
SHORT = {"autoattack": "AA", "pgd": "PGD", "fgsm": "FGSM", ROBUST: "worst"}


def title(variant: str) -> str:
    """The paper's display name of a variant (its own name when it has no title)."""
    return getattr(VARIANTS.get(variant), "title", variant) if variant in VARIANTS else variant


def orderings() -> list[tuple[str, ...]]:
    """The paper's orderings (best first) that `claims.md` tests, each at every eps: per
    attack family, SAT > + Uniform-Noise > plain (the members the family has)."""
    chains = [tuple(f[m] for m in ("sat", "noise", "none") if m in f) for f in families().values()]
    return [c for c in chains if len(c) >= 2]


def cheaper() -> list[tuple[str, str]]:
    """Training-time claims (cheap, dear): a SAT-mixed variant against its plain one."""
    return [(f["sat"], f["none"]) for f in families().values() if {"sat", "none"} <= set(f)]


# --------------------------------------------------------------------------------------------
# Summary: mean, std and interval per row


def summarize(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group run records by `row`: per cell mean/std over seeds and the pooled Wilson interval."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["row"], []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for row, members in grouped.items():
        entry: dict[str, Any] = {
            "variant": members[0]["variant"],
            "group": members[0].get("group", "main"),
            "seeds": sorted(int(m["seed"]) for m in members),
            "clean": _stats(
                [m["clean"] for m in members], [(m.get("n") or {}).get("clean") for m in members]
            ),  # fmt: skip
            "train_time_s": _stats([m.get("train_time_s", math.nan) for m in members]),
            # seeds whose evaluation failed a gradient-masking sanity check (see results.md)
            "checks_failed": sorted(
                int(m["seed"]) for m in members if m.get("checks_passed") is False
            ),
        }
        for attack in ATTACK_KEYS:
            have = [m for m in members if m.get(attack)]
            keys = sorted({k for m in have for k in m[attack]}, key=float)
            if keys or attack in ("pgd", "fgsm"):
                entry[attack] = {k: _cell(have, attack, k) for k in keys}
        summary[row] = entry
    return summary


def _cell(members, attack: str, k: str) -> dict[str, float]:
    runs = [m for m in members if k in m[attack]]
    ns = [((m.get("n") or {}).get(attack) or {}).get(k) for m in runs]
    return _stats([m[attack][k] for m in runs], ns)


def _stats(values: Sequence[float], ns: Sequence[int | None] = ()) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    out = {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}
    if ns and all(n for n in ns):
        hits = sum(round(v * n / 100) for v, n in zip(values, ns, strict=True))
        interval = wilson(int(hits), int(sum(ns))).scaled(100)
        out.update(low=interval.low, high=interval.high, images=int(sum(ns)))
    return out


def ordered_rows(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Rows in the paper's variant order, then by name (stable across runs)."""
    rank = {v: i for i, v in enumerate(VARIANTS.names())}
    return sorted(summary, key=lambda r: (rank.get(summary[r]["variant"], 99), r))


def cell_text(v: dict[str, float]) -> str:
    """`mean ± std [low, high]`: the std over seeds only when there are several (one seed has
    no spread to show), the interval only when known."""
    text = f"{v['mean']:.2f}" + (f" ± {v['std']:.2f}" if v.get("n", 2) > 1 else "")
    return text + (f" [{v['low']:.1f}, {v['high']:.1f}]" if "low" in v else "")


FAILED_MARK = "†"


def markdown_table(
    summary: dict[str, dict[str, Any]], group: str | None = None, extra: Sequence[str] = ()
) -> str:
    """Rows x (clean, PGD eps..., then each `extra` attack's eps), cells `mean ± std [95% CI]`
    in %, best mean per column in bold; a row marked † has a run whose evaluation failed a
    gradient-masking sanity check."""
    rows = [r for r in ordered_rows(summary) if group is None or summary[r]["group"] == group]
    if not rows:
        return ""
    columns: list[tuple[str, str | None]] = [("clean", None)]
    for attack in ("pgd", *extra):
        keys = sorted({k for r in rows for k in summary[r].get(attack, {})}, key=float)
        columns += [(attack, k) for k in keys]

    def value(row: str, col: tuple[str, str | None]) -> dict[str, float] | None:
        kind, eps = col
        return summary[row]["clean"] if kind == "clean" else summary[row].get(kind, {}).get(eps)

    best = {}
    for col in columns:
        means = [v["mean"] for r in rows if (v := value(r, col)) is not None]
        best[col] = max(means) if means else None
    header = ["Method"] + [_column_name(c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row} {FAILED_MARK}" if summary[row].get("checks_failed") else row]
        for col in columns:
            v = value(row, col)
            if v is None:
                cells.append("–")
                continue
            text = cell_text(v)
            cells.append(f"**{text}**" if math.isclose(v["mean"], best[col]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _column_name(col: tuple[str, str | None]) -> str:
    kind, eps = col
    if kind == "clean":
        return "clean"
    prefix = "" if kind == "pgd" else f"{SHORT.get(kind, kind)} "
    return f"{prefix}ε={eps}/255"


def time_table(summary: dict[str, dict[str, Any]]) -> str:
    """Training wall time per row (mean ± std over seeds) and the ratio of its mean to
    original's / pgd's / trades's (same run; claims.md tests the ratios per seed)."""
    # The first row of each variant in paper order is its reference (the weak-saliency grid).
    first: dict[str, float] = {}
    for row in ordered_rows(summary):
        first.setdefault(summary[row]["variant"], summary[row]["train_time_s"]["mean"])
    base = {name: first.get(name) for name in ("original", "pgd", "trades")}
    lines = [
        "| Method | train time (s), mean ± std | / Original | / PGD | / TRADES |",
        "|---|---|---|---|---|",
    ]
    for row in ordered_rows(summary):
        t, sd = summary[row]["train_time_s"]["mean"], summary[row]["train_time_s"]["std"]
        ratios = [f"{t / b:.2f}" if b and not math.isnan(t) else "–" for b in base.values()]
        lines.append(f"| {row} | {t:.1f} ± {sd:.1f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Plot


def _panel(entry: dict[str, Any]) -> str:
    """Which panel of the robustness plot a row belongs to: its training family."""
    if entry["group"] == "frontier":
        return "cheap baselines"
    if entry["group"] == "content":
        return "content control (SAT)"
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


def _curve(s: dict[str, Any], attack: str, with_clean: bool):
    keys = sorted(s.get(attack, {}), key=float)
    cells = ([s["clean"]] if with_clean else []) + [s[attack][k] for k in keys]
    xs = ([0.0] if with_clean else []) + [float(k) for k in keys]
    mean = np.array([c["mean"] for c in cells])
    std = np.array([c["std"] for c in cells])
    low = np.array([c.get("low", c["mean"]) for c in cells])
    high = np.array([c.get("high", c["mean"]) for c in cells])
    return np.array(xs), mean, std, low, high


def _plot_row(ax, s: dict[str, Any], row: str, shift: float = 0.0) -> None:
    xs, mean, std, low, high = _curve(s, "pgd", with_clean=True)
    (line,) = ax.plot(xs, mean, marker="o", ms=3, label=row, **_style(s))
    color = line.get_color()
    ax.fill_between(xs, low, high, color=color, alpha=0.15, lw=0)  # 95% Wilson interval
    ax.errorbar(xs, mean, yerr=std, fmt="none", ecolor=color, elinewidth=0.8, capsize=2)
    if s.get("autoattack"):
        xa, ma, sa, la, ha = _curve(s, "autoattack", with_clean=False)
        # Shifted a little per row: AutoAttack runs at one eps, where the stars would overlap.
        ax.errorbar(xa + shift, ma, yerr=[ma - la, ha - ma], fmt="*", ms=8, color=color, capsize=3,
                    elinewidth=0.8, mfc="white")  # fmt: skip


def robustness_plot(summary: dict[str, dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Accuracy vs eps (clean at eps=0), one panel per training family (standard, PGD, TRADES,
    saliency-method study), one line per row: shaded band = 95% Wilson interval (pooled over
    seeds x images), error bars = ± std over seeds; stars = AutoAttack with its interval."""
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
        "content control (SAT)",
        "cheap baselines",
    ]
    names = [p for p in order if p in panels]
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 3.8), dpi=120, sharey=True, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        rows = panels[name]
        for i, row in enumerate(rows):
            _plot_row(ax, summary[row], row, shift=0.12 * (i - (len(rows) - 1) / 2))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ε (/255)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.suptitle(
        title or "Accuracy under PGD (lines), AutoAttack (stars); band: 95% interval, "
        "bars: ± std over seeds", fontsize=9,
    )  # fmt: skip
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def pooled_distortions(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{row: a results.json-shaped `distortions`} with each level's accuracy pooled over the
    row's seeds (hits over seed x image trials) and its 95% Wilson interval, for
    `distortions_plot`; rows without distortions are left out."""
    hits: dict[str, dict[str, dict[str, list[int]]]] = {}
    names: dict[str, str] = {}
    for r in records:
        for name, table in (r.get("distortions") or {}).items():
            names[name] = table["level"]
            for k, c in table["levels"].items():
                cell = hits.setdefault(r["row"], {}).setdefault(name, {}).setdefault(k, [0, 0])
                cell[0] += round(c["accuracy"] * c["n"] / 100)
                cell[1] += c["n"]
    out: dict[str, dict[str, Any]] = {}
    for row, per in hits.items():
        out[row] = {}
        for name, levels in per.items():
            cells = {}
            for k, (h, n) in levels.items():
                interval = wilson(h, n).scaled(100.0).as_dict()
                cells[k] = {"n": n, "accuracy": interval["value"], "interval": interval}
            out[row][name] = {"level": names[name], "levels": cells}
    return out
