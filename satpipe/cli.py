"""The `satpipe` command line: parses arguments and calls one library function per command.

No logic lives here: every command calls the same function a user would import, so the CLI
and the tests exercise one code path. A SatpipeError becomes one line on stderr and exit 1.
"""

from __future__ import annotations

import functools
import pathlib

import typer

from satpipe.errors import SatpipeError

app = typer.Typer(
    name="satpipe",
    help="Saliency-based Adversarial Training: saliency stores, SAT variants, robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build or import dataset stores.", no_args_is_help=True)
store_app = typer.Typer(help="Inspect, verify and publish stores.", no_args_is_help=True)
show_app = typer.Typer(help="Pictures for a person to look at.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks (JSON out); every figure is a ratio within one run.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")
app.add_typer(show_app, name="show")
app.add_typer(bench_app, name="bench")


def friendly_errors(fn):
    """Turn SatpipeError into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SatpipeError as exc:
            typer.echo(f"satpipe: error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_storage_options(pairs: list[str] | None) -> dict[str, object]:
    """`--storage-option key=value` (repeatable) into fsspec storage_options. Values that read
    as JSON become that (anon=true, use_ssl=false, client_kwargs={"region_name": "x"});
    anything else stays a string (endpoint_url=http://...)."""
    import json

    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SatpipeError(f"--storage-option expects key=value, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


StorageOption = typer.Option(
    None,
    "--storage-option",
    "-S",
    help="fsspec storage option key=value for URL stores (repeatable), e.g. endpoint_url=http://...",
)


@app.command("list")
@friendly_errors
def list_cmd(
    what: str = typer.Argument("all", help="models, methods, variants or all"),
) -> None:
    """List the registered models, saliency methods and training variants."""
    from satpipe.train.models import list_models

    listing: dict[str, list[str]] = {"models": list_models()}
    try:
        from satpipe.pipeline.methods import list_methods

        listing["methods"] = list_methods()
    except ImportError:
        pass
    try:
        from satpipe.train.variants import list_variants

        listing["variants"] = list_variants()
    except ImportError:
        pass
    if what != "all":
        if what not in listing:
            raise SatpipeError(f"unknown listing '{what}'; choose one of all, {', '.join(listing)}")
        listing = {what: listing[what]}
    for key, names in listing.items():
        typer.echo(f"{key}: {', '.join(names)}")


# ---- data and store commands (satpipe.data) -------------------------------------------------

from enum import Enum  # noqa: E402

make_app = typer.Typer(
    help="Generate a built-in dataset store (no download).", no_args_is_help=True
)
data_app.add_typer(make_app, name="make")


@make_app.command("shapes")
@friendly_errors
def data_make_shapes_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Output store: path or URL (.zarr)."),
    classes: int = typer.Option(6, "--classes", help="Number of shape classes (2..8)."),
    n_train: int = typer.Option(2000, "--n-train", help="Training images."),
    n_test: int = typer.Option(500, "--n-test", help="Test images (0: no test split)."),
    size: int = typer.Option(32, "--size", help="Image side in pixels (>= 16)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Coloured shapes on cluttered, textured backgrounds, with true masks and boxes."""
    from satpipe.data.shapes import make_shapes

    typer.echo(
        make_shapes(
            out,
            classes=classes,
            n_train=n_train,
            n_test=n_test,
            size=size,
            seed=seed,
            overwrite=overwrite,
            storage_options=parse_storage_options(storage_option),
        )
    )


class ResizePolicyChoice(str, Enum):
    stretch = "stretch"
    center_crop = "center-crop"
    pad = "pad"


@data_app.command("import")
@friendly_errors
def data_import_cmd(
    fmt: str = typer.Argument(
        ...,
        metavar="FORMAT",
        help="cifar10, cifar100, tinyimagenet, flowers17, oxford-pet or imagefolder.",
    ),
    src: str = typer.Argument(..., help="Unpacked dataset folder on local disk."),
    out: str = typer.Option(..., "--out", "-o", help="Output store: path or URL (.zarr)."),
    size: int | None = typer.Option(
        None,
        "--size",
        help="Resize to SIZE x SIZE. Default: native for cifar/tinyimagenet/imagefolder, "
        "32 for flowers17 and oxford-pet.",
    ),
    resize_policy: ResizePolicyChoice | None = typer.Option(
        None,
        "--resize-policy",
        help="stretch (default), center-crop (short side to SIZE, centre cut) or pad "
        "(long side to SIZE, black borders).",
    ),
    test_fraction: float | None = typer.Option(
        None,
        "--test-fraction",
        help="Seeded stratified test share where the format has no official split "
        "(flowers17 0.25, oxford-pet 0.25, imagefolder 0.2).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of that split (default 0)."),
    masks: str | None = typer.Option(
        None,
        "--masks",
        help="imagefolder: mask tree mirroring SRC (PNG, non-zero = object).",
    ),
    masks_only: bool | None = typer.Option(
        None,
        "--masks-only",
        help="flowers17: import only the images with a trimap, with masks.",
    ),
    per_class: int | None = typer.Option(
        None,
        "--per-class",
        help="flowers17: images per class, in file order (default 80).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Import a real dataset from its official local layout into a dataset store."""
    from satpipe.data.importers import import_dataset

    given = {
        "size": size,
        "resize_policy": resize_policy.value if resize_policy else None,
        "test_fraction": test_fraction,
        "seed": seed,
        "masks": masks,
        "masks_only": masks_only,
        "per_class": per_class,
    }
    options = {k: v for k, v in given.items() if v is not None}
    typer.echo(
        import_dataset(
            fmt,
            src,
            out,
            overwrite=overwrite,
            storage_options=parse_storage_options(storage_option),
            **options,
        )
    )


@store_app.command("info")
@friendly_errors
def store_info_cmd(
    uri: str = typer.Argument(..., help="Store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Kind, arrays (shape, dtype, chunks, shards), classes, provenance and completeness."""
    import json

    from satpipe.data.inspect import format_info, store_info

    info = store_info(uri, parse_storage_options(storage_option))
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@store_app.command("verify")
@friendly_errors
def store_verify_cmd(
    uri: str = typer.Argument(..., help="Store path or URL."),
    data: str | None = typer.Option(
        None, "--data", help="Dataset store a saliency store must belong to (fingerprint)."
    ),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Read every chunk and check the store's contract; one line per problem, exit 1 if any."""
    from satpipe.data.inspect import verify_store

    problems = verify_store(uri, data=data, storage_options=parse_storage_options(storage_option))
    for problem in problems:
        typer.echo(f"satpipe: verify: {uri}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{uri}: ok")


@store_app.command("publish")
@friendly_errors
def store_publish_cmd(
    src: str = typer.Argument(..., help="Complete store to publish: path or URL."),
    dst: str = typer.Argument(..., help="Destination path or URL, e.g. s3://bucket/name.zarr."),
    storage_option: list[str] | None = StorageOption,
    dst_storage_option: list[str] | None = typer.Option(
        None,
        "--dst-storage-option",
        help="fsspec option key=value for DST only (repeatable); default: the --storage-option.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DST."),
) -> None:
    """Verify SRC, copy it to DST, and mark DST complete last (readers never see half a store)."""
    from satpipe.data.publish import publish_store

    src_options = parse_storage_options(storage_option)
    dst_options = parse_storage_options(dst_storage_option) if dst_storage_option else src_options
    typer.echo(publish_store(src, dst, src_options, dst_options, overwrite=overwrite))


# ---- saliency stage (satpipe.pipeline) -------------------------------------------------------

from satpipe.pipeline.choices import MethodName, Normalization  # noqa: E402  (torch-free)


def _method_params(pairs: list[str] | None, **flags: object) -> dict[str, object]:
    """--param key=value (repeatable) plus the method-specific flags that were given."""
    params: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SatpipeError(f"--param expects key=value, got '{pair}'")
        params[key.strip().replace("-", "_")] = value
    params.update({k: v for k, v in flags.items() if v is not None})
    return params


@app.command("saliency")
@friendly_errors
def saliency_cmd(
    method: MethodName = typer.Option(..., "--method", "-m", help="Saliency method."),
    data: str = typer.Option(..., "--data", help="Dataset store (path or URL)."),
    out: str = typer.Option(..., "--out", help="Saliency store to write (path or URL)."),
    model: str | None = typer.Option(
        None, "--model", help="Source model checkpoint; not needed for mask, bbox, random."
    ),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="Method parameter key=value (repeatable), e.g. baseline=blur."
    ),
    samples: int | None = typer.Option(
        None, "--samples", help="smoothgrad: noisy copies per image (default: 10)"
    ),
    sigma: float | None = typer.Option(
        None, "--sigma", help="smoothgrad: noise std, fraction of the [0,1] range (default: 0.15)"
    ),
    steps: int | None = typer.Option(None, "--steps", help="ig: integration steps (default: 50)"),
    layer: str | None = typer.Option(
        None, "--layer", help="gradcam++ family: dotted layer name (default: model.cam_layer)"
    ),
    normalization: Normalization = typer.Option(
        Normalization.signed_maxabs, "--normalization", help="Per-image normalisation."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; per-shard generators derive from it."),
    batch_size: int = typer.Option(
        64, "--batch-size", help="Images per method call (recorded; a resume must match)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: int | None = typer.Option(
        None, "--workers", help="Run on a dask LocalCluster of N workers (one per GPU on GPUs)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Join an existing dask scheduler, e.g. tcp://host:8786."
    ),
    splits: str = typer.Option("train", "--splits", help="Comma-separated: train or train,test."),
    rows_per_shard: int | None = typer.Option(
        None, "--rows-per-shard", help="Shard size of the output (default: the dataset's)"
    ),
    amp: bool = typer.Option(
        True, "--amp/--no-amp", help="bf16 autocast on CUDA for methods where it is safe."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing store made for another run."
    ),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Compute one saliency map per image into a saliency store (resumes an interrupted run)."""
    from satpipe.pipeline.runner import SaliencyConfig, compute_saliency

    config = SaliencyConfig(
        method=method.value,
        data=data,
        out=out,
        model=model,
        params=_method_params(param, samples=samples, sigma=sigma, steps=steps, layer=layer),
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
        normalization=normalization.value,
        seed=seed,
        batch_size=batch_size,
        device=device,
        workers=workers,
        scheduler=scheduler,
        overwrite=overwrite,
        storage_options=parse_storage_options(storage_option),
        rows_per_shard=rows_per_shard,
        amp=amp,
    )
    typer.echo(compute_saliency(config))


@show_app.command("saliency")
@friendly_errors
def show_saliency_cmd(
    saliency: str = typer.Argument(..., help="Saliency store (path or URL)."),
    data: str = typer.Option(..., "--data", help="The dataset store it was made from."),
    out: str = typer.Option("gallery.png", "--out", help="PNG to write."),
    n: int = typer.Option(16, "--n", help="Number of images."),
    split: str = typer.Option("train", "--split", help="train or test."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Grid of images with their saliency maps (diverging colour map), for a person to look at."""
    from satpipe.pipeline.gallery import saliency_gallery

    options = parse_storage_options(storage_option)
    typer.echo(saliency_gallery(saliency, data, out, n=n, split=split, storage_options=options))


# ---- trainer and evaluation (satpipe.train) --------------------------------------------------

from satpipe.train.config import DeviceChoice, LoaderMode, Optimizer, Schedule  # noqa: E402


def _float_list(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SatpipeError(f"{flag} expects comma-separated numbers, got '{text}'") from None


@app.command("train")
@friendly_errors
def train_cmd(
    variant: str | None = typer.Option(
        None, "--variant", help="Training variant, e.g. pgd-sat (`satpipe list variants`)."
    ),
    data: str | None = typer.Option(None, "--data", help="Dataset store (path or URL)."),
    saliency: str | None = typer.Option(
        None, "--saliency", help="Saliency store made for --data (the SAT variants need one)."
    ),
    model: str = typer.Option("resnet10", "--model", help="Architecture (`satpipe list models`)."),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs (default: 100, or the run's own on --resume)."
    ),
    out: str = typer.Option(..., "--out", help="Run directory (config, checkpoint, metrics)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch (per rank)."),
    optimizer: Optimizer = typer.Option(Optimizer.adam, "--optimizer", help="Optimizer."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="L2 weight decay."),
    schedule: Schedule = typer.Option(
        Schedule.none, "--schedule", help="LR schedule per epoch (step: x0.1 at 50% and 75%)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, order, coins and noise."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where to train."),
    eps: float = typer.Option(8.0, "--eps", help="Perturbation size, /255 units."),
    attack_steps: int = typer.Option(7, "--attack-steps", help="K: PGD/TRADES training steps."),
    attack_step_size: float = typer.Option(
        2.0, "--attack-step-size", help="Attack step, /255 units."
    ),
    p_mix: float = typer.Option(
        0.5, "--p-mix", help="Chance a mixed variant's batch trains on x_sat/x_noise."
    ),
    alpha_base: float = typer.Option(0.6, "--alpha-base", help="a in alpha_t = a^(t/10)."),
    trades_beta: float = typer.Option(6.0, "--trades-beta", help="TRADES KL weight."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="RandomCrop(pad 4) + flip, joint on image and map."
    ),
    loader_mode: LoaderMode = typer.Option(
        LoaderMode.auto, "--loader-mode", help="resident (on the device) or streaming."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue RUN from its last finished epoch (flags optional)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start RUN over."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bf16 autocast (CUDA only)."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Train one variant; writes RUN/config.json, RUN/checkpoint.pt and RUN/metrics.jsonl."""
    from satpipe.train.config import TrainConfig, load_run_config
    from satpipe.train.trainer import train

    options = parse_storage_options(storage_option)
    if resume and variant is None and data is None:
        config = load_run_config(
            out, epochs=epochs, device=device.value, resume=True, storage_options=options
        )
    elif variant is None or data is None:
        raise SatpipeError("--variant and --data are required (or --resume --out RUN)")
    else:
        config = TrainConfig(
            variant=variant,
            data=data,
            out=out,
            saliency=saliency,
            model=model,
            epochs=100 if epochs is None else epochs,
            batch_size=batch_size,
            optimizer=optimizer.value,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            schedule=schedule.value,
            seed=seed,
            device=device.value,
            eps=eps,
            attack_steps=attack_steps,
            attack_step_size=attack_step_size,
            p_mix=p_mix,
            alpha_base=alpha_base,
            trades_beta=trades_beta,
            augment=augment,
            loader_mode=loader_mode.value,
            resume=resume,
            overwrite=overwrite,
            amp=amp,
            storage_options=options,
        )
    typer.echo(train(config))


@app.command("eval")
@friendly_errors
def eval_cmd(
    run: str = typer.Argument(..., help="Run directory (its checkpoint.pt) or a checkpoint."),
    data: str | None = typer.Option(None, "--data", help="Dataset store (default: the run's)."),
    eps: str = typer.Option("0,1,2,3,4,8", "--eps", help="PGD/FGSM eps grid, /255 units."),
    steps: int = typer.Option(5, "--steps", help="PGD steps."),
    step_size: float = typer.Option(2.0, "--step-size", help="PGD step size, /255 units."),
    seeds: str = typer.Option("0", "--seeds", help="PGD random-start seeds, e.g. 0,1,2."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per attack batch."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where to attack."),
    large_eps: float = typer.Option(
        64.0, "--large-eps", help="Eps (/255) of the 'drives accuracy near 0' check."
    ),
    strict: bool = typer.Option(
        True, "--strict/--no-strict", help="Exit non-zero when a sanity check fails."
    ),
    out: str | None = typer.Option(None, "--out", help="Directory for results (default: RUN)."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Clean, FGSM and PGD accuracy per eps + gradient-masking checks -> results.json/.md."""
    from satpipe.train.evaluate import evaluate, failed_checks, results_markdown

    results = evaluate(
        run,
        data=data,
        eps=_float_list(eps, "--eps"),
        steps=steps,
        step_size=step_size,
        seeds=[int(v) for v in _float_list(seeds, "--seeds")],
        batch_size=batch_size,
        device=device.value,
        large_eps=large_eps,
        out=out,
        storage_options=parse_storage_options(storage_option),
    )
    typer.echo(results_markdown(results))
    failed = failed_checks(results)
    if failed:
        message = (
            f"GRADIENT-MASKING SANITY CHECKS FAILED: {', '.join(failed)} "
            f"(accuracies may not mean robustness)"
        )
        if strict:
            raise SatpipeError(message + "; --no-strict to only warn")
        typer.echo(f"satpipe: warning: {message}", err=True)


# ---- reproduce (satpipe.reproduce) -------------------------------------------------------------


@app.command("reproduce")
@friendly_errors
def reproduce_cmd(
    preset: str = typer.Option(
        "quick",
        "--preset",
        "-p",
        help="tiny, quick, flowers17, tinyimagenet or cifar100 (the last three need --data-root)",
    ),
    out: str = typer.Option(None, "--out", "-o", help="report folder (default: results/PRESET)"),
    data_root: str = typer.Option(None, "--data-root", help="folder with the real data set"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="runs in parallel on a local dask cluster"),
    scheduler: str = typer.Option(None, "--scheduler", help="dask scheduler address to use"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    seeds: str = typer.Option(None, "--seeds", help="override the preset's seeds, e.g. 0,1"),
    epochs: int = typer.Option(None, "--epochs", help="override the preset's epochs"),
) -> None:
    """Run a preset's whole grid (data, sources, saliency, variants x seeds, eval) and report.

    Every step is skipped when its output is complete, so rerunning a killed run resumes.
    """
    from satpipe.reproduce import ReproduceConfig, reproduce

    config = ReproduceConfig(
        preset=preset,
        out=out or f"results/{preset}",
        data_root=data_root,
        jobs=jobs,
        scheduler=scheduler,
        device=device,
        seeds=tuple(int(s) for s in seeds.split(",")) if seeds else None,
        epochs=epochs,
    )
    folder = reproduce(config)
    typer.echo(f"report: {folder}/table.md, robustness.png, saliency.png, time.md, claims.md")


# ---- benchmarks ---------------------------------------------------------------------------------


@bench_app.command("train")
@friendly_errors
def bench_train_cmd(
    out: str = typer.Option("bench-train.json", "--out", help="JSON report to write."),
    data: str | None = typer.Option(
        None, "--data", help="Dataset store (default: a synthetic one in a temp dir)."
    ),
    saliency: str | None = typer.Option(None, "--saliency", help="Saliency store for --data."),
    variants: str = typer.Option(
        "original,sat,pgd,pgd-sat,trades,trades-sat", "--variants", help="Variants to time."
    ),
    model: str = typer.Option("resnet10", "--model", help="Architecture (untrained weights)."),
    teacher: str = typer.Option(
        "resnet34", "--teacher", help="Architecture whose SmoothGrad the on-the-fly run computes."
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch."),
    epochs: int = typer.Option(2, "--epochs", help="Timed epochs per variant (min is kept)."),
    attack_steps: int = typer.Option(7, "--attack-steps", help="K: PGD/TRADES steps."),
    smoothgrad_samples: int = typer.Option(
        10, "--smoothgrad-samples", help="Samples of the on-the-fly SmoothGrad baseline."
    ),
    on_the_fly: bool = typer.Option(
        True, "--on-the-fly/--no-on-the-fly", help="Time SAT with SmoothGrad every step too."
    ),
    n_train: int = typer.Option(1024, "--rows", help="Rows of the synthetic dataset."),
    size: int = typer.Option(32, "--size", help="Image side of the synthetic dataset."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where to train."),
) -> None:
    """Epoch time per variant as ratios to `original`, and precomputed vs on-the-fly SAT."""
    import json

    from satpipe.train.bench import bench_train

    report = bench_train(
        data=data,
        saliency=saliency,
        variants=[v.strip() for v in variants.split(",") if v],
        model=model,
        teacher=teacher,
        batch_size=batch_size,
        epochs=epochs,
        attack_steps=attack_steps,
        smoothgrad_samples=smoothgrad_samples,
        on_the_fly=on_the_fly,
        n_train=n_train,
        size=size,
        device=device.value,
        out=out,
    )
    for name, ratio in report["ratio_to_original"].items():
        typer.echo(f"{name:28s} {report['epoch_seconds'][name]:8.2f} s/epoch  {ratio:6.2f}x")
    for name, check in report["checks"].items():
        typer.echo(f"{name}: {json.dumps(check)}")
    typer.echo(out)


@bench_app.command("saliency")
@friendly_errors
def bench_saliency_cmd(
    out: str = typer.Option("bench-saliency.json", "--out", help="JSON report to write."),
    methods: str = typer.Option(
        "gradient,smoothgrad,ig,gbp,gradcam++,guided-gradcam++",
        "--methods",
        help="Comma-separated methods to time.",
    ),
    model: str = typer.Option("smallcnn", "--model", help="Architecture (untrained weights)."),
    size: int = typer.Option(32, "--size", help="Image side in pixels."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per method call (default: 64 on CPU, 1024 on CUDA)."
    ),
    n_images: int = typer.Option(256, "--n-images", help="Images timed per method."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="method.key=value (repeatable), e.g. smoothgrad.samples=50."
    ),
    rss_sizes: str = typer.Option(
        "1024,8192", "--rss-sizes", help="Dataset sizes for the peak-RSS runs; '' skips them."
    ),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bf16 autocast on CUDA where safe."),
) -> None:
    """img/s per method, efficiency vs forward+backward, and peak RSS at two dataset sizes."""
    from satpipe.pipeline.bench import bench_saliency

    params: dict[str, dict[str, object]] = {}
    for pair in param or []:
        key, sep, value = pair.partition("=")
        name, dot, pkey = key.rpartition(".")
        if not sep or not dot or not name or not pkey:
            raise SatpipeError(f"--param expects method.key=value, got '{pair}'")
        params.setdefault(name, {})[pkey] = value
    try:
        sizes = [int(v) for v in rss_sizes.split(",") if v.strip()]
    except ValueError:
        raise SatpipeError(
            f"--rss-sizes expects comma-separated integers, got '{rss_sizes}'"
        ) from None
    report = bench_saliency(
        out=out,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        model=model,
        size=size,
        batch_size=batch_size,
        n_images=n_images,
        device=device,
        params=params,
        rss_sizes=sizes,
        amp=amp,
    )
    for name, row in report["methods"].items():
        typer.echo(f"{name:18s} {row['img_s']:10.1f} img/s  efficiency {row['efficiency']:.2f}")
    if "peak_rss" in report:
        typer.echo(f"peak RSS growth {report['peak_rss']['growth']:.3f} over sizes {sizes}")
    typer.echo(out)


@bench_app.command("loader")
@friendly_errors
def bench_loader_cmd(
    out: str = typer.Option("bench-loader.json", "--out", help="JSON report to write."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where batches go."),
    sizes: str = typer.Option("32,64", "--sizes", help="Comma-separated image sides."),
    rows: int = typer.Option(8192, "--rows", help="Rows of each throughput dataset."),
    rows_per_shard: int = typer.Option(1024, "--rows-per-shard", help="Store shard rows."),
    batch_size: int = typer.Option(256, "--batch-size", help="Batch of the throughput runs."),
    epochs: int = typer.Option(2, "--epochs", help="Timed epochs per mode (after a warm-up)."),
    train_steps: int = typer.Option(20, "--train-steps", help="Timed resnet10 steps per mode."),
    rss_rows: str = typer.Option(
        "8192,32768", "--rss-rows", help="Two dataset sizes for the streaming peak-RSS runs."
    ),
) -> None:
    """Resident vs streaming pairs/s, resnet10 step-rate ratio, streaming peak RSS vs size."""
    from satpipe.train.bench_loader import bench_loader

    try:
        side = tuple(int(v) for v in sizes.split(",") if v.strip())
        small, large = (int(v) for v in rss_rows.split(","))
    except ValueError:
        raise SatpipeError(
            f"--sizes expects integers and --rss-rows two integers, got '{sizes}', '{rss_rows}'"
        ) from None
    report = bench_loader(
        out,
        device=device.value,
        sizes=side,
        rows=rows,
        rows_per_shard=rows_per_shard,
        batch_size=batch_size,
        epochs=epochs,
        train_steps=train_steps,
        rss_rows=(small, large),
    )
    for size, row in report["throughput"].items():
        typer.echo(
            f"{size:8s} resident {row['resident_pairs_per_s']:10.0f}  streaming "
            f"{row['streaming_pairs_per_s']:10.0f} pairs/s  "
            f"ratio {row['streaming_over_resident']:.2f}"
        )
    step = report["train_step"]
    typer.echo(
        f"resnet10 step rate streaming/resident {step['streaming_over_resident']:.3f} "
        f"(target {step['target']})"
    )
    rss = report["streaming_rss"]
    typer.echo(
        f"streaming peak RSS {rss[str(small)]['peak_rss_mb']:.0f} MiB at {small} rows, "
        f"{rss[str(large)]['peak_rss_mb']:.0f} MiB at {large} rows"
    )
    typer.echo(out)


@bench_app.command("dask")
@friendly_errors
def bench_dask_cmd(
    out: str = typer.Option("bench-dask.json", "--out", help="JSON report to write."),
    method: str = typer.Option("smoothgrad", "--method", help="Saliency method to run."),
    model: str = typer.Option("smallcnn", "--model", help="Architecture (untrained weights)."),
    n_images: int = typer.Option(2048, "--n-images", help="Images per timed run."),
    rows_per_shard: int = typer.Option(128, "--rows-per-shard", help="Shard rows (dask tasks)."),
    threads: int = typer.Option(1, "--threads-per-worker", help="torch threads per worker."),
) -> None:
    """Saliency img/s on a CPU dask cluster of 1 and 2 workers, and the 2/1 ratio."""
    import json

    from satpipe.pipeline.bench import bench_dask_scaling

    report = bench_dask_scaling(
        method=method,
        model=model,
        n_images=n_images,
        rows_per_shard=rows_per_shard,
        threads_per_worker=threads,
    )
    pathlib.Path(out).write_text(json.dumps(report, indent=2) + "\n")
    for n, row in report["workers"].items():
        typer.echo(f"{n} worker(s): {row['img_s']:.1f} img/s")
    typer.echo(f"ratio 2/1 {report['ratio']:.2f} (target {report['target']})")
    typer.echo(out)


@bench_app.command("all")
@friendly_errors
def bench_all_cmd(
    out: str = typer.Option("bench.json", "--out", help="JSON report; a .md summary beside it."),
    parts: str = typer.Option(
        "saliency,dask,loader,train", "--parts", help="Comma-separated benchmarks to run."
    ),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where to run."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: every path, rough figures."),
) -> None:
    """Every benchmark in one run: headline ratios with their targets, JSON + markdown."""
    from satpipe.benchmarks import PARTS, bench_all

    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise SatpipeError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    report = bench_all(out, chosen, device.value, quick)
    for row in report["headline"]:
        holds = {True: "ok", False: "MISSED", None: "-"}[row["passed"]]
        typer.echo(f"{row['figure']:58s} {row['value']:8.3f}  {row['target']:14s} {holds}")
    typer.echo(f"{out} and {pathlib.Path(out).with_suffix('.md')}")
