"""results.json, results.md and robustbench.json of one evaluation (from `measure`'s bits).

Accuracies are percentages; eps keys are /255 units as strings ("8", "0.5"). Every accuracy
comes with its 95% Wilson interval over the test images (`satpipe.core.stats.accuracy_interval`;
with seeds, over the pooled seed x image trials) and, where there are seeds, the spread over
seeds beside it. results.json (format 2)::

    clean, clean_interval                      accuracy on the evaluated images
    attacks.NAME.eps.KEY = {n, accuracy, interval, per_seed, std, seeds, [stages]}
    attacks.NAME.{implementation, randomized, params, seconds, [components, skipped,
                  version, n_target_classes, library_warnings]}
    attacks.NAME.norm ("Linf" or "L2"), [settings]; minimum-norm attacks (cw-l2) also
                  {successful, median_norm (/255), median_norm_pixels, unbounded: a cell}
    robust.KEY = {n, accuracy, interval, attacks}   per-image worst case over every L-inf attack
    robust_l2.KEY (when an L2 attack ran)       the same over the L2 attacks, KEY = radius /255
    fgsm, pgd, pgd_std, pgd_per_seed           the paper's protocol, as in format 1
    subset = {n_examples, seed, split_size, class_counts}, n_target_classes, eval (the options)
    correct = {file: "correct.npz", format, sha256}   (satpipe.train.eval.per_image)
    distortions.NAME = {level, levels: {KEY: {n, accuracy, interval}}}   with --distortions
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.stats import accuracy_interval
from satpipe.train.config import EvalConfig
from satpipe.train.eval.attack_runs import Measured
from satpipe.train.eval.attacks import ATTACKS, library_version, n_target_classes
from satpipe.train.eval.per_image import ROBUST
from satpipe.train.eval.sanity import masking_warning

FORMAT = 2
TARGETED = ("apgd-t", "fab-t", "autoattack")


def _cell(runs: list[np.ndarray], seeds: list[int | None]) -> dict[str, Any]:
    """One (attack, eps) cell: accuracy over seeds with its interval and spread."""
    per_seed = [100 * float(b.mean()) for b in runs]
    return {
        "n": int(len(runs[0])),
        "accuracy": float(np.mean(per_seed)),
        "interval": accuracy_interval(np.stack(runs)).as_dict(),
        "per_seed": per_seed,
        "std": float(np.std(per_seed)),
        "seeds": seeds,
    }


def attack_table(measured: Measured, cfg: EvalConfig, num_classes: int) -> dict[str, Any]:
    """results.json's `attacks`: per attack its settings and per eps its accuracy cell."""
    from satpipe.train.eval.attack_runs import components

    table: dict[str, Any] = {}
    for (attack, k, seed), bits in measured.bits.items():
        entry = table.setdefault(attack, _attack_info(attack, cfg, num_classes, measured))
        cell = entry["eps"].setdefault(k, {"runs": [], "seeds": [], "stages": {}})
        cell["runs"].append(bits)
        cell["seeds"].append(seed)
        for name, stage in measured.stages.get((attack, k, seed), {}).items():
            cell["stages"].setdefault(name, []).append(stage)
    for attack, entry in table.items():
        for k, cell in list(entry["eps"].items()):
            out = _cell(cell["runs"], cell["seeds"])
            if cell["stages"]:
                out["stages"] = {s: _cell(r, cell["seeds"])["accuracy"] for s, r in
                                 cell["stages"].items()}  # fmt: skip
            entry["eps"][k] = out
        entry["eps"] = dict(sorted(entry["eps"].items(), key=lambda kv: float(kv[0])))
        if attack == "autoattack":
            parts, skipped = components(cfg, num_classes)
            standard = ATTACKS.get("autoattack").components
            entry.update(components=list(parts), skipped=skipped,
                         version="standard" if parts == standard else "custom")  # fmt: skip
    return table


