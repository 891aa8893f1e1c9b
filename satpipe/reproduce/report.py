"""Step 7 of `satpipe reproduce`, the report: table.md, time.md, claims.md, the plots, the
saliency-quality report and results.json, written from the run records and the stores' scores.
One function per file, so a new section of the report is a new function here."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satpipe.reproduce.presets import NO_SALIENCY, SHUFFLED, SOURCES, Preset

if TYPE_CHECKING:
    from satpipe.reproduce.specs import Store


def write_report(
    out: Path,
    preset: Preset,
    records: list[dict[str, Any]],
    data: str,
    gallery_store: str | Sequence[str] | None,
    frontier: list[dict[str, Any]] | None = None,
    concurrency: str = "",
) -> Path:
    """Step 7: table.md, time.md, claims.md, robustness.png, saliency.png (one column per store
    in `gallery_store`), results.json, and with `frontier` records frontier.png and frontier.md;
    one function per file, so a new section of the report is a new function here."""
    from satpipe.reproduce import tables as report
    from satpipe.train.eval.distortions import distortions_plot

    summary = report.summarize(records)
    write_table(out, preset, summary, records)
    (out / "time.md").write_text("# Training wall time\n\n" + report.time_table(summary))
    claims = write_claims(out, summary, records)
    report.robustness_plot(summary, out / "robustness.png", _plot_title(preset))
    if preset.distortions:
        curves = report.pooled_distortions(records)
        title = f"{preset.name}: accuracy under the SAT code's distortions (pooled over seeds)"
        distortions_plot(curves, out / "distortions.png", title)
    if gallery_store:
        from satpipe.pipeline.gallery import saliency_gallery

        saliency_gallery(gallery_store, data, str(out / "saliency.png"), n=8)
    payload = {"preset": asdict(preset), "summary": summary, "claims": claims, "runs": records}
    if frontier:
        from satpipe.reproduce.frontier import write_frontier

        title = f"{preset.name}: robustness against training time"
        payload["frontier"] = write_frontier(out, frontier, title, concurrency)
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def _autoattack_label(preset: Preset) -> str:
    if preset.autoattack_eps is None:
        return ""
    what = (
        "AutoAttack (standard)" if preset.autoattack_components is None
        else "AutoAttack custom (" + " + ".join(preset.autoattack_components) + ")"
    )  # fmt: skip
    images = (
        "the whole test split" if preset.autoattack_examples is None
        else f"the first {preset.autoattack_examples} images of a class-stratified order"
    )  # fmt: skip
    seeds = (
        "" if preset.autoattack_seeds is None else f", seed {list(preset.autoattack_seeds)} runs"
    )
    return f"AA ε={preset.autoattack_eps:g}/255: {what} on {images}{seeds}"


def _plot_title(preset: Preset) -> str:
    return (
        f"{preset.name}: PGD-{preset.eval_steps} (lines), AutoAttack (stars); "
        "band 95% interval, bars ± std over seeds"
    )


def write_table(out: Path, preset: Preset, summary, records) -> Path:
    """table.md: the paper's protocol (PGD) and the AutoAttack column, side by side."""
    from satpipe.reproduce import tables as report

    sections = [
        f"# {preset.name}: accuracy (%) under {preset.eval_steps}-step PGD "
        f"(step {preset.eval_step_size:g}/255, random start) and AutoAttack\n"
    ]
    groups = (
        ("weak", "Weak saliency (masks/boxes)"),
        ("content", "Content control: shuffled pairing (the same maps, another image's) and "
                    "SAT without saliency (alpha = 1)"),
        ("methods", "Saliency methods"),
        ("frontier", "Cheap-robustness baselines (see frontier.md)"),
    )  # fmt: skip
    for group, title in groups:
        table = report.markdown_table(summary, group, extra=("autoattack",))
        if table:
            sections.append(f"## {title}\n\n{table}")
    shares = share_table(records)
    if shares:
        sections.append(shares)
    seeds = sorted({r["seed"] for r in records})
    sections.append(
        f"{'mean ± std over seeds' if len(seeds) > 1 else 'seed'} {seeds} "
        "[95% Wilson interval of the pooled count over the row's "
        "seeds x test images]; best mean per column in bold. "
        + (_autoattack_label(preset) + ". " if preset.autoattack_eps is not None else "")
        + "Per-image results: each run's correct.npz; claims.md tests the orderings.\n"
    )
    failed = [f"{r} (seeds {summary[r]['checks_failed']})" for r in summary
              if summary[r].get("checks_failed")]  # fmt: skip
    if failed:
        sections.append(
            f"{report.FAILED_MARK} a gradient-masking sanity check failed on: "
            + "; ".join(failed)
            + ". Their accuracies may not mean robustness: see each run's results.md.\n"
        )
        print(f"satpipe: warning: sanity checks failed on {'; '.join(failed)}", file=sys.stderr)
    path = out / "table.md"
    path.write_text("\n".join(sections))
    return path


