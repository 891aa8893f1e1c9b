"""The paper's claims decided by paired tests over the same test images and seeds.

An ordering claim (e.g. SAT > SAT + Uniform-Noise > Original) is tested at each eps of each
reported attack as its adjacent pairs: for a pair (better, worse) the difference of their
accuracies in points, averaged over the seeds both rows have, with a paired bootstrap interval
that resamples test images and seed pairs together (`satpipe.core.stats.paired_test`; both rows were
evaluated on the same images in the same order, which is checked). A pair *holds* when its
Holm-adjusted p < 0.05 and the difference is positive, is *reversed* when significant and
negative, else *not significant*. The Holm family is every comparison of one claim (each eps,
attack and pair), so the chance that any verdict of a claim is a false 'holds' or 'reversed' is
at most 5%. An ordering holds at an eps when all its pairs hold, is reversed when one is
reversed, and is otherwise not significant.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.core.stats import holm, mean_interval, paired_test, significance
from satpipe.reproduce.tables import SHORT, cheaper, orderings, title
from satpipe.train.eval.per_image import load_correct
from satpipe.train.variants import VARIANTS

LEVEL = 0.05


class CorrectBits:
    """Loads each run's correct.npz once and stacks a row's seeds for one (attack, eps)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._load = functools.lru_cache(maxsize=None)(lambda p: load_correct(self.root / p))

    def row(self, records: Sequence[dict[str, Any]], attack: str, eps: str):
        """{seed: ((n,) bool, (n,) indices)} over the row's runs that measured (attack, eps)."""
        out = {}
        for r in records:
            if not r.get("correct") or eps not in (r.get(attack) or {}):
                continue
            c = self._load(r["correct"])
            runs = c.runs(attack, eps)
            out[int(r["seed"])] = (
                runs.mean(0) if len(runs) > 1 else runs[0],
                c.indices[: runs.shape[1]],
            )
        return out


def _pair_test(bits: CorrectBits, better, worse, attack: str, eps: str) -> dict[str, Any] | None:
    a, b = bits.row(better, attack, eps), bits.row(worse, attack, eps)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    if any(not np.array_equal(a[s][1], b[s][1]) for s in seeds):
        raise SatpipeError(
            f"{better[0]['row']} and {worse[0]['row']} were evaluated on different test images "
            f"({attack} at {eps}/255): evaluate both with the same --n-examples/--subset-seed"
        )
    test = paired_test(np.stack([a[s][0] for s in seeds]), np.stack([b[s][0] for s in seeds]))
    return {"better": better[0]["row"], "worse": worse[0]["row"], "seeds": seeds,
            "n": int(len(a[seeds[0]][0])), "difference": test.difference.as_dict(), "p": test.p,
            "_test": test}  # fmt: skip


def paired_gain(bits: CorrectBits, better, worse, attack: str, eps: str):
    """`better` minus `worse` accuracy (points) at (attack, eps) from their runs' per-image
    correctness (read through `bits`, which loads each file once), as a paired-bootstrap
    Interval; None when the two rows share no seed that measured it."""
    test = _pair_test(bits, better, worse, attack, eps)
    return None if test is None else test["_test"].difference


def _finish(claim: dict[str, Any]) -> dict[str, Any]:
    """Holm over every pair of the claim; verdicts per pair and per (attack, eps) row."""
    pairs = [p for row in claim["rows"] for p in row["pairs"]]
    for pair, p_holm in zip(pairs, holm([p["p"] for p in pairs]) if pairs else [], strict=True):
        pair["p_holm"] = p_holm
        pair["verdict"] = significance(pair.pop("_test"), p_holm, LEVEL)
    for row in claim["rows"]:
        verdicts = [p["verdict"] for p in row["pairs"]]
        row["verdict"] = (
            "holds" if verdicts and all(v == "holds" for v in verdicts)
            else "reversed" if "reversed" in verdicts else "not significant"
        )  # fmt: skip
    claim["verdicts"] = {v: sum(r["verdict"] == v for r in claim["rows"])
                         for v in ("holds", "reversed", "not significant")}  # fmt: skip
    claim["held"] = bool(claim["rows"]) and claim["verdicts"]["holds"] == len(claim["rows"])
    return claim