def _attack_info(attack: str, cfg: EvalConfig, num_classes: int, measured: Measured):
    entry = ATTACKS.get(attack)
    if entry.version is not None:
        implementation = entry.version()
    else:
        implementation = library_version() if entry.implementation != "satpipe" else "satpipe"
    info: dict[str, Any] = {
        "implementation": implementation,
        "norm": entry.norm,
        "randomized": entry.randomized,
        "params": {p: getattr(cfg, p) for p in entry.params},
        "seconds": measured.seconds.get(attack),
        "eps": {},
    }
    if entry.settings:
        info["settings"] = dict(entry.settings)
    if attack in measured.norms:
        info.update(min_norm_summary(measured.clean, measured.norms[attack]))
    if attack in TARGETED:
        info["n_target_classes"] = n_target_classes(num_classes)
    if entry.implementation != "satpipe":
        info["library_warnings"] = measured.library_warnings.get(attack, [])
    return info


def min_norm_summary(clean: np.ndarray, norms: np.ndarray) -> dict[str, Any]:
    """A minimum-norm attack's radius-free numbers: the median norm of its successful
    perturbations (images right when clean that it fooled; /255 units like the eps keys, and
    in pixel units), how many, and the accuracy with no radius at all (right when clean and
    never fooled: what the SAT code's CW-L2 test reports)."""
    n = len(norms)
    clean = np.asarray(clean[:n], bool)
    fooled = clean & np.isfinite(norms)
    unbounded = clean & ~np.isfinite(norms)
    median = float(np.median(norms[fooled])) if fooled.any() else None
    return {
        "successful": int(fooled.sum()),
        "median_norm": None if median is None else 255 * median,
        "median_norm_pixels": median,
        "unbounded": {
            "n": int(n),
            "accuracy": 100 * float(unbounded.mean()),
            "interval": accuracy_interval(unbounded).as_dict(),
        },
    }


def robust_table(measured: Measured, norm: str = "Linf") -> dict[str, Any]:
    """results.json's `robust` (L-inf) / `robust_l2`: the per-image worst case over every
    attack of that threat model, per eps."""
    names: dict[str, set[str]] = {}
    for attack, k, _ in measured.bits:
        if ATTACKS.get(attack).norm == norm:
            names.setdefault(k, set()).add(attack)
    return {
        k: {
            "n": int(len(bits)),
            "accuracy": 100 * float(bits.mean()),
            "interval": accuracy_interval(bits).as_dict(),
            "attacks": sorted(names[k]),
        }
        for k, bits in measured.robust(norm).items()
    }


def paper_protocol(attacks: dict[str, Any]) -> dict[str, Any]:
    """The format-1 keys (fgsm, pgd mean/std/per seed, in %) the paper-style tables read."""
    pgd = attacks.get("pgd", {}).get("eps", {})
    fgsm = attacks.get("fgsm", {}).get("eps", {})
    return {
        "fgsm": {k: c["accuracy"] for k, c in fgsm.items()},
        "pgd": {k: c["accuracy"] for k, c in pgd.items()},
        "pgd_std": {k: c["std"] for k, c in pgd.items()},
        "pgd_per_seed": {k: c["per_seed"] for k, c in pgd.items()},
    }


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=num_classes).astype(int).tolist()


def epoch_times(run_dir: Path) -> list[float] | None:
    """Training wall seconds of each epoch in RUN/metrics.jsonl, in order: the epoch's loop
    plus the overfitting guard's check (part of what the method costs); evaluation on the test
    split excluded. None without a metrics file."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            out.append(float(record.get("seconds", 0.0)) + float(record.get("guard_seconds", 0.0)))
    return out


def saliency_use(run_dir: Path) -> dict[str, Any] | None:
    """What a SAT-family run took from its saliency maps, pooled over RUN/metrics.jsonl's
    epochs: `share` (perturbation elements from the map / elements SAT drew), `map_delta`
    (mean |delta| / eps of the map part, i.e. mean |s| there), `alpha_mean` (mean over the
    epochs' mean alphas) and `perturbation` (mean |delta| / eps of all of SAT's elements:
    1 for noise elements, |s| for map ones). None for a run that recorded none (no SAT)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    n_sat = n_map = 0
    abs_sum, alphas = 0.0, []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            r = json.loads(line)
            if "sat_elements" not in r:
                continue
            n_sat += int(r["sat_elements"])
            n_map += int(r["map_elements"])
            abs_sum += float(r.get("map_delta") or 0.0) * int(r["map_elements"])
            alphas.append(float(r["alpha_mean"]))
    if not n_sat:
        return None
    return {
        "share": n_map / n_sat,
        "map_delta": abs_sum / n_map if n_map else None,
        "alpha_mean": sum(alphas) / len(alphas),
        "perturbation": (n_sat - n_map + abs_sum) / n_sat,
        "elements": n_sat,
    }