def share_table(records: Sequence[dict[str, Any]]) -> str:
    """table.md's section on what each SAT row took from its maps: the realised share of
    perturbation elements from the map, the mean |delta| / eps of that part and of the whole
    SAT perturbation, mean ± std over seeds ("" when no row recorded any)."""
    import numpy as np

    rows: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("saliency_share") is not None:
            rows.setdefault(r["row"], []).append(r)
    if not rows:
        return ""

    def cell(runs, key: str, scale: float = 1.0, digits: int = 3) -> str:
        values = [scale * r[key] for r in runs if r.get(key) is not None]
        if not values:
            return "–"
        sd = f" ± {np.std(values):.{digits}f}" if len(values) > 1 else ""
        return f"{np.mean(values):.{digits}f}{sd}"

    lines = [
        "## What SAT took from its maps",
        "",
        "Share: perturbation elements SAT took from the map (the rest are random signs), over "
        "the whole run; |δ|/ε: mean size of the map part, and of SAT's whole perturbation "
        "(1 for a sign, |s| for a map element). Mean ± std over seeds.",
        "",
        "| SAT row | seeds | share from the map (%) | map part \\|δ\\|/ε | whole \\|δ\\|/ε |",
        "|---|---|---|---|---|",
    ]
    for row, runs in rows.items():
        seeds = sorted(int(r["seed"]) for r in runs)
        lines.append(
            f"| {row} | {seeds} | {cell(runs, 'saliency_share', 100, 1)} | "
            f"{cell(runs, 'map_delta')} | {cell(runs, 'perturbation')} |"
        )
    return "\n".join(lines) + "\n"


def write_claims(out: Path, summary, records) -> list[dict[str, Any]]:
    """claims.md: first the content test (SAT on each store against its shuffled twin, and
    against SAT without saliency), then the paper's orderings and the source claim by paired
    tests, and the training-time claims; a comparison of rows that perturbed by different
    amounts says so."""
    from satpipe.reproduce import claims as tests

    adv, std = f"-{SOURCES['adv'][1]}-", f"-{SOURCES['std'][1]}-"
    pairs = [(row, row.replace(adv, std)) for row in summary
             if adv in row and not row.endswith(SHUFFLED)]  # fmt: skip
    twins = [(row, row + SHUFFLED) for row in summary if row + SHUFFLED in summary]
    claims = tests.pair_claims(
        records, out, twins, "the map's content matters: SAT(store) > SAT(shuffled): "
        "{better} > {worse}",
    )  # fmt: skip
    if NO_SALIENCY in summary:
        claims += tests.pair_claims(
            records, out, [(row, NO_SALIENCY) for row, _ in twins],
            "the map adds to sign noise: {better} > {worse}",
        )  # fmt: skip
    claims += tests.ordering_claims(records, out, "weak")
    claims += tests.pair_claims(records, out, pairs, "adversarial source > standard source "
                                "({better} vs {worse})")  # fmt: skip
    claims += tests.time_claims(records, "weak")
    tests.note_perturbation_sizes(claims, records)
    (out / "claims.md").write_text(tests.claims_markdown(claims))
    return claims


