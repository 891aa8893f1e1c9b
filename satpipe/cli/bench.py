"""`satpipe bench ...`: benchmarks, JSON out; every figure is a ratio within one run."""

from __future__ import annotations

import pathlib

import typer

from satpipe.cli._common import friendly_errors, sub_app
from satpipe.device import DEVICE_HELP
from satpipe.errors import SatpipeError
from satpipe.options import parse_list, parse_pairs

bench_app = sub_app("bench", "Benchmarks (JSON out); every figure is a ratio within one run.")


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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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
        device=device,
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

    params = parse_pairs(param, "--param", value=str, key_sep=".")
    sizes = list(parse_list(rss_sizes, int, "--rss-sizes"))
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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

    side = parse_list(sizes, int, "--sizes")
    rss = parse_list(rss_rows, int, "--rss-rows")
    if len(rss) != 2:
        raise SatpipeError(f"--rss-rows expects two integers, got '{rss_rows}'")
    small, large = rss
    report = bench_loader(
        out,
        device=device,
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: every path, rough figures."),
) -> None:
    """Every benchmark in one run: headline ratios with their targets, JSON + markdown."""
    from satpipe.benchmarks import PARTS, bench_all

    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise SatpipeError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    report = bench_all(out, chosen, device, quick)
    for row in report["headline"]:
        holds = {True: "ok", False: "MISSED", None: "-"}[row["passed"]]
        typer.echo(f"{row['figure']:58s} {row['value']:8.3f}  {row['target']:14s} {holds}")
    typer.echo(f"{out} and {pathlib.Path(out).with_suffix('.md')}")
