"""The benchmarks' typed configs: one dataclass per part, plus `bench all`'s (torch-free, so the
CLI builds its options without importing torch). The defaults are the full sizes; `--quick`
and the CPU sizes of `bench all` are overrides registered with each part (satpipe/bench).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satpipe.device import DEVICE_HELP
from satpipe.errors import SatpipeError
from satpipe.options import check_choice, coerce_fields, option, parse_pairs
from satpipe.train.config import MODEL_HELP, check_model_options

_METHODS = "satpipe.pipeline.methods:METHODS"
_VARIANTS = "satpipe.train.variants:VARIANTS"
_BENCHMARKS = "satpipe.bench:BENCHMARKS"


def _at_least(value: int, low: int, flag: str) -> None:
    if value < low:
        raise SatpipeError(f"{flag} must be >= {low}, got {value}")


@dataclass
class SaliencyBenchConfig:
    """Saliency methods against forward+backward on random images, and the runner's peak RSS.

    methods: None times every method that uses a model. params: {method: {key: value}}; the
    command line's "method.key=value" pairs are nested into that and kept as strings (the
    method converts them to its parameters' types).
    """

    methods: tuple[str, ...] | None = option(
        None, "Comma-separated methods to time (default: all of these, the ones using a model).",
        choices="satpipe.pipeline.methods:model_methods",
    )  # fmt: skip
    model: str = option("smallcnn", f"Architecture (untrained weights). {MODEL_HELP}")
    size: int = option(32, "Image side in pixels.")
    batch_size: int | None = option(
        None, "Images per method call (default: 64 on CPU, 1024 on CUDA)."
    )
    n_images: int = option(256, "Images timed per method.")
    device: str = option("auto", DEVICE_HELP)
    params: dict[str, Any] = option(
        {}, "method.key=value (repeatable), e.g. smoothgrad.samples=50.", flag="--param",
        short="-p",
    )  # fmt: skip
    rss_sizes: tuple[int, ...] = option(
        (1024, 8192), "Dataset sizes for the peak-RSS runs; '' skips them."
    )
    amp: bool = option(True, "bf16 autocast on CUDA where safe.")
    repeats: int = option(3, cli=False)  # timed rounds at least (fast methods get more)
    # ... and rounds are added until this much time has passed (~2 s each side) or 50 rounds
    floor_seconds: float = option(4.0, cli=False)
    seed: int = option(0, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        flat = {k: v for k, v in self.params.items() if not isinstance(v, Mapping)}
        nested = parse_pairs([f"{k}={v}" for k, v in flat.items()], "--param", str, key_sep=".")
        for method, values in self.params.items():
            if isinstance(values, Mapping):
                nested.setdefault(method, {}).update(values)
        self.params = nested
        check_model_options(self.model, None, None)
        _at_least(self.n_images, 1, "--n-images")
        if self.batch_size is not None:
            _at_least(self.batch_size, 1, "--batch-size")


@dataclass
class DaskBenchConfig:
    """Saliency img/s on CPU dask clusters of 1 and 2 workers (always CPU workers)."""

    method: str = option("smoothgrad", "Saliency method to run.", choices=_METHODS)
    model: str = option("smallcnn", f"Architecture (untrained weights). {MODEL_HELP}")
    n_images: int = option(2048, "Images per timed run.")
    rows_per_shard: int = option(128, "Shard rows (dask tasks).")
    threads_per_worker: int = option(1, "torch threads per worker.")
    workers: tuple[int, ...] = option((1, 2), cli=False)
    params: dict[str, Any] | None = option(None, cli=False)  # None: SmoothGrad at 10 samples
    image_size: int = option(32, cli=False)
    batch_size: int = option(64, cli=False)
    rounds: int = option(1, cli=False)  # timed runs per cluster, alternated

    def __post_init__(self) -> None:
        coerce_fields(self)
        if len(self.workers) < 2:
            raise SatpipeError(f"dask bench: two worker counts to compare, got {self.workers}")
        _at_least(min(self.workers), 1, "workers")
        _at_least(self.n_images, 1, "--n-images")
        check_model_options(self.model, None, None)


@dataclass
class LoaderBenchConfig:
    """Resident vs streaming: loader pairs/s, resnet10 step rate, streaming peak RSS."""

    device: str = option("auto", DEVICE_HELP)
    sizes: tuple[int, ...] = option((32, 64), "Comma-separated image sides.")
    rows: int = option(8192, "Rows of each throughput dataset.")
    rows_per_shard: int = option(1024, "Store shard rows.")
    batch_size: int = option(256, "Batch of the throughput runs.")
    epochs: int = option(2, "Timed epochs per mode (after a warm-up), alternated.")
    train_steps: int = option(20, "Timed resnet10 steps per mode and round.")
    rss_rows: tuple[int, ...] = option(
        (8192, 32768), "Two dataset sizes for the streaming peak-RSS runs."
    )
    train_batch_size: int = option(128, cli=False)
    rounds: int = option(2, cli=False)  # step-rate rounds, modes alternated
    workdir: str | None = option(None, cli=False)  # temporary stores (default: a temp dir)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if len(self.rss_rows) != 2:
            shown = ",".join(map(str, self.rss_rows))
            raise SatpipeError(f"--rss-rows expects two integers, got '{shown}'")
        if not self.sizes:
            raise SatpipeError("--sizes expects at least one image side")
        for value, flag in ((self.epochs, "--epochs"), (self.train_steps, "--train-steps")):
            _at_least(value, 1, flag)


@dataclass
class TrainBenchConfig:
    """Epoch time per variant as ratios to `original`, and precomputed vs on-the-fly SAT.

    The variants to time are a choice (not every registered variant), checked against the
    registry; `original` is always timed, the ratios' denominator. teacher: the architecture
    whose SmoothGrad the on-the-fly baseline computes (None: the student's own).
    """

    data: str | None = option(None, "Dataset store (default: a synthetic one in a temp dir).")
    saliency: str | None = option(None, "Saliency store for --data.")
    variants: tuple[str, ...] = option(
        ("original", "sat", "pgd", "pgd-sat", "trades", "trades-sat"), "Variants to time.",
        choices=_VARIANTS,
    )  # fmt: skip
    model: str = option("resnet10", f"Architecture (untrained weights). {MODEL_HELP}")
    teacher: str | None = option(
        "resnet34", "Architecture whose SmoothGrad the on-the-fly run computes."
    )
    batch_size: int = option(128, "Images per batch.")
    epochs: int = option(2, "Timed epochs per variant (min is kept).")
    attack_steps: int = option(7, "K: PGD/TRADES steps.")
    smoothgrad_samples: int = option(10, "Samples of the on-the-fly SmoothGrad baseline.")
    on_the_fly: bool = option(True, "Time SAT with SmoothGrad every step too.")
    n_train: int = option(1024, "Rows of the synthetic dataset.", flag="--rows")
    size: int = option(32, "Image side of the synthetic dataset.")
    device: str = option("auto", DEVICE_HELP)
    attack_step_size: float = option(2.0, cli=False)  # /255 units, as in TrainConfig
    seed: int = option(0, cli=False)
    storage_options: dict[str, Any] = option({}, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.variants = tuple(check_choice(v, _VARIANTS, "variant") for v in self.variants)
        check_model_options(self.model, None, None)
        if self.on_the_fly and self.teacher is not None:
            check_model_options(self.teacher, None, None)
        _at_least(self.smoothgrad_samples, 1, "--smoothgrad-samples")
        _at_least(self.epochs, 1, "--epochs")


@dataclass
class BenchAllConfig:
    """`satpipe bench all`: the parts to run, in registry order, on one device."""

    out: str = option("bench.json", "JSON report; a .md summary beside it.")
    parts: tuple[str, ...] | None = option(
        None, "Comma-separated benchmarks to run (default: every one).",
        choices=_BENCHMARKS,
    )  # fmt: skip
    device: str = option("auto", DEVICE_HELP)
    quick: bool = option(False, "Small sizes: every path, rough figures.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.parts is not None:
            self.parts = tuple(check_choice(p, _BENCHMARKS, "benchmark") for p in self.parts)
