"""`satpipe reproduce --fast-dev-run`: every step of a preset on a few dozen rows.

A smoke run (Lightning's `fast_dev_run`): the same code path as the real grid (import, weak
saliency, sources, method stores, scores, students, evaluation, report), with the preset cut to
the least each step allows, so that a paper preset shows it completes on the user's data and
machine in minutes before a GPU hour is spent on it:

- data: the preset's importer runs on the whole `--data-root` as in the real run, then a
  class-stratified subset of FAST_DEV_ROWS rows per split (every prefix of
  `stratified_order` is stratified) is written as its own store, masks and boxes included;
  the built-in shapes data is generated at that size directly;
- one seed, one epoch (sources too), one PGD step in training and in the evaluation;
- saliency methods at their fewest samples/steps (SmoothGrad 1 sample, IG 1 step);
- SCORE_N rows for the faithfulness/sanity scores, AutoAttack (the preset's version) and the
  sanity checks' extra PGD runs on AUTOATTACK_EXAMPLES and CHECK_EXAMPLES test images.

The preset is renamed NAME-fast-dev-run, so its data store, its plots' titles and
preset.json say what it is, and every Markdown page of the report opens with SMOKE_BANNER.
A folder that holds one kind of run is refused to the other kind (a real run must never
resume from a smoke run's one-epoch checkpoints).

FAST_DEV_ROWS is 64 train and 16 test rows, fewer than a few hundred: a ResNet-34 makes 4-6
training passes per second on one core of the shared 2-core machine (plan.py measures it),
and the CIFAR-100 grid runs two such sources, eight method stores and eight scores on them,
then ten students each evaluated at four eps; its plan read 26 minutes there at 256/64 rows
and 16 at 128/32.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from satpipe.core.errors import SatpipeError
from satpipe.reproduce.presets import Preset

SUFFIX = "-fast-dev-run"
FAST_DEV_ROWS = {"train": 64, "test": 16}
SCORE_N = 4
AUTOATTACK_EXAMPLES = 4
CHECK_EXAMPLES = 8
# Method parameters that count samples or steps: a smoke run takes the fewest allowed (> 0).
COUNT_PARAMS = ("samples", "steps")
SMOKE_BANNER = (
    "> **Smoke run** (`satpipe reproduce --fast-dev-run`): every step of the preset on "
    "{train} train / {test} test rows, one epoch, one seed, the fewest samples and steps. "
    "It shows that the grid completes; its numbers are not results.\n\n"
)


def fast_dev_name(name: str) -> str:
    return name + SUFFIX


def fewest_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` of saliency `method` with every sample/step count at 1, the least it takes."""
    from satpipe.pipeline.methods import get_method

    fields = {f.name for f in dataclasses.fields(get_method(method, **params))}
    return {**params, **{k: 1 for k in COUNT_PARAMS if k in fields}}


def fast_dev_preset(preset: Preset) -> Preset:
    """The preset cut to a smoke run (see the module docstring); same steps, same code."""
    methods = [*preset.study_methods, *preset.study_controls]
    if preset.weak_method:
        methods.append(preset.weak_method)
    params = {m: fewest_params(m, preset.method_params.get(m, {})) for m in methods}
    options = dict(preset.dataset_options)
    if preset.dataset == "shapes":
        options["n_train"] = min(
            int(options.get("n_train", FAST_DEV_ROWS["train"])), FAST_DEV_ROWS["train"]
        )
        options["n_test"] = min(
            int(options.get("n_test", FAST_DEV_ROWS["test"])), FAST_DEV_ROWS["test"]
        )
    # The overfitting guard holds rows out of training: keep most of the few rows to train on.
    guard = FAST_DEV_ROWS["train"] // 4
    frontier_options = {
        variant: {k: min(v, guard) if k == "guard_rows" else v for k, v in opts.items()}
        for variant, opts in preset.frontier_options.items()
    }
    return replace(
        preset,
        name=fast_dev_name(preset.name),
        frontier_options=frontier_options,
        dataset_options=options,
        method_params={k: v for k, v in params.items() if v},
        score_n=min(preset.score_n, SCORE_N),
        seeds=preset.seeds[:1],
        frontier_seeds=None,
        epochs=1,
        source_epochs=1,
        attack_steps=1,
        eval_steps=1,
        # One step has to reach the ball's edge for PGD not to be weaker than FGSM.
        eval_step_size=max(preset.eval_eps),
        check_examples=min(preset.check_examples or CHECK_EXAMPLES, CHECK_EXAMPLES),
        autoattack_examples=min(preset.autoattack_examples or AUTOATTACK_EXAMPLES,
                                AUTOATTACK_EXAMPLES),
        autoattack_seeds=None,
    )  # fmt: skip