def _rows_of(records, group: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("group", "main") == group:
            out.setdefault(r["variant"], []).append(r)
    return out


def _chain_claim(name, chain, root, attacks, labels) -> dict[str, Any]:
    """One claim over a chain of rows (best first): every adjacent pair at every eps."""
    bits = CorrectBits(root)
    claim: dict[str, Any] = {"claim": name, "kind": "ordering", "columns": labels, "rows": []}
    for attack in attacks:
        keys = set.intersection(
            *({k for r in rows for k in (r.get(attack) or {})} for rows in chain)
        )
        for k in sorted(keys, key=float):
            if float(k) == 0:
                continue
            pairs = [t for a, b in zip(chain, chain[1:], strict=False)
                     if (t := _pair_test(bits, a, b, attack, k)) is not None]  # fmt: skip
            if len(pairs) != len(chain) - 1:
                continue
            means = [float(np.mean([r[attack][k] for r in rows if k in (r.get(attack) or {})]))
                     for rows in chain]  # fmt: skip
            claim["rows"].append({"attack": attack, "eps": k, "means": means, "pairs": pairs})
    return _finish(claim)


def ordering_claims(records, root, group: str = "weak", attacks=("pgd", "autoattack")) -> list:
    """The paper's orderings (SAT > + Noise > plain per family) on the `group` rows; a family
    with only two of the three variants is tested on those two (e.g. SAT > Original)."""
    rows = _rows_of(records, group)
    out = []
    for order in orderings():
        present = [v for v in order if v in rows]
        if len(present) >= 2:
            name = " > ".join(title(v) for v in present)
            chain = [rows[v] for v in present]
            out.append(_chain_claim(name, chain, root, attacks, [title(v) for v in present]))
    return out


def pair_claims(records, root, pairs: Sequence[tuple[str, str]], name: str,
                attacks=("pgd", "autoattack")) -> list:  # fmt: skip
    """`better > worse` for each (better_row, worse_row) of `pairs` (row names)."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    return [
        _chain_claim(name.format(better=a, worse=b), [by_row[a], by_row[b]], root, attacks, [a, b])
        for a, b in pairs
        if a in by_row and b in by_row
    ]


def time_claims(records, group: str = "weak") -> list[dict[str, Any]]:
    """Training-time claims: the ratio of the cheap variant's time to the dear one's per seed
    (`time_replicates`), with a bootstrap interval over the seeds (crude with 2-3 seeds). One
    seed gives no interval, and no verdict but "not significant": `satpipe bench train`
    measures the ratio with the two sides alternated."""
    rows = _rows_of(records, group)
    out = []
    for cheap, dear in cheaper():
        if cheap not in rows or dear not in rows:
            continue
        ratios, seeds, unit = time_replicates(rows[cheap], rows[dear])
        if not ratios:
            continue
        ratio = mean_interval(ratios)
        if VARIANTS.get(dear).attack == "none":  # no attack to skip: the same cost
            claim = f"{title(cheap)} costs about the same training time as {title(dear)} (<= 1.05x)"
            verdict = "holds" if ratio.high <= 1.05 else (
                "reversed" if ratio.low > 1.05 else "not significant")  # fmt: skip
        else:  # the coin skips the attack on half the batches
            claim = f"{title(cheap)} trains faster than {title(dear)}"
            verdict = "holds" if ratio.high < 1 else (
                "reversed" if ratio.low > 1 else "not significant")  # fmt: skip
        if len(ratios) < 2:  # one run each: the noise between runs is unknown
            verdict = "not significant"
        out.append({"claim": claim, "kind": "time", "ratio": ratio.as_dict(), "seeds": seeds,
                    "replicates": len(ratios), "unit": unit, "verdict": verdict,
                    "held": verdict == "holds"})  # fmt: skip
    return out


def time_replicates(
    cheap: Sequence[dict[str, Any]], dear: Sequence[dict[str, Any]]
) -> tuple[list[float], list[int], str]:
    """Time ratios cheap / dear, one per seed both ran (independent runs: what varies between
    runs minutes apart on a shared machine varies between seeds too, which the epochs of one
    run do not show), the seeds, and what was timed. With the same number (>= 2) of epoch
    times on both sides, the ratio is of the epochs after the first (the first also starts the
    loader and, in a process's first run, fills the kernel caches: a one-off a 3-epoch run
    would weigh as a third of its cost); otherwise of the whole runs."""
    by_seed = [{int(r["seed"]): r for r in rows} for rows in (cheap, dear)]
    ratios: list[float] = []
    seeds, steady = [], True
    for seed in sorted(set(by_seed[0]) & set(by_seed[1])):
        a, b = by_seed[0][seed], by_seed[1][seed]
        ea, eb = a.get("epoch_time_s") or [], b.get("epoch_time_s") or []
        if len(ea) == len(eb) >= 2 and sum(eb[1:]) > 0:
            ratios.append(sum(ea[1:]) / sum(eb[1:]))
        elif a.get("train_time_s") and b.get("train_time_s"):
            ratios.append(a["train_time_s"] / b["train_time_s"])
            steady = False
        else:
            continue
        seeds.append(seed)
    unit = "seeds, epochs after the first" if steady else "seeds, whole runs"
    return ratios, seeds, unit


# Relative difference in mean |delta| / eps above which two compared rows are said to have
# perturbed by different amounts (a gain may then be the size, not the direction).
SIZE_RATIO = 1.1


def note_perturbation_sizes(claims: Sequence[dict[str, Any]], records) -> None:
    """Add `sizes` ({column: mean |delta| / eps}) and a `note` to every ordering or pair
    claim whose compared rows perturbed by different amounts: the records' `perturbation`
    (SAT's measured mean |delta| / eps, uniform noise's 0.5), averaged over seeds; columns are
    row names, or variant titles for the weak grid's orderings."""
    by_row: dict[str, list[float]] = {}
    by_title: dict[str, list[float]] = {}
    for r in records:
        if r.get("perturbation") is None:
            continue
        by_row.setdefault(r["row"], []).append(float(r["perturbation"]))
        if r.get("group") == "weak":
            by_title.setdefault(title(r["variant"]), []).append(float(r["perturbation"]))
    for c in claims:
        if c.get("kind") != "ordering":
            continue
        sizes = {}
        for col in c["columns"]:
            values = by_row.get(col) or by_title.get(col)
            if values:
                sizes[col] = float(np.mean(values))
        if len(sizes) < 2:
            continue
        c["sizes"] = sizes
        lo, hi = min(sizes.values()), max(sizes.values())
        if hi > SIZE_RATIO * lo:
            c["note"] = (
                "the compared rows perturbed by different amounts (mean |δ|/ε of the cheap "
                "perturbation: "
                + ", ".join(f"{k} {v:.3f}" for k, v in sizes.items())
                + "): a difference may be the perturbation's size, not its direction"
            )


# --------------------------------------------------------------------------------------------
# claims.md


def claims_markdown(claims: Sequence[dict[str, Any]]) -> str:
    """One section per claim: its verdicts per attack and eps, the effect sizes behind them."""
    lines = [
        "# The paper's claims, tested on this run",
        "",
        "Measured, not tuned: a claim that did not hold here is reported as such. Δ is the",
        "accuracy of the claimed-better row minus the claimed-worse one, in points, averaged over",
        "the seeds both have, with a 95% paired bootstrap interval over the same test images and",
        "seed pairs. A comparison **holds** when its Holm-adjusted p < 0.05 and Δ > 0,",
        "is **reversed** when significant with Δ < 0, else it is *not significant*; the",
        "Holm family is every comparison of one claim (each eps, attack and adjacent pair), so",
        "each claim's verdicts together carry at most a 5% chance of a false call. An ordering",
        "A > B > C holds at an eps when both of its pairs hold.",
        "",
    ]
    for c in claims:
        lines += _time_lines(c) if c["kind"] == "time" else _ordering_lines(c)
    return "\n".join(lines)


def _time_lines(c: dict[str, Any]) -> list[str]:
    r, n = c["ratio"], c["replicates"]
    return [
        f"- **{c['claim']}**: {c['verdict']} (time ratio {r['value']:.2f} "
        f"[{r['low']:.2f}, {r['high']:.2f}] over {n} replicate{'' if n == 1 else 's'}: "
        f"{c['unit']} {c['seeds']})",
        "",
    ]


def _ordering_lines(c: dict[str, Any]) -> list[str]:
    counts = c["verdicts"]
    tested = len(c["rows"])
    summary = "not tested (no per-image results)"
    if tested:
        summary = (
            f"holds in {counts['holds']} of {tested}, reversed in {counts['reversed']}, "
            f"not significant in {counts['not significant']}"
        )
    lines = [f"## {c['claim']}: {summary}", ""]
    if c.get("note"):
        lines += [f"Note: {c['note']}.", ""]
    if not tested:
        return lines
    cols = c["columns"]
    pair_names = [f"Δ {cols[i]} − {cols[i + 1]}" for i in range(len(cols) - 1)]
    lines.append("| attack | ε (/255) | n × seeds | " + " | ".join(cols) + " | "
                 + " | ".join(pair_names) + " | verdict |")  # fmt: skip
    lines.append("|---|---|---|" + "---|" * (len(cols) + len(pair_names)) + "---|")
    for row in c["rows"]:
        p0 = row["pairs"][0]
        means = [f"{m:.2f}" for m in row["means"]]
        deltas = [
            f"{p['difference']['value']:+.2f} [{p['difference']['low']:+.1f}, "
            f"{p['difference']['high']:+.1f}] p={p['p_holm']:.3f} {p['verdict']}"
            for p in row["pairs"]
        ]
        lines.append(f"| {SHORT.get(row['attack'], row['attack'])} | {row['eps']} | "
                     f"{p0['n']} × {len(p0['seeds'])} | " + " | ".join(means + deltas)
                     + f" | **{row['verdict']}** |")  # fmt: skip
    lines.append("")
    return lines
