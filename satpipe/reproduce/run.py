"""`satpipe reproduce`: the paper's grid end to end (the one module that uses all three packages).

Steps, each skipped when its output exists and is complete, so a killed run resumes:

1. data          out/data/NAME.zarr           built-in `shapes`, or imported from --data-root
2. weak saliency out/saliency/mask.zarr        masks or boxes as +-1 maps (no model)
3. sources       out/sources/{std,adv}/       source models: standard and PGD-trained
4. saliency      out/saliency/SRC-METHOD.zarr  maps for the method study (and CONTROL.zarr)
5. quality       every store scored (`satpipe store score`), recorded in its provenance
6. runs          out/runs/ROW/seedK/          students: train, then evaluate (results.json)
7. report        table.md, results.json, robustness.png, saliency.png, time.md, claims.md,
                 saliency-quality.md, quality-vs-robustness.png, and for presets with a
                 `frontier`: frontier.png, frontier.md; with `distortions`: distortions.png

One bar follows the whole grid with an ETA (each step weighted by its estimated work,
satpipe.reproduce.grid); time.md records the wall time of the run.

Independent runs of step 5 go to dask workers with `jobs > 1` or a `scheduler` address. What
is reported is what was measured: no preset is tuned to make a claim hold.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from satpipe.core.cluster import ONE_THREAD_ENV, dask_client, run_tasks
from satpipe.core.device import DEVICE_HELP
from satpipe.core.errors import SatpipeError
from satpipe.core.options import coerce_fields, option
from satpipe.core.progress import grid_progress, progress
from satpipe.reproduce import fastdev
from satpipe.reproduce.plan import check_annotations, print_plan
from satpipe.reproduce.presets import PRESETS, SOURCES, Preset
from satpipe.reproduce.report import (
    source_accuracy,
    write_quality_report,
    write_report,
    write_wall_time,
)
from satpipe.reproduce.specs import (
    RunSpec,
    Store,
    eval_options,
    frontier_eps,
    plan_runs,
    planned_stores,
)


@dataclass
class ReproduceConfig:
    """What `satpipe reproduce` fills in. `seeds`/`epochs` override the preset (smoke runs)."""

    preset: str = option(
        "quick", "The grid to run (`satpipe list presets`).", short="-p",
        choices="satpipe.reproduce.presets:PRESETS",
    )  # fmt: skip
    out: str | None = option(None, "Report folder (default: results/PRESET).", short="-o")
    data_root: str | None = option(None, "Folder with the real data set (paper presets).")
    jobs: int = option(
        1, "Runs in parallel on a local dask cluster (on GPUs: at most one per GPU, each on "
        "its own).", short="-j",
    )  # fmt: skip
    scheduler: str | None = option(None, "dask scheduler address to run on.")
    device: str = option("auto", DEVICE_HELP)
    seeds: tuple[int, ...] | None = option(None, "Override the preset's seeds, e.g. 0,1.")
    epochs: int | None = option(None, "Override the preset's epochs.")
    fast_dev_run: bool = option(
        False, "Smoke run: every step on a few hundred rows, one epoch, fewest samples/steps "
        "(default out: results/PRESET-fast-dev-run).",
    )  # fmt: skip
    plan: bool = option(True, "Print the grid's steps and their estimated cost first.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.preset = PRESETS.entry(self.preset).name
        if self.out is None:
            suffix = "-fast-dev-run" if self.fast_dev_run else ""
            self.out = f"results/{self.preset}{suffix}"
        if self.jobs < 1:
            raise SatpipeError(f"--jobs must be >= 1, got {self.jobs}")


# --------------------------------------------------------------------------------------------
# Steps


def build_data(preset: Preset, out: Path, data_root: str | None) -> str:
    """Step 1: the dataset store (reused when complete)."""
    from satpipe.data.dataset_store import open_dataset

    uri = out / "data" / f"{preset.name}.zarr"
    if _complete(open_dataset, uri):
        return str(uri)
    uri.parent.mkdir(parents=True, exist_ok=True)
    if preset.dataset == "shapes":
        from satpipe.data.shapes import make_shapes

        # A half-written store from a killed run is replaced, never trusted.
        return make_shapes(str(uri), overwrite=True, **preset.dataset_options)
    if not data_root:
        raise SatpipeError(
            f"preset '{preset.name}' imports {preset.dataset}: pass --data-root with its files"
        )
    from satpipe.data.importers import import_dataset

    return import_dataset(
        preset.dataset, data_root, str(uri), overwrite=True, **preset.dataset_options
    )


def build_saliency(
    data: str, out: Path, method: str, params: dict[str, Any], model: str | None, device: str
) -> str:
    """Steps 2 and 4: a saliency store; the runner itself skips shards already done."""
    from satpipe.data.saliency_store import open_saliency
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    if _complete(open_saliency, out):
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = SaliencyConfig(
        method=method, data=data, out=str(out), model=model, params=params, device=device
    )
    return compute_saliency(config)


def build_quality(
    store: str, data: str, model: str | None, preset: Preset, device: str
) -> dict[str, Any]:
    """Step 5: the store's quality scores, or the ones it records when they were made with
    the same settings and judge model (a resumed run does not score twice)."""
    from satpipe.data.saliency_store import open_saliency
    from satpipe.pipeline.config import ScoreConfig
    from satpipe.pipeline.quality import score_store
    from satpipe.train.checkpoint import file_sha256

    rows = int(preset.dataset_options.get("n_train", preset.score_n))
    n = min(preset.score_n, rows)
    config = ScoreConfig(store, data=data, model=model, n=n, device=device)
    recorded = open_saliency(store).attrs.get("quality") or {}
    settings = recorded.get("settings") or {}
    sha = file_sha256(model) if model else None
    if (
        settings.get("n") == config.n
        and settings.get("seed") == config.seed
        and settings.get("steps") == config.steps
        and settings.get("scores") == "all"
        and (settings.get("model") or {}).get("sha256") == sha
    ):
        return recorded
    return score_store(config)


def train_config(preset: Preset, **fields: Any):
    """A TrainConfig with the preset's optimisation and attack settings."""
    from satpipe.train.config import TrainConfig

    base = dict(
        model=preset.student,
        epochs=preset.epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        lr_schedule=preset.lr_schedule,
        eps=preset.eps,
        attack_steps=preset.attack_steps,
        attack_step_size=preset.attack_step_size,
        alpha_schedule=preset.alpha_schedule,
        alpha_horizon=preset.alpha_horizon,
    )
    base.update(fields)
    return TrainConfig(**base)