def saliency_share(run_dir: Path) -> float | None:
    """The run's share of SAT perturbation elements taken from the map (see `saliency_use`)."""
    use = saliency_use(run_dir)
    return None if use is None else use["share"]


def robustbench_record(results: dict[str, Any], measured: Measured) -> dict[str, Any] | None:
    """A RobustBench-style model record (their model-info JSON's fields, accuracies as "xx.xx"
    strings) for the largest eps AutoAttack ran at; None when it did not run. clean_acc is on
    the same images as autoattack_acc, as RobustBench computes it."""
    aa = results["attacks"].get("autoattack")
    if not aa:
        return None
    k = max(aa["eps"], key=float)
    cell = aa["eps"][k]
    clean = measured.clean[: cell["n"]]
    return {
        "name": f"{results.get('variant') or 'model'} ({results['arch']}, seed {results['seed']})",
        "dataset": results["dataset"],
        "data": results["data"],
        "threat_model": "Linf",
        "eps": f"{k}/255",
        "clean_acc": f"{100 * clean.mean():.2f}",
        "autoattack_acc": f"{cell['accuracy']:.2f}",
        "n_examples": cell["n"],
        "architecture": results["arch"],
        "training_time_s": results.get("train_time_s"),
        "additional_data": False,
        "number_forward_passes": 1,
        "autoattack_version": aa["version"],
        "autoattack_components": aa["components"],
        "n_target_classes": aa.get("n_target_classes"),
        "implementation": aa["implementation"],
        "intervals_95": {
            "clean_acc": accuracy_interval(clean).as_dict(),
            "autoattack_acc": cell["interval"],
        },
        "seeds": cell["seeds"],
        "satpipe": {
            "variant": results.get("variant"),
            "seed": results.get("seed"),
            "checkpoint_sha256": results["checkpoint_sha256"],
            "subset_seed": results["subset"]["seed"],
        },
    }


# --------------------------------------------------------------------------------------------
# results.md


def _interval_text(cell: dict[str, Any]) -> str:
    i = cell["interval"]
    return f"[{i['low']:.1f}, {i['high']:.1f}]"


def results_markdown(results: dict[str, Any]) -> str:
    """results.md: accuracy per attack and eps with intervals, the worst case, the checks."""
    a = results["attack"]
    ci = results["clean_interval"]
    lines = [
        f"# Robustness: {results.get('variant') or 'model'} ({results['arch']})",
        "",
        f"Test split of `{results['data']}`: {results['n']} of {results['subset']['split_size']}"
        f" images{_subset_text(results)}. Clean accuracy **{results['clean']:.2f}%** "
        f"[{ci['low']:.1f}, {ci['high']:.1f}]. PGD: {a['steps']} steps of {a['step_size']}/255, "
        f"random start, {a['restarts']} restart(s), seeds {', '.join(map(str, a['seeds']))}.",
        "",
        "Accuracy (%) = right on the clean and on the attacked image; [95% Wilson interval over "
        "the images (pooled over seeds)]; ± std over seeds.",
        "",
    ]
    running = results.get("running")
    if running:  # --allow-running: these numbers are of one epoch of an unfinished run
        lines += [
            f"**Evaluated while the run was training** (`--allow-running`): the checkpoint of "
            f"epoch {running['epoch']}; the run's final weights will differ.",
            "",
        ]
    lines += _accuracy_table(results)
    lines += _stages_lines(results)
    lines += _l2_lines(results)
    lines += _distortion_lines(results)
    use = results.get("saliency_use")
    if use:
        delta = use["map_delta"]
        mag = "" if delta is None else f", mean |δ|/ε of the map part {delta:.3f}"
        lines += [
            "",
            f"SAT took **{100 * use['share']:.1f}%** of its perturbation elements from the "
            f"saliency map (mean alpha {use['alpha_mean']:.3f}{mag}; {use['elements']} elements).",
        ]
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
        lines += ["", f"**{masking_warning(results)}.**"]
    return "\n".join(lines) + "\n"


