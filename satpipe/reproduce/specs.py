"""What a `satpipe reproduce` grid holds: every saliency store it builds (`planned_stores`)
and every student run (`plan_runs`: the nine-variant grid with the content test's rows, the
method study with its shuffled twins, the frontier's baselines), each with the evaluation
options it is judged with. Pure functions of the preset: `run.py` executes them, `plan.py`
prices them, the report reads their names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.reproduce.presets import METHOD_LABELS, NO_SALIENCY, SHUFFLED, SOURCES, Preset


@dataclass(frozen=True)
class RunSpec:
    """One student run of step 5: a row of the table, at one seed."""

    row: str
    group: str  # "weak" (the nine-variant grid), "methods" (the saliency-method study) or
    # "frontier" (a baseline only the frontier asks for)
    variant: str
    seed: int
    saliency: str | None
    out: str
    options: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields on top of the preset's
    content: bool = False  # a row of the content test (the preset's content_* evaluation)


def eval_options(preset: Preset, seed: int, content: bool = False) -> dict[str, Any]:
    """`evaluate` options of one run: the paper's protocol (FGSM, PGD over the preset's eps
    grid, the run's seed for the random starts) plus the preset's AutoAttack column; a row of
    the content test (`content`) with the preset's cheaper content_* settings."""
    eps = preset.content_eval_eps if content and preset.content_eval_eps else preset.eval_eps
    options: dict[str, Any] = dict(
        attacks=("fgsm", "pgd"), eps=eps, steps=preset.eval_steps,
        step_size=preset.eval_step_size, seeds=(seed,),
    )  # fmt: skip
    checks = preset.check_examples
    if content and preset.content_check_examples is not None:
        checks = preset.content_check_examples
    if checks is not None:
        options["check_examples"] = checks
    if preset.distortions:
        options["distortions"] = preset.distortions
    seeds = preset.autoattack_seeds
    if preset.autoattack_eps is None or (seeds is not None and seed not in seeds):
        return options
    if content and not preset.content_autoattack:
        return options
    options["attacks"] += ("autoattack",)
    options["attack_eps"] = {"autoattack": (preset.autoattack_eps,)}
    if preset.autoattack_examples is not None:
        options["attack_examples"] = {"autoattack": preset.autoattack_examples}
    if preset.autoattack_components is not None:
        options["autoattack_components"] = preset.autoattack_components
    return options


CONTENT_VARIANTS = ("sat", "original-noise")  # the weak grid's rows of the content test


_SHUFFLED_OPTIONS = (("saliency_pairing", "shuffled"),)


_NO_SALIENCY_OPTIONS = (("alpha_base", 1.0), ("alpha_schedule", "constant"))


def plan_runs(
    preset: Preset,
    out: Path,
    seeds: Sequence[int],
    weak: str | None,
    study: dict[tuple, str],
    frontier_seeds: Sequence[int] | None = None,
    grid_seeds: Sequence[int] | None = None,
) -> list[RunSpec]:
    """Every student run: the nine-variant grid on weak saliency with the content test's rows
    (SAT's shuffled twin, SAT without saliency), the method study (each SAT row with its
    shuffled twin), then the frontier's baselines that the grid does not run already (at
    `frontier_seeds`). The content test runs at `seeds`, the rest at `grid_seeds` (None:
    `seeds`)."""
    from satpipe.train.variants import PAPER_VARIANTS, VARIANTS

    specs: list[RunSpec] = []
    rest = tuple(grid_seeds) if grid_seeds else tuple(seeds)

    def add(row, group, variant, saliency, seeds_=rest, options=(), content=False) -> None:
        needs = VARIANTS.get(variant).needs_saliency
        for seed in seeds_:
            run_dir = out / "runs" / _slug(row) / f"seed{seed}"
            specs.append(RunSpec(row, group, variant, seed, saliency if needs else None,
                                 str(run_dir), tuple(options), content))  # fmt: skip

    def content(row, group, saliency, twin: bool = True) -> None:
        """A SAT row of the content test, and its shuffled twin."""
        add(row, group, "sat", saliency, seeds, content=True)
        if preset.shuffled_twins and twin:
            add(row + SHUFFLED, "content", "sat", saliency, seeds, _SHUFFLED_OPTIONS, True)

    grid = tuple(preset.variants or PAPER_VARIANTS) if weak else ()
    for variant in grid:
        if variant == "sat":
            content(variant, "weak", weak)
        else:
            on_test = variant in CONTENT_VARIANTS
            add(variant, "weak", variant, weak, seeds if on_test else rest, content=on_test)
    if weak and preset.no_saliency_row:
        add(NO_SALIENCY, "content", "sat", weak, seeds, _NO_SALIENCY_OPTIONS, True)
    for variant in preset.study_baselines:
        add(variant, "methods", variant, None, seeds)
    for (source, method), store in study.items():
        # A model-free control's maps know nothing of the image: no twin to compare.
        content(study_row(preset, source, method), "methods", store, twin=source is not None)
    for variant in preset.frontier:
        if variant in grid:
            continue  # the grid's runs are the frontier's points
        if VARIANTS.get(variant).needs_saliency and not weak:
            raise SatpipeError(
                f"preset '{preset.name}': frontier variant '{variant}' needs the weak-saliency "
                "store, and the preset has no weak_method"
            )
        options = sorted(preset.frontier_options.get(variant, {}).items())
        add(variant, "frontier", variant, weak, frontier_seeds or rest, options)
    return specs


def frontier_eps(preset: Preset) -> float:
    """The eps (/255) the frontier reports: the training eps when the evaluation grid has it,
    else the grid's largest (the paper presets evaluate at 1-3/255 only)."""
    return preset.eps if preset.eps in preset.eval_eps else max(preset.eval_eps)


def study_row(preset: Preset, source: str | None, method: str) -> str:
    """The table row of SAT on the maps of `method` from `source` (None: a model-free control)."""
    label = METHOD_LABELS.get(method, method)
    if source is None:
        return f"SAT {label}"
    return f"SAT {preset.source_arch}-{SOURCES[source][1]}-{label}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9+.-]+", "-", text.lower()).strip("-")


@dataclass
class Store:
    """A saliency store of the grid: whose maps (source None: model-free), which SAT row
    trains on it, and its quality record once scored."""

    label: str
    source: str | None
    method: str
    uri: str
    row: str
    quality: dict[str, Any] | None = None


def planned_stores(preset: Preset, out: Path) -> list[Store]:
    """Every saliency store of the grid, in build order: weak maps, the study's, controls."""
    stores = []
    if preset.weak_method:
        uri = out / "saliency" / f"{preset.weak_method}.zarr"
        stores.append(Store(preset.weak_method, None, preset.weak_method, str(uri), "sat"))
    for source in preset.study_sources if preset.study_methods else ():
        for method in preset.study_methods:
            uri = out / "saliency" / f"{source}-{_slug(method)}.zarr"
            row = study_row(preset, source, method)
            stores.append(Store(f"{source} {method}", source, method, str(uri), row))
    for control in preset.study_controls:
        uri = out / "saliency" / f"{_slug(control)}.zarr"
        stores.append(Store(control, None, control, str(uri), study_row(preset, None, control)))
    return stores
