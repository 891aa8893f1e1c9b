"""What a `satpipe reproduce` grid will cost, before it runs, and whether its data can run it.

`grid_plan` lists every step of a preset's grid with the number of image passes it makes
(one pass: a forward and a backward pass of one image; a forward-only pass counts 1/3, as in
`Variant.cost`); `pass_rates` measures the forward+backward rate of the preset's models on
this machine in a few seconds, and `plan_markdown` multiplies the two, so a user sees e.g. a
15-minute-per-store score before it starts. The counts follow the code that runs each step:

- sources and students: epochs x (train rows x the variant's cost + test rows forward);
- a saliency store: train rows x the method's passes per image (model-free maps: none);
- a score: deletion and insertion, map and random order, (steps + 1) forward passes each on
  `score_n` rows with the judge model, and the randomisation cascade (the method on the
  source with 0..B blocks randomised) for model-based maps;
- an evaluation: FGSM and PGD at each eps of the grid on the test split, the checks' two
  extra PGD runs (64/255, and 2x steps) on `check_examples`, and AutoAttack at most
  APGD-CE + APGD-T + FAB-T + Square on each of its images (only the images every earlier
  attack failed on go on, so this bound is what a robust model costs).

`check_annotations` is the grid's first check after the data step: a weak method that reads
masks or boxes stops the run in one line naming how to import them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from satpipe.core.errors import SatpipeError
from satpipe.reproduce.presets import SOURCES, Preset

FORWARD = 1 / 3  # a forward-only pass, in forward+backward passes
SCORE_STEPS = 16  # ScoreConfig's deletion/insertion steps (the default reproduce scores with)
LARGE_EPS_CHECKS = 3  # the checks' extra PGD work in units of `eval_steps`: 1x at 64/255, 2x
AA_ITERATIONS = 100  # APGD and FAB iterations per restart (AutoAttack's standard settings)
SQUARE_QUERIES = 5000

# How to bring an annotation a weak method reads, per dataset format: the one line the check
# prints names it.
ANNOTATION_HINTS = {
    ("flowers17", "masks"): "import with `--masks-only` (satpipe data import flowers17 DIR "
    "--masks-only; trimaps/ beside jpg/)",
    ("imagefolder", "masks"): "import with `--masks MASK_TREE`",
    ("tinyimagenet", "boxes"): "import tiny-imagenet-200/ with its train/WNID/WNID_boxes.txt "
    "and val/val_annotations.txt (satpipe data import tinyimagenet DIR)",
}


@dataclass(frozen=True)
class Step:
    """One step of the grid: image passes of `model` (None: no model, priced at 0), priced
    at the model's training rate (`train`: weights updated) or its input-gradient rate
    (`grad`: saliency, scores, attacks, in eval mode); `count` identical steps (seeds) behind
    one line; `bound`: input-gradient passes that are only an upper bound (AutoAttack)."""

    name: str
    model: str | None
    train: float = 0.0
    grad: float = 0.0
    count: int = 1
    bound: float = 0.0
    detail: str = ""

    @property
    def passes(self) -> float:
        return self.train + self.grad

    def seconds(self, rates: dict[tuple[str, str], float]) -> tuple[float, float]:
        """(seconds of one such step, of its AutoAttack bound) at `rates`
        {(model, "train" | "grad"): passes/s}."""
        if self.model is None:
            return 0.0, 0.0
        grad = rates[(self.model, "grad")]
        return self.train / rates[(self.model, "train")] + self.grad / grad, self.bound / grad


def check_annotations(preset: Preset, data: str) -> None:
    """A one-line SatpipeError when the preset's weak method reads an array (masks, boxes)
    that the dataset store `data` lacks, naming the importer flag or files that bring it."""
    if not preset.weak_method:
        return
    from satpipe.data.dataset_store import open_dataset
    from satpipe.pipeline.methods import get_method

    method = get_method(preset.weak_method, **preset.method_params.get(preset.weak_method, {}))
    view = open_dataset(data)
    for array in method.requires:
        if getattr(view.split("train"), array) is None:
            fmt = (view.attrs.get("source") or {}).get("format", preset.dataset)
            hint = ANNOTATION_HINTS.get((preset.dataset, array)) or ANNOTATION_HINTS.get(
                (fmt, array), f"import a format that stores {array}"
            )
            raise SatpipeError(
                f"{data}: preset '{preset.name}' trains on '{method.name}' maps, which need "
                f"train/{array}, and this store has none: {hint} (a store imported without "
                "them is reused: delete it to re-import)"
            )


def _train_passes(preset: Preset, variant: str, epochs: int, n_train: int, n_test: int):
    from satpipe.train.variants import VARIANTS

    cost = VARIANTS.get(variant).cost(preset.attack_steps)
    return epochs * (n_train * cost.work * FORWARD + n_test * FORWARD)


def autoattack_passes(preset: Preset, num_classes: int) -> float:
    """Upper bound of AutoAttack's passes per image: every attack of the preset's version
    runs to its end (an image every earlier attack failed on)."""
    from satpipe.train.eval.attacks import n_target_classes

    targets = n_target_classes(num_classes)
    per = {
        "apgd-ce": AA_ITERATIONS,
        "apgd-t": targets * AA_ITERATIONS if num_classes >= 4 else 0,
        "fab-t": targets * AA_ITERATIONS,  # a forward and the two logits' gradients per step
        "square": SQUARE_QUERIES * FORWARD,
    }
    components = preset.autoattack_components or tuple(per)
    return float(sum(per.get(c, AA_ITERATIONS) for c in components))


def eval_passes(
    preset: Preset, n_test: int, num_classes: int, seed: int, content: bool = False
) -> tuple[float, float, str]:
    """(passes of the PGD/FGSM protocol and the checks, upper bound of AutoAttack's, a detail
    line) of one student's evaluation, with the options `reproduce` evaluates it with (a row of
    the content test: the preset's cheaper content_* settings)."""
    from satpipe.reproduce.specs import eval_options

    options = eval_options(preset, seed, content)
    steps, eps = options["steps"], options["eps"]
    check_n = min(options.get("check_examples") or n_test, n_test)
    protocol = n_test * (FORWARD + len(eps) * (1 + steps))
    protocol += check_n * LARGE_EPS_CHECKS * steps
    detail = f"{n_test} images x {len(eps)} eps, checks on {check_n}"
    if "autoattack" not in options["attacks"]:
        return protocol, 0.0, detail
    aa_n = min(options.get("attack_examples", {}).get("autoattack") or n_test, n_test)
    return protocol, aa_n * autoattack_passes(preset, num_classes), detail