def check_out_folder(out: Path, fast_dev_run: bool) -> None:
    """Refuse a report folder that holds the other kind of run (its preset.json says which):
    a real grid resumed from a smoke run's stores and one-epoch checkpoints would be wrong."""
    recorded = out / "preset.json"
    if not recorded.is_file():
        return
    try:
        name = str(json.loads(recorded.read_text()).get("name", ""))
    except (OSError, ValueError):
        return  # unreadable: the real run rewrites it, nothing to protect
    if name.endswith(SUFFIX) and not fast_dev_run:
        raise SatpipeError(
            f"{out}: holds a --fast-dev-run smoke run ({name}); give the real run another --out"
        )
    if fast_dev_run and not name.endswith(SUFFIX):
        raise SatpipeError(
            f"{out}: holds a real run of '{name}'; give --fast-dev-run another --out"
        )


def subset_data(full: str, out: Path, rows: dict[str, int] | None = None) -> str:
    """A dataset store at `out` with the first `rows[split]` rows of each split of `full` in
    the class-stratified order (masks and boxes kept); reused when it was made from this very
    store (same fingerprint). Returns its URI."""
    from satpipe.data.dataset_store import open_dataset
    from satpipe.data.importers import SplitArrays, write_dataset
    from satpipe.train.eval.subset import stratified_order

    rows = rows or FAST_DEV_ROWS
    view = open_dataset(full)
    if out.exists():
        try:
            made = open_dataset(str(out), require_complete=False)
            if made.complete and made.attrs["source"].get("fingerprint") == view.fingerprint:
                return str(out)
        except SatpipeError:
            pass  # a half-written or foreign store: replaced below
    splits = {}
    for name in view.splits:
        split = view.split(name)
        labels = np.asarray(split.labels[:])
        idx = np.sort(stratified_order(labels)[: rows.get(name, 0)])
        if not len(idx):
            continue

        def take(array: Any, idx: np.ndarray = idx) -> np.ndarray | None:
            return None if array is None else np.asarray(array.oindex[idx])

        splits[name] = SplitArrays(
            take(split.images), labels[idx], take(split.masks), take(split.boxes)
        )
    source = {
        "format": "fast-dev-run subset",
        "path": str(full),
        "fingerprint": view.fingerprint,
        "rows": {k: len(v) for k, v in splits.items()},
        "order": "first rows of satpipe.train.eval.subset.stratified_order (seed 0), sorted",
        "of": view.attrs.get("source"),
    }
    return write_dataset(
        str(out), splits, name=view.name, classes=view.classes, source=source, overwrite=True
    )


def mark_smoke_pages(out: Path, data: str) -> None:
    """Open every Markdown page of the report in `out` with SMOKE_BANNER (once)."""
    from satpipe.data.dataset_store import open_dataset

    view = open_dataset(data)
    counts = {s: len(view.split(s)) for s in view.splits}
    banner = SMOKE_BANNER.format(train=counts.get("train", 0), test=counts.get("test", 0))
    for page in sorted(out.glob("*.md")):
        text = page.read_text()
        if not text.startswith(banner):
            page.write_text(banner + text)