def _subset_text(results: dict[str, Any]) -> str:
    sub = results["subset"]
    if sub["n_examples"] is None:
        return ""
    return f" (class-stratified subset, seed {sub['seed']})"


def _accuracy_table(results: dict[str, Any], norm: str = "Linf") -> list[str]:
    """The accuracy table of one threat model (L-inf: eps; L2: radius) with its worst case."""
    robust = results["robust"] if norm == "Linf" else results.get("robust_l2", {})
    attacks = {n: a for n, a in results["attacks"].items() if a.get("norm", "Linf") == norm}
    if not attacks:
        return []
    keys = sorted({k for a in attacks.values() for k in a["eps"]} | set(robust), key=float)
    names = list(attacks) + [ROBUST]
    first = "eps (/255)" if norm == "Linf" else "L2 radius (/255)"
    header = [first] + [n if n != ROBUST else "**worst case**" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
    for k in keys:
        cells = [k if norm == "Linf" else f"{k} (= {float(k) / 255:.3g})"]
        for name in names:
            cell = robust.get(k) if name == ROBUST else attacks[name]["eps"].get(k)
            if cell is None:
                cells.append("–")
                continue
            spread = f" ± {cell['std']:.2f}" if len(cell.get("per_seed", [])) > 1 else ""
            n = "" if cell["n"] == results["n"] else f" (n={cell['n']})"
            cells.append(f"{cell['accuracy']:.2f}{spread} {_interval_text(cell)}{n}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _stages_lines(results: dict[str, Any]) -> list[str]:
    aa = results["attacks"].get("autoattack")
    if not aa:
        return []
    skipped = "".join(f"; {c} skipped: {why}" for c, why in aa["skipped"].items())
    lines = [
        "",
        f"AutoAttack ({aa['version']}: {', '.join(aa['components'])}; "
        f"{aa['n_target_classes']} target classes{skipped}; {aa['implementation']}), robust "
        "accuracy (%) after each stage:",
        "",
    ]
    for k, cell in aa["eps"].items():
        stages = ", ".join(f"{s} {v:.2f}" for s, v in cell["stages"].items())
        lines.append(f"- {k}/255: {stages}")
    for w in aa.get("library_warnings", []):
        lines.append(f"- the reference code warned: {w}")
    return lines


def _l2_lines(results: dict[str, Any]) -> list[str]:
    """The L2 attacks (their own threat model): accuracy per radius, the minimum-norm numbers."""
    table = _accuracy_table(results, "L2")
    if not table:
        return []
    lines = ["", "## L2 attacks", "", "Accuracy (%) per L2 radius (/255 units, = the radius in "
             "pixel units); the worst case joins only L2 attacks.", "", *table]  # fmt: skip
    for name, a in results["attacks"].items():
        if a.get("norm") != "L2" or "unbounded" not in a:
            continue
        median = "–" if a["median_norm"] is None else (
            f"{a['median_norm']:.2f}/255 ({a['median_norm_pixels']:.4f})"
        )  # fmt: skip
        u = a["unbounded"]
        lines += [
            "",
            f"- {name} ({a['implementation']}; "
            + ", ".join(f"{k} {v}" for k, v in a.get("settings", {}).items())
            + f"): median L2 of its {a['successful']} successful perturbations {median}; "
            f"accuracy with no radius {u['accuracy']:.2f}% {_interval_text(u)}.",
        ]
    return lines


def _distortion_lines(results: dict[str, Any]) -> list[str]:
    """Accuracy per level of each distortion (the SAT code's contrast / low-pass / high-pass)."""
    table = results.get("distortions")
    if not table:
        return []
    lines = ["", "## Distortions", "", "Accuracy (%) on the distorted test images [95% Wilson "
             "interval]; distortions.png plots them.", ""]  # fmt: skip
    for name, d in table.items():
        lines += [f"| {name}: {d['level']} | " + " | ".join(d["levels"]) + " |",
                  "|---" + "|---:" * len(d["levels"]) + "|"]  # fmt: skip
        cells = [f"{c['accuracy']:.2f} {_interval_text(c)}" for c in d["levels"].values()]
        lines += ["| accuracy | " + " | ".join(cells) + " |", ""]
    return lines
