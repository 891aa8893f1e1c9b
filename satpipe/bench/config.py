"""The benchmarks' typed configs: one dataclass per part, plus `bench all`'s (torch-free, so the
CLI builds its options without importing torch). The defaults are the full sizes; `--quick`
and the CPU sizes of `bench all` are overrides registered with each part (satpipe/bench).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satpipe.core.device import DEVICE_HELP
from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice, coerce_fields, option, parse_pairs
from satpipe.train.config import MODEL_HELP, check_model_options

_METHODS = "satpipe.pipeline.methods:METHODS"
_VARIANTS = "satpipe.train.variants:VARIANTS"
_BENCHMARKS = "satpipe.bench:BENCHMARKS"


def _at_least(value: int, low: int, flag: str) -> None:
    if value < low:
        raise SatpipeError(f"{flag} must be >= {low}, got {value}")


def _method_params(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{method: {key: value}} from the command line's "method.key=value" pairs (kept as strings:
    the method converts them to its parameters' types) and/or nested mappings."""
    flat = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
    nested = parse_pairs([f"{k}={v}" for k, v in flat.items()], "--param", str, key_sep=".")
    for method, values in params.items():
        if isinstance(values, Mapping):
            nested.setdefault(method, {}).update(values)
    return nested


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
        self.params = _method_params(self.params)
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
class ModelsBenchConfig:
    """A library model wrapped by satpipe (input normalisation hook) against the same network
    called bare, per saliency method. params: as in `bench saliency`; a method not named gets
    few samples/steps (SmoothGrad 2, IG 2), the figure being a ratio of two equal workloads."""

    model: str = option(
        "torchvision:resnet18", f"A library model (one satpipe wraps). {MODEL_HELP}"
    )
    methods: tuple[str, ...] = option(
        ("gradient", "smoothgrad", "ig", "gbp", "gradcam++"), "Comma-separated methods to time.",
        choices="satpipe.pipeline.methods:model_methods",
    )  # fmt: skip
    size: int = option(32, "Image side in pixels.")
    batch_size: int = option(16, "Images per method call.")
    n_batches: int = option(2, "Distinct batches, cycled through the rounds.")
    device: str = option("auto", DEVICE_HELP)
    params: dict[str, Any] = option(
        {}, "method.key=value (repeatable), e.g. smoothgrad.samples=50.", flag="--param",
        short="-p",
    )  # fmt: skip
    rounds: int = option(5, "ABBA rounds at least (wrapped, bare, bare, wrapped).")
    # ... and rounds are added until this much wall time has passed (or 200 ABBA rounds)
    floor_seconds: float = option(5.0, "Seconds each method is timed for at least.")
    threads: int | None = option(
        None, "torch threads for the run (default: torch's; 1 makes the CPU clock exact)."
    )
    num_classes: int = option(10, cli=False)
    seed: int = option(0, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.params = _method_params(self.params)
        check_model_options(self.model, None, None)
        for value, flag in (
            (self.size, "--size"),
            (self.batch_size, "--batch-size"),
            (self.n_batches, "--n-batches"),
            (self.rounds, "--rounds"),
        ):
            _at_least(value, 1, flag)  # fmt: skip
        if self.threads is not None:
            _at_least(self.threads, 1, "--threads")


@dataclass
class EvalBenchConfig:
    """PGD-5 against standard AutoAttack: images/s, model passes and their floor, host syncs.

    Without a checkpoint the model is untrained and the labels are its own predictions (no
    data needed); with one, `data` (default: the checkpoint's) gives the test images."""

    model: str = option("smallcnn", f"Architecture (untrained weights). {MODEL_HELP}")
    n: int = option(256, "Images attacked.", flag="--n-images")
    batch_size: int = option(256, "Images per attack batch.")
    size: int = option(32, "Image side of the random images.")
    classes: int = option(10, "Classes of the untrained model.")
    eps: float = option(8.0, "eps of both attacks, /255 units.")
    device: str = option("auto", DEVICE_HELP)
    checkpoint: str | None = option(None, "A trained checkpoint to attack instead.")
    data: str | None = option(None, "Dataset store for --checkpoint (default: its own).")
    square_queries: int = option(5000, "Square's queries (AutoAttack's standard: 5000).")
    rounds: int = option(1, "Timed runs of each attack, alternated (min is kept).")
    threads: int | None = option(None, "torch threads for the run (default: torch's).")
    seed: int = option(0, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.checkpoint is None:
            check_model_options(self.model, None, None)
        _at_least(self.n, 1, "--n-images")
        _at_least(self.batch_size, 1, "--batch-size")
        _at_least(self.classes, 2, "--classes")
        _at_least(self.square_queries, 1, "--square-queries")
        _at_least(self.rounds, 1, "--rounds")
        if not self.eps > 0:
            raise SatpipeError(f"--eps must be > 0, got {self.eps}")
        if self.threads is not None:
            _at_least(self.threads, 1, "--threads")


@dataclass
class IntegrityBenchConfig:
    """The in-flight data check (shard sha256 in the first epoch) as ratios within one run."""

    data: str | None = option(None, "Dataset store (default: random pixels in a temp dir).")
    n_train: int = option(4096, "Rows of the random dataset.", flag="--rows")
    size: int = option(32, "Image side of the random dataset.")
    rows_per_shard: int | None = option(512, "Shard rows of the random dataset.")
    model: str = option("resnet10", f"Architecture (untrained weights). {MODEL_HELP}")
    variant: str = option("original", "Variant of the timed epochs.", choices=_VARIANTS)
    batch_size: int = option(128, "Images per batch.")
    rounds: int = option(3, "Timed rounds, with and without the check alternated.")
    device: str = option("auto", DEVICE_HELP)
    checkpoint_mb: float = option(
        102.2, "MB of random float32 tensors in the checkpoint whose digest check is timed "
        "(102.2: a ResNet-50's 25.6M parameters).",
    )  # fmt: skip
    epochs: bool = option(
        True, "Time the data check against epochs (--no-epochs: only the checkpoint digest "
        "and the metadata checks).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.checkpoint_mb <= 0:
            raise SatpipeError(f"--checkpoint-mb must be positive, got {self.checkpoint_mb}")
        self.variant = check_choice(self.variant, _VARIANTS, "variant")
        check_model_options(self.model, None, None)
        for value, flag in (
            (self.n_train, "--rows"),
            (self.rounds, "--rounds"),
            (self.batch_size, "--batch-size"),
        ):
            _at_least(value, 1, flag)  # fmt: skip


@dataclass
class DatasetBenchConfig:
    """img/s of DataLoader(SaliencyDataset) against the PairLoader and a TensorDataset."""

    rows: int = option(8192, "Rows of the random store.")
    size: int = option(32, "Image side.")
    rows_per_shard: int = option(1024, "Store shard rows.")
    batch_size: int = option(128, "Images per batch.")
    workers: int = option(2, "DataLoader workers of the SaliencyDataset sides.")
    rounds: int = option(2, "Timed epochs per side (after a warm-up), alternated.")
    workdir: str | None = option(None, cli=False)  # temporary stores (default: a temp dir)

    def __post_init__(self) -> None:
        coerce_fields(self)
        for value, flag in ((self.rows, "--rows"), (self.rounds, "--rounds"),
                            (self.batch_size, "--batch-size"), (self.size, "--size")):  # fmt: skip
            _at_least(value, 1, flag)
        _at_least(self.workers, 0, "--workers")


@dataclass
class BenchAllConfig:
    """`satpipe bench all`: the parts to run, in registry order, on one device."""

    out: str = option("bench.json", "JSON report; a .md summary beside it.")
    parts: tuple[str, ...] | None = option(
        None, "Comma-separated benchmarks to run (default: every one but eval, which is "
        "slow).",
        choices=_BENCHMARKS,
    )  # fmt: skip
    device: str = option("auto", DEVICE_HELP)
    quick: bool = option(False, "Small sizes: every path, rough figures.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.parts is not None:
            self.parts = tuple(check_choice(p, _BENCHMARKS, "benchmark") for p in self.parts)
