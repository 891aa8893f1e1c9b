"""The saliency stage's typed configuration (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from satpipe.core.device import DETERMINISTIC_HELP, DEVICE_HELP
from satpipe.core.errors import SatpipeError
from satpipe.core.options import check_choice, coerce_fields, option, storage_options_field

_NORMALIZATIONS = "satpipe.data.saliency_store:Normalization"


@dataclass
class SaliencyConfig:
    """One saliency run: dataset store in, saliency store out (what `satpipe saliency` fills).

    method/params: registry name and its parameters (`satpipe list methods` shows both).
    model: a satpipe checkpoint (not needed for mask, bbox, random). Paths or fsspec URLs,
    `storage_options` for both stores. workers: N > 0 runs on a dask LocalCluster of N workers
    (one per GPU on GPUs); scheduler: an existing dask scheduler; neither: in-process.
    """

    method: str = option(
        help="Saliency method (`satpipe list methods`).", short="-m",
        choices="satpipe.pipeline.methods:METHODS",
    )  # fmt: skip
    data: str = option(help="Dataset store (path or URL).")
    out: str = option(help="Saliency store to write (path or URL).")
    model: str | None = option(None, "Source model checkpoint; not needed for mask, bbox, random.")
    params: dict[str, Any] = option(
        {}, "Method parameter key=value (repeatable), e.g. baseline=blur.", flag="--param",
        short="-p",
    )  # fmt: skip
    splits: tuple[str, ...] = option(("train",), "Comma-separated: train or train,test.")
    normalization: str = option(
        "signed-maxabs", "Per-image normalisation.", choices=_NORMALIZATIONS
    )
    seed: int = option(0, "Seed; per-shard generators derive from it.")
    batch_size: int | None = option(
        None,
        "Images per method call (default: the store's on a resume, else 64 on a CPU and a "
        "GPU-sized batch on CUDA, see satpipe.core.defaults; recorded).",
    )
    device: str = option("auto", DEVICE_HELP)
    workers: int | None = option(
        None, "Run on a dask LocalCluster of N workers (one per GPU on GPUs)."
    )
    scheduler: str | None = option(None, "Join an existing dask scheduler, e.g. tcp://host:8786.")
    overwrite: bool = option(False, "Replace an existing store made for another run.")
    storage_options: dict[str, Any] = storage_options_field()
    rows_per_shard: int | None = option(None, "Shard size of the output (default: the dataset's).")
    amp: bool = option(True, "bf16 autocast on CUDA for methods where it is safe.")
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    # torch threads in each LocalCluster worker (default: the CPU cores shared out evenly).
    threads_per_worker: int | None = option(None, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.normalization = check_choice(self.normalization, _NORMALIZATIONS, "normalization")
        if self.batch_size is not None and self.batch_size < 1:
            raise SatpipeError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise SatpipeError(f"--seed must be >= 0, got {self.seed}")


_SCORES = "satpipe.pipeline.quality:SCORES"
DEFAULT_SCORE_N = 256


@dataclass
class ScoreConfig:
    """`satpipe store score`: quality scores of a saliency store, recorded in its provenance.

    Localisation runs over every row of the split (against the dataset's masks, else its
    boxes); faithfulness and sanity need the source model (`model`) and run on a seeded subset
    of `n` rows (default: 256, or the whole split when smaller). `scores`: a subset of the
    registry's names (default: every score that applies; one that cannot run is an error when
    asked for by name, a note otherwise).
    """

    saliency: str = option(help="Saliency store to score (path or URL).", argument=True)
    data: str | None = option(None, "Dataset store (default: the one the store records).")
    model: str | None = option(
        None, "Source model checkpoint (faithfulness and sanity need it; same arch and classes)."
    )
    n: int | None = option(
        None, f"Rows for faithfulness and sanity, a seeded subset (default: {DEFAULT_SCORE_N})."
    )
    split: str = option("train", "Split to score.", choices="satpipe.data.storage:SPLITS")
    scores: tuple[str, ...] = option(
        (), "Comma-separated scores (default: all that apply; `satpipe list scores`).",
        choices=_SCORES,
    )  # fmt: skip
    steps: int = option(16, "Deletion/insertion curve steps.")
    blur_sigma: float = option(4.0, "Std (pixels) of the blurred image insertion starts from.")
    seed: int = option(0, "Seed of the subset, the random orders and the randomised weights.")
    batch_size: int | None = option(
        None, "Images per model call (default: 64 on a CPU, GPU-sized on CUDA; recorded)."
    )
    device: str = option("auto", DEVICE_HELP)
    write: bool = option(True, "Record the scores in the store's provenance (`quality`).")
    as_json: bool = option(False, "Print the scores as JSON.", flag="--json")
    storage_options: dict[str, Any] = option(
        {}, "fsspec option key=value for URL stores (repeatable).", flag="--storage-option",
        short="-S",
    )  # fmt: skip

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.split = check_choice(self.split, "satpipe.data.storage:SPLITS", "split")
        self.scores = tuple(check_choice(s, _SCORES, "quality score") for s in self.scores)
        if self.n is not None and self.n < 1:
            raise SatpipeError(f"--n must be >= 1, got {self.n}")
        if self.steps < 1 or (self.batch_size or 1) < 1 or self.seed < 0:
            raise SatpipeError("--steps and --batch-size must be >= 1, --seed >= 0")
        if not self.blur_sigma > 0:
            raise SatpipeError(f"--blur-sigma must be > 0, got {self.blur_sigma}")
