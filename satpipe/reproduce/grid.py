"""How much work each step of a `satpipe reproduce` grid is, so one bar can show the whole
grid's progress and an ETA (satpipe.core.progress.grid_progress).

The unit is one forward pass of one image pixel through the model (a backward pass counts
two, as in `Variant.cost`): a step's work is its images x pixels x passes. Nothing here needs
to be exact, only proportional to time on the same model: an ETA, not a benchmark. Steps that
resume from finished outputs still count, and are advanced at once when they are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from satpipe.reproduce.presets import Preset

PASS = 3.0  # a forward and a backward pass, in forward passes
GENERATE = 0.2  # building one image of the built-in data, in forward passes (measured: cheap)
STORE_IO = 0.05  # writing or scoring one model-free map row, in forward passes


def _pixels(preset: Preset) -> int:
    size = int(preset.dataset_options.get("size", 32))
    return size * size


def _rows(preset: Preset) -> tuple[int, int]:
    opts = preset.dataset_options
    return int(opts.get("n_train", 50_000)), int(opts.get("n_test", 10_000))


def data_work(preset: Preset) -> float:
    n_train, n_test = _rows(preset)
    return (n_train + n_test) * _pixels(preset) * GENERATE


def train_work(preset: Preset, variant: str, epochs: int) -> float:
    """Training `variant` for `epochs` (plus the per-epoch clean accuracy on the test split)."""
    from satpipe.train.variants import VARIANTS

    n_train, n_test = _rows(preset)
    cost = VARIANTS.get(variant).cost(preset.attack_steps)
    return epochs * (n_train * cost.work + n_test) * _pixels(preset)


def eval_work(preset: Preset, content: bool = False) -> float:
    """`evaluate`: FGSM and PGD at each eps of the grid (and 0), the large-eps and
    double-steps checks, on the test split (a content-test row: the preset's content eps)."""
    _, n_test = _rows(preset)
    eps = preset.content_eval_eps if content and preset.content_eval_eps else preset.eval_eps
    grid = len(set(eps) | {0})
    passes = grid * (1 + preset.eval_steps) + 3 * preset.eval_steps
    return n_test * _pixels(preset) * passes * PASS


def saliency_work(preset: Preset, method: str) -> float:
    from satpipe.pipeline.methods import get_method

    n_train, _ = _rows(preset)
    m = get_method(method, **preset.method_params.get(method, {}))
    per = m.passes_per_image * PASS if m.needs_model else STORE_IO
    return n_train * _pixels(preset) * per


def score_work(preset: Preset, method: str, n: int, steps: int = 16, blocks: int = 3) -> float:
    """`store score`: localisation over the split, deletion and insertion (map and random
    order, steps + 1 forward passes each) and the randomisation cascade on n images."""
    from satpipe.pipeline.methods import get_method

    n_train, _ = _rows(preset)
    m = get_method(method, **preset.method_params.get(method, {}))
    work = n_train * STORE_IO + n * (steps + 1) * 4
    if m.needs_model:
        work += n * (blocks + 1) * max(m.passes_per_image, 1) * PASS
    return work * _pixels(preset)


def run_work(preset: Preset, variant: str, content: bool = False) -> float:
    return train_work(preset, variant, preset.epochs) + eval_work(preset, content)


def total_work(steps: Sequence[tuple[str, float]]) -> float:
    return float(sum(w for _, w in steps))


def describe(steps: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(name for name, _ in steps)