def source_accuracy(sources: dict[str, str], data: str) -> list[dict[str, Any]]:
    """Each source model's clean test accuracy (%) after its last epoch, with its Wilson 95%
    interval over the test split: [{kind, variant, arch, epochs, n, accuracy: Interval}]."""
    from satpipe.core.stats import wilson
    from satpipe.data.dataset_store import open_dataset

    n = len(open_dataset(data).split("test"))
    out = []
    for kind, ckpt in sources.items():
        lines = (Path(ckpt).parent / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        acc = wilson(round(float(last["test_acc"]) * n), n).scaled(100)
        out.append(
            {
                "kind": kind,
                "variant": SOURCES[kind][0],
                "epochs": last["epoch"] + 1,
                "n": n,
                "accuracy": acc,
            }
        )
    return out


def write_quality_report(
    out: Path,
    preset: Preset,
    records: list[dict[str, Any]],
    stores: Sequence[Store],
    sources: Sequence[dict[str, Any]] = (),
) -> None:
    """Step 7, the saliency part: saliency-quality.md (with the source models' accuracy),
    saliency-quality.json, quality-vs-robustness.png, and the claim's section of claims.md."""
    from satpipe.reproduce import quality_report as qr

    points = [
        {
            "label": s.label,
            "store": Path(s.uri).relative_to(out).as_posix(),
            "row": s.row,
            "quality": s.quality,
            "mean_abs": mean_abs_saliency(s.uri),  # SAT's map part perturbs by this x eps
        }
        for s in stores
    ]
    cpoints = qr.claim_points(points, records, preset.claim_score, root=out)
    claims = qr.quality_claims(cpoints, preset.claim_score)
    (out / "saliency-quality.md").write_text(
        qr.saliency_quality_markdown(points, cpoints, preset.claim_score, sources)
    )
    title = f"{preset.name}: saliency quality vs SAT's robustness gain"
    png = out / "quality-vs-robustness.png"
    qr.quality_robustness_plot(cpoints, png, preset.claim_score, title)
    with (out / "claims.md").open("a") as f:
        f.write("\n" + qr.quality_claims_markdown(claims))
    payload = {"sources": sources, "points": points, "claim_points": cpoints, "claims": claims}
    (out / "saliency-quality.json").write_text(
        json.dumps(payload, indent=2, default=_jsonable) + "\n"
    )


def mean_abs_saliency(uri: str, split: str = "train") -> float:
    """Mean |s| over every element of a store's `split` maps (read a shard at a time): how
    much of eps SAT's map part perturbs by (masks: 1; signed-maxabs maps: mostly less)."""
    import numpy as np

    from satpipe.data.saliency_store import open_saliency
    from satpipe.data.storage import shard_rows, shard_slices

    maps = open_saliency(uri, require_complete=False).split(split)
    total, count = 0.0, 0
    for sl in shard_slices(int(maps.shape[0]), shard_rows(maps)):
        block = np.abs(np.asarray(maps[sl], dtype=np.float64))
        total += float(block.sum())
        count += block.size
    return total / max(count, 1)


def _jsonable(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else str(value)


def write_wall_time(
    out: Path, seconds: float, rates: tuple[tuple[float, float], ...], device: str = "cpu"
) -> None:
    """The run's wall time, appended to time.md (steps resumed from an earlier run took none
    of it), with the machine's yardstick (typical, best img/s; satpipe.reproduce.yardstick)
    measured before and after the grid and, on a CPU, the time scaled to the reference machine
    the budgets are written for, by the typical rates."""
    from satpipe.core.device import resolve_device
    from satpipe.reproduce.yardstick import REFERENCE_IMG_S, YARDSTICK, scaled_minutes

    (before, best_before), (after, best_after) = rates
    lo, hi = sorted((before, after))
    kind = resolve_device(device).type
    text = (
        f"\nWhole grid, this invocation: {seconds:.0f} s wall time "
        f"({seconds / 60:.1f} min), data to report.\n\n"
        f"Machine yardstick ({YARDSTICK}, {kind}), typical (fastest) "
        f"call: {before:.0f} ({best_before:.0f}) img/s before the grid, {after:.0f} "
        f"({best_after:.0f}) after.\n"
    )
    if kind == "cpu":
        text += (
            f"On a CPU at {REFERENCE_IMG_S:.0f} img/s (the machine the time budgets are "
            f"written for) this invocation would take about "
            f"{scaled_minutes(seconds, lo):.1f}-{scaled_minutes(seconds, hi):.1f} min "
            "(wall time x typical yardstick / reference).\n"
        )
    with (out / "time.md").open("a") as f:
        f.write(text)