def grid_plan(
    preset: Preset,
    rows: dict[str, int],
    num_classes: int,
    seeds: Sequence[int],
    frontier_seeds: Sequence[int] | None = None,
    grid_seeds: Sequence[int] | None = None,
) -> list[Step]:
    """Every step of the preset's grid after the data, in run order, with its passes (the runs
    `reproduce` makes: the content test at `seeds`, the rest at `grid_seeds`)."""
    from satpipe.pipeline.methods import get_method
    from satpipe.pipeline.quality.sanity import cascade_blocks
    from satpipe.reproduce.specs import plan_runs, planned_stores
    from satpipe.train.models import create_model

    n_train, n_test = rows.get("train", 0), rows.get("test", 0)
    steps: list[Step] = []
    stores = planned_stores(preset, _NOWHERE)
    has_judge = any(s.source is not None for s in stores)
    blocks = len(cascade_blocks(create_model(preset.source_arch, num_classes)))
    built: set[str] = set()
    for store in stores:
        if store.source is not None and store.source not in built:
            built.add(store.source)
            variant = SOURCES[store.source][0]
            passes = _train_passes(preset, variant, preset.source_epochs, n_train, n_test)
            steps.append(Step(f"source {store.source}", preset.source_arch, train=passes,
                              detail=f"{variant}, {_epochs(preset.source_epochs)}"))  # fmt: skip
        method = get_method(store.method, **preset.method_params.get(store.method, {}))
        model = preset.source_arch if method.needs_model else None
        per = method.passes_per_image if method.needs_model else 0
        detail = f"{per} pass{'es' if per > 1 else ''}/image" if per else "from the data"
        steps.append(Step(f"saliency {store.label}", model, grad=n_train * per, detail=detail))
    score_n = min(preset.score_n, n_train)
    for store in stores:
        method = get_method(store.method, **preset.method_params.get(store.method, {}))
        judge = store.source is not None or has_judge
        passes = score_n * (SCORE_STEPS + 1) * 4 * FORWARD if judge else 0.0
        detail = f"{score_n} rows: deletion/insertion" if judge else "localisation only"
        if method.needs_model:
            passes += score_n * (blocks + 1) * method.passes_per_image
            detail += f", cascade over {blocks} blocks"
        steps.append(Step(f"score {store.label}", preset.source_arch if judge else None,
                          grad=passes, detail=detail))  # fmt: skip
    weak = "weak" if preset.weak_method else None
    study = {(s.source, s.method): s.label for s in stores if s.row != "sat"}
    specs = plan_runs(preset, _NOWHERE, seeds, weak, study, frontier_seeds, grid_seeds)
    runs: dict[tuple[str, str, bool], list] = {}
    # One run per folder: a row the grid lists twice (a baseline in two tables) trains once.
    for spec in {s.out: s for s in specs}.values():
        runs.setdefault((spec.row, spec.variant, spec.content), []).append(spec)
    for (row, variant, content), group in runs.items():
        train = _train_passes(preset, variant, preset.epochs, n_train, n_test)
        protocol, aa, detail = eval_passes(preset, n_test, num_classes, group[0].seed, content)
        steps.append(Step(f"train {row}", preset.student, train=train, count=len(group),
                          detail=f"{variant}, {_epochs(preset.epochs)}"))  # fmt: skip
        steps.append(Step(f"evaluate {row}", preset.student, grad=protocol, count=len(group),
                          bound=aa, detail=detail))  # fmt: skip
    return steps