def train_resumable(config) -> Path:
    """Train, or resume a killed run, or skip a finished one (its checkpoint has every pass,
    or the overfitting guard stopped it)."""
    from satpipe.train.trainer import run_finished, train

    run = Path(config.out)
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        if run_finished(config):
            return run
        return train(replace(config, resume=True))
    # A run killed before its first checkpoint left at most logs: start it over.
    return train(replace(config, overwrite=True))


def build_source(preset: Preset, data: str, out: Path, kind: str, device: str) -> str:
    """Step 3: a source model (`std`: original training, `adv`: PGD training)."""
    variant, _ = SOURCES[kind]
    config = train_config(
        preset,
        variant=variant,
        data=data,
        out=str(out),
        model=preset.source_arch,
        epochs=preset.source_epochs,
        device=device,
    )
    return str(train_resumable(config) / "checkpoint.pt")


def run_student(spec: RunSpec, preset: Preset, data: str, device: str) -> dict[str, Any]:
    """Step 5 for one run: train (or resume/skip), evaluate unless results of this very
    checkpoint exist already."""
    from satpipe.train.eval.evaluate import evaluate

    results_path = Path(spec.out) / "results.json"
    config = train_config(
        preset,
        variant=spec.variant,
        data=data,
        saliency=spec.saliency,
        out=spec.out,
        seed=spec.seed,
        device=device,
        **dict(spec.options),
    )
    run = train_resumable(config)
    options = eval_options(preset, spec.seed, spec.content)
    if results_path.is_file():
        from satpipe.train.eval.staleness import mark_if_stale

        mark_if_stale(run)  # results of an earlier checkpoint say so, even if eval fails now
        results = json.loads(results_path.read_text())
        if not results.get("stale") and _evaluated_as(results, run, config.epochs, options):
            return results
    # Not strict: a run that fails a sanity check is reported (marked in table.md, named on
    # stderr), not allowed to stop the rest of the grid.
    return evaluate(run, device=device, strict=False, **options)