# A stand-in report folder: planning names the grid's paths (one per run) and never touches them.
_NOWHERE = Path("grid")


def pass_rates(
    archs: Sequence[str],
    image_shape: tuple[int, int, int],
    num_classes: int,
    device: str = "cpu",
    batch_size: int = 32,
    floor_seconds: float = 0.2,
) -> dict[tuple[str, str], float]:
    """Measured image passes per second of each model in `archs` on `device`, on a batch of
    `batch_size` random images of shape (H, W, C), untrained (speed does not depend on the
    weights): {(arch, "train"): forward and backward to the weights in train mode,
    (arch, "grad"): forward and backward to the input only in eval mode (bench's
    forward_backward, what saliency methods and attacks do)}."""
    import torch

    from satpipe.bench.timing import alternate, forward_backward
    from satpipe.core.device import resolve_device
    from satpipe.train.models import create_model

    dev = resolve_device(device)
    h, w, c = image_shape
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, c, h, w, generator=generator).to(dev)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator).to(dev)
    rates = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for arch in dict.fromkeys(archs):
            net = create_model(arch, num_classes, in_channels=c).to(dev).train()

            def train(_i, net=net):
                net.train()
                leaf = x.clone().requires_grad_(True)
                torch.nn.functional.cross_entropy(net(leaf), y).backward()
                net.zero_grad(set_to_none=True)

            sides = {"train": train, "grad": lambda _i, net=net: forward_backward(net, x, y)}
            # One warm-up and one timed call each at least: seconds on a CPU for a ResNet-34.
            timings = alternate(sides, device=dev, warmup=1, rounds=1,
                                floor_seconds=floor_seconds)  # fmt: skip
            for kind in sides:
                rates[(arch, kind)] = batch_size / timings.median(kind)
    return rates


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("s" if n != 1 else "")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def plan_markdown(
    preset: Preset,
    steps: Sequence[Step],
    rates: dict[tuple[str, str], float],
    rows: dict[str, int],
    device: str,
) -> str:
    """The plan as a Markdown page: each step, its passes, its estimated time at the
    measured rates, and the total (with AutoAttack's upper bound apart)."""
    lines = [
        f"# {preset.name}: the grid's steps and their estimated cost\n",
        f"{rows.get('train', 0)} train / {rows.get('test', 0)} test rows. Measured on this "
        f"machine ({device}) now, image passes per second (forward + backward; training: "
        "to the weights, train mode / input gradient: eval mode, as saliency and attacks): "
        + ", ".join(
            f"{a} {rates[(a, 'train')]:,.1f} / {rates[(a, 'grad')]:,.1f} img/s"
            for a in dict.fromkeys(a for a, _ in rates)
        )
        + ". Estimate = training passes / training rate + input-gradient passes / its rate "
        "(forward-only passes count 1/3). AutoAttack's column is an upper bound: every image "
        "running every attack to its end, as on a fully robust model.\n",
        "| step | model | runs | passes each | est. each | AutoAttack ≤ each | detail |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    total = bound = 0.0
    for step in steps:
        each, aa = step.seconds(rates)
        total += each * step.count
        bound += aa * step.count
        lines.append(
            f"| {step.name} | {step.model or '-'} | {step.count} | {step.passes:,.0f} | "
            f"{_duration(each) if step.model else '-'} | "
            f"{_duration(aa) if step.bound else '-'} | {step.detail} |"
        )
    lines.append(
        f"\nTotal: about {_duration(total)} without AutoAttack (data import not included); "
        f"AutoAttack adds at most {_duration(bound)}. Only the images every earlier attack "
        "failed on go on to the next, so on students of robust accuracy r it adds about "
        f"r x {_duration(bound)} (plus APGD-CE on the clean-correct images).\n"
    )
    return "\n".join(lines)


def estimate(
    preset: Preset,
    rows: dict[str, int],
    image_shape: tuple[int, int, int],
    num_classes: int,
    device: str,
    seeds: Sequence[int],
    frontier_seeds: Sequence[int] | None = None,
    grid_seeds: Sequence[int] | None = None,
) -> str:
    """The plan of the preset's grid on data of `rows` per split, images (H, W, C) and
    `num_classes`, priced at pass rates measured now on `device`, as Markdown."""
    from satpipe.core.device import resolve_device

    kind = resolve_device(device).type
    steps = grid_plan(preset, rows, num_classes, seeds, frontier_seeds, grid_seeds)
    archs = [s.model for s in steps if s.model]
    # A GPU's rate depends on the batch: measure at the preset's; a CPU's hardly, so a small one.
    batch = preset.batch_size if kind == "cuda" else 8
    rates = pass_rates(archs, image_shape, num_classes, device, batch)
    return plan_markdown(preset, steps, rates, rows, kind)


def print_plan(
    preset: Preset,
    data: str,
    device: str,
    seeds: Sequence[int],
    frontier_seeds: Sequence[int] | None = None,
    grid_seeds: Sequence[int] | None = None,
) -> str:
    """`estimate` on the dataset store `data` (its rows, image shape and classes); the caller
    prints it and writes plan.md."""
    from satpipe.data.dataset_store import open_dataset

    view = open_dataset(data)
    rows = {s: len(view.split(s)) for s in view.splits}
    return estimate(
        preset, rows, view.image_shape, view.num_classes, device, seeds, frontier_seeds,
        grid_seeds,
    )  # fmt: skip