def _evaluated_as(results: dict[str, Any], run: Path, epochs: int, options) -> bool:
    """Whether a results.json is this run's evaluation with these options (else: redo it)."""
    from satpipe.train.config import EvalConfig

    wanted = EvalConfig(run=str(run), **options).to_dict()
    from satpipe.train.checkpoint import file_sha256

    return (
        results.get("epochs") == epochs
        and results.get("checkpoint_sha256") == file_sha256(run / "checkpoint.pt")
        and results.get("eval") == wanted
        and (run / str((results.get("correct") or {}).get("file"))).is_file()
    )


def _complete(opener: Callable, uri: Path) -> bool:
    if not uri.exists():
        return False
    try:
        return bool(opener(str(uri), require_complete=False).complete)
    except SatpipeError:
        return False


# --------------------------------------------------------------------------------------------
# Driver


def reproduce(config: ReproduceConfig) -> Path:
    """Run the preset's whole grid into `config.out` and write the report; returns the folder."""
    from satpipe.reproduce.yardstick import yardstick_rate

    rate_before = yardstick_rate(config.device)
    started = time.perf_counter()
    preset = PRESETS.get(config.preset)
    if config.fast_dev_run:
        preset = fastdev.fast_dev_preset(preset)
    if config.epochs is not None:
        preset = replace(preset, epochs=config.epochs, source_epochs=config.epochs)
    seeds = tuple(config.seeds) if config.seeds else preset.seeds
    out = Path(config.out)
    fastdev.check_out_folder(out, config.fast_dev_run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset.json").write_text(json.dumps(asdict(preset), indent=2) + "\n")
    frontier_seeds = tuple(config.seeds) if config.seeds else preset.frontier_seeds
    grid_seeds = tuple(config.seeds) if config.seeds else preset.grid_seeds
    plan = _GridPlan(preset, out, seeds, frontier_seeds, grid_seeds)
    with grid_progress(f"reproduce {preset.name}", plan.total) as bar:
        with plan.step(bar, "data"):
            data = build_data(preset, out, config.data_root)
            if config.fast_dev_run and preset.dataset != "shapes":
                data = fastdev.subset_data(data, out / "data" / f"{preset.name}-rows.zarr")
        # Before any training: the weak method's masks/boxes are there, and what it will cost.
        check_annotations(preset, data)
        if config.plan:
            text = print_plan(preset, data, config.device, seeds, frontier_seeds, grid_seeds)
            (out / "plan.md").write_text(text)
            print(text, file=sys.stderr)
        stores, sources = _build_stores(preset, out, data, config.device, plan, bar)
        # Model-free stores (masks, random) are judged by the standard source when there is one.
        judge = sources.get("std") or next(iter(sources.values()), None)
        for store in stores:
            with plan.step(bar, f"score {store.label}"):
                store.quality = build_quality(
                    store.uri, data, sources.get(store.source, judge), preset, config.device
                )
        weak = next((s.uri for s in stores if s.row == "sat" and s.source is None), None)
        study = {(s.source, s.method): s.uri for s in stores if s.row != "sat"}
        specs = plan_runs(preset, out, seeds, weak, study, frontier_seeds, grid_seeds)
        results = _run_all(specs, preset, data, config, on_done=plan.run_done(bar))
        records = [_record(spec, res, out) for spec, res in zip(specs, results, strict=True)]
        frontier = _frontier_records(preset, specs, results)
        with plan.step(bar, "report"):
            write_report(
                out, preset, records, data, [s.uri for s in stores], frontier,
                _concurrency(config),
            )  # fmt: skip
            write_quality_report(out, preset, records, stores, source_accuracy(sources, data))
    seconds = time.perf_counter() - started
    write_wall_time(out, seconds, (rate_before, yardstick_rate(config.device)), config.device)
    if config.fast_dev_run:
        fastdev.mark_smoke_pages(out, data)
    return out


def _frontier_records(
    preset: Preset, specs: list[RunSpec], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Frontier records (satpipe.reproduce.frontier) of the runs of the preset's frontier variants:
    the weak grid's and the frontier's own (never the method study's)."""
    from satpipe.reproduce.frontier import run_record

    wanted, eps = set(preset.frontier), frontier_eps(preset)
    return [
        run_record(res, variant=spec.variant, seed=spec.seed, eps=eps, options=dict(spec.options))
        for spec, res in zip(specs, results, strict=True)
        if spec.variant in wanted and spec.group in ("weak", "frontier")
    ]


def _concurrency(config: ReproduceConfig) -> str:
    if config.scheduler:
        return f"Runs went to the dask scheduler {config.scheduler}: times may overlap."
    if config.jobs > 1:
        return f"{config.jobs} runs trained at a time, sharing the machine: times include that."
    return "One run trained at a time."


def _build_stores(preset, out, data, device, plan, bar) -> tuple[list[Store], dict[str, str]]:
    """Steps 2-4: every store of the grid, and the source checkpoints {kind: path}."""
    stores = planned_stores(preset, out)
    sources: dict[str, str] = {}
    for store in stores:
        if store.source is not None and store.source not in sources:
            with plan.step(bar, f"source {store.source}"):
                sources[store.source] = build_source(
                    preset, data, out / "sources" / store.source, store.source, device
                )
        params = preset.method_params.get(store.method, {})
        with plan.step(bar, store.label):
            build_saliency(
                data, Path(store.uri), store.method, params, sources.get(store.source), device
            )
    return stores, sources


class _GridPlan:
    """The grid's steps and their estimated work (satpipe.reproduce.grid), for the one bar."""

    def __init__(
        self,
        preset: Preset,
        out: Path,
        seeds: Sequence[int],
        frontier_seeds: Sequence[int] | None,
        grid_seeds: Sequence[int] | None = None,
    ) -> None:
        from satpipe.reproduce import grid

        self.name = preset.name
        work: dict[str, float] = {"data": grid.data_work(preset)}
        for store in planned_stores(preset, out):
            if store.source is not None:
                variant = SOURCES[store.source][0]
                work[f"source {store.source}"] = grid.train_work(
                    preset, variant, preset.source_epochs
                )
            work[store.label] = grid.saliency_work(preset, store.method)
            work[f"score {store.label}"] = grid.score_work(preset, store.method, preset.score_n)
        stores = planned_stores(preset, out)
        weak = next((s.uri for s in stores if s.row == "sat" and s.source is None), None)
        study = {(s.source, s.method): s.uri for s in stores if s.row != "sat"}
        self.runs = {
            spec.out: grid.run_work(preset, spec.variant, spec.content)
            for spec in plan_runs(preset, out, seeds, weak, study, frontier_seeds, grid_seeds)
        }
        work["report"] = 0.01 * sum(work.values())
        self.work = work
        self.total = sum(work.values()) + sum(self.runs.values())

    @contextlib.contextmanager
    def step(self, bar, name: str) -> Iterator[None]:
        """Say that step `name` runs; advance the bar by its work when it is done."""
        bar.describe(f"reproduce {self.name}: {name}")
        yield
        bar.advance(self.work.get(name, 0.0))

    def run_done(self, bar) -> Callable[[RunSpec], None]:
        def done(spec: RunSpec) -> None:
            bar.describe(f"reproduce {self.name}: runs (done: {spec.row}, seed {spec.seed})")
            bar.advance(self.runs.get(spec.out, 0.0))

        return done


def _run_all(
    specs: list[RunSpec],
    preset: Preset,
    data: str,
    config: ReproduceConfig,
    on_done: Callable[[RunSpec], None] | None = None,
) -> list[dict[str, Any]]:
    run = functools.partial(run_student, preset=preset, data=data, device=config.device)
    on_done = on_done or (lambda spec: None)
    with progress(f"reproduce {preset.name}: runs", len(specs)) as advance:
        if config.jobs <= 1 and not config.scheduler:
            results = []
            for spec in specs:
                results.append(run(spec))
                advance()
                on_done(spec)
            return results
        device, gpus = jobs_device(config.device)
        run = functools.partial(_run_on_worker, preset=preset, data=data, device=device)
        # One torch thread per worker process: jobs share the cores instead of fighting. On
        # GPUs: one worker per GPU (at most), each training on its own.
        with dask_client(config.jobs, config.scheduler, gpus=gpus, env=ONE_THREAD_ENV) as client:
            return run_tasks(
                client, run, specs, on_done=lambda i, _: (advance(), on_done(specs[i]))
            )


def jobs_device(device: str) -> tuple[str, int]:
    """(device string the dask workers get, GPUs to spread them over) for `--jobs`.

    A CUDA device without an index ("auto" on a GPU machine, "cuda") becomes "cuda" with one
    worker per GPU, each mapped to its own by `satpipe.core.cluster.worker_device`; cpu and an
    explicit cuda:N stay as given (every job on that one device)."""
    from satpipe.core.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda" or ":" in str(device):
        return str(resolved) if resolved.type == "cpu" else str(device), 0
    import torch

    return "cuda", torch.cuda.device_count()


def _run_on_worker(spec: RunSpec, preset: Preset, data: str, device: str) -> dict[str, Any]:
    """`run_student` on the device of the dask worker running it."""
    from satpipe.core.cluster import worker_device

    return run_student(spec, preset=preset, data=data, device=worker_device(device))


def _record(spec: RunSpec, results: dict[str, Any], out: Path) -> dict[str, Any]:
    """A report record (satpipe/reproduce/tables.py) from one run's results.json: accuracies and
    image counts per attack and eps (eps > 0), the worst case, and the path of its correctness bits
    (relative to `out`) for the paired tests."""
    from satpipe.train.eval.results import epoch_times

    run = Path(spec.out).relative_to(out)
    record: dict[str, Any] = {
        "row": spec.row,
        "group": spec.group,
        "variant": spec.variant,
        "seed": spec.seed,
        "clean": results["clean"],
        "n": {"clean": results["n"]},
        "train_time_s": results.get("train_time_s") or float("nan"),
        # Results written before epoch times were recorded: read them from the run's metrics.
        "epoch_time_s": results.get("epoch_time_s") or epoch_times(Path(spec.out)) or [],
        "checks_passed": results.get("checks_passed"),
        # What SAT took from its map (share) and how much it perturbed (mean |delta| / eps of
        # the cheap perturbation: SAT's measured; uniform noise's expected |U(-1, 1)| = 0.5).
        "saliency_share": (results.get("saliency_use") or {}).get("share"),
        "map_delta": (results.get("saliency_use") or {}).get("map_delta"),
        "perturbation": (results.get("saliency_use") or {}).get("perturbation")
        or (0.5 if spec.variant.endswith("noise") else None),
        "run": run.as_posix(),
        "correct": (run / results["correct"]["file"]).as_posix(),
    }
    if results.get("distortions"):
        record["distortions"] = results["distortions"]
    cells = {a: entry["eps"] for a, entry in results["attacks"].items()}
    cells["robust"] = results["robust"]
    for attack, per_eps in cells.items():
        kept = {k: c for k, c in per_eps.items() if float(k) > 0}
        record[attack] = {k: c["accuracy"] for k, c in kept.items()}
        record["n"][attack] = {k: c["n"] for k, c in kept.items()}
    return record
