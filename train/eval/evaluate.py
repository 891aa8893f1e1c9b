"""Robustness evaluation: clean accuracy and accuracy under any registered attack over an eps
grid, the per-image worst case, intervals, and the gradient-masking sanity checks.

`evaluate(RUN, **options)` (options = EvalConfig fields) writes, into RUN (or `out`):

    correct.npz       per-image correctness bits per (attack, eps, seed)  (train/eval/per_image.py)
    robustbench.json  a RobustBench-style record, when AutoAttack ran        (train/eval/results.py)
    results.md        the tables and the checks, for a person
    distortions.png   accuracy per distortion level, when --distortions asked for them
    results.json      everything, last: its presence means the evaluation completed

Each file is written to a temporary name and renamed, so a killed evaluation never leaves a
half-written file, and bad input (unknown attack, eps outside [0, 255], --n-examples outside
the split, a model whose output is not (N, classes), AutoAttack on a model that is random in
eval mode) is refused before anything is written. Evaluation runs in full fp32 (TF32 off for
cuDNN convolutions and CUDA matmuls inside `evaluate`, the previous flags restored after it;
see `satpipe.core.precision.fp32_math`) with the model in eval mode: attacks should not be weakened
by reduced precision. Randomness comes from
generators seeded by (attack seed, batch), or, for the reference AutoAttack code, a seed
derived from the attack seed: the same call gives the same numbers (on CPU bit for bit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.precision import configure, fp32_math
from satpipe.core.stats import accuracy_interval
from satpipe.train.checkpoint import file_sha256
from satpipe.train.config import LARGE_EPS, EvalConfig
from satpipe.train.eval import results as res
from satpipe.train.eval.attack_runs import Measured, measure, plan, raw_accuracies
from satpipe.train.eval.attacks import ATTACKS
from satpipe.train.eval.per_image import FILENAME as CORRECT_FILE
from satpipe.train.eval.per_image import write_correct
from satpipe.train.eval.results import results_markdown
from satpipe.train.eval.sanity import failed_checks, masking_warning, sanity_checks
from satpipe.train.eval.staleness import mark_if_stale
from satpipe.train.eval.subset import EvalSet, load_eval_set
from satpipe.train.models import load_model, probe_model
from satpipe.train.runlock import run_lock_holder

__all__ = [
    "clean_accuracy",
    "evaluate",
    "failed_checks",
    "masking_warning",
    "results_markdown",
    "robustness",
    "sanity_checks",
]


def clean_accuracy(model: nn.Module, loader, amp: bool = False) -> float:
    """Fraction of `loader`'s rows that `model` (put in eval mode, then restored) classifies
    correctly; `amp` uses bf16 autocast on CUDA, and without it the model runs in full fp32
    (TF32 off inside, see `satpipe.core.precision.fp32_math`)."""
    import contextlib

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), fp32_math(), autocast:
            for x, _, y in loader:
                correct += (model(x).argmax(1) == y).sum()
                n += len(y)
    finally:
        model.train(was)
    return correct.item() / max(n, 1)


def evaluate(run: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Evaluate a run directory (its checkpoint.pt) or a checkpoint file on the test split.

    options: the fields of `EvalConfig` (data, attacks, eps grid, attack_eps, n_examples,
    attack_examples, PGD steps/step size/restarts, seeds, batch_size, device, strict, out,
    ...). With `strict` (the default) a failed sanity check raises SatpipeError after the files
    are written.

    Returns:
        The results dict written to OUT/results.json (accuracies in %, eps keys in /255 units).
    """
    cfg = EvalConfig(run=str(run), **options)
    with fp32_math():  # no TF32 in the attacks' convolutions and matmuls
        return _evaluate(cfg)


def _evaluate(cfg: EvalConfig) -> dict[str, Any]:
    ckpt, model, state, loader = _open_for_eval(cfg)
    num_classes = state["model"]["num_classes"]
    data = load_eval_set(loader, cfg.n_examples, cfg.subset_seed)
    measurements = plan(cfg, num_classes, len(data))
    check_model(model, data, num_classes, [m.attack for m in measurements], str(ckpt))
    measured = measure(model, data, measurements, cfg, num_classes)
    raw = raw_accuracies(measured)
    checks = sanity_checks(raw, num_classes, cfg.tolerance, cfg.large_eps, cfg.large_eps_margin)
    results = _results(ckpt, state, loader.dataset, cfg, data, measured, checks)
    if cfg.distortions:
        results["distortions"] = distortion_table(model, data, cfg)
    out_dir = Path(cfg.out) if cfg.out is not None else ckpt.parent
    write_outputs(out_dir, results, data, measured)
    warning = masking_warning(results)
    if cfg.strict and warning:
        raise SatpipeError(f"{warning}; see {out_dir / 'results.md'} (--no-strict to only warn)")
    return results


def _open_for_eval(cfg: EvalConfig):
    """(checkpoint path, model in eval mode, checkpoint dict, test loader) for `evaluate`."""
    from satpipe.data.loader import make_loader

    path = Path(cfg.run)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    holder = run_lock_holder(ckpt.parent)
    if path.is_dir():
        mark_if_stale(path)  # results of an earlier checkpoint say so before anything else
    if holder is not None and not cfg.allow_running:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise SatpipeError(
            f"{ckpt.parent}: is being trained now ({who}); its checkpoint changes every epoch: "
            "evaluate it when training ends, or pass --allow-running to evaluate the epoch "
            "it holds now"
        )
    dev = resolve_device(cfg.device)
    configure(dev, cfg.deterministic)
    model, state = load_model(ckpt, dev)
    model.eval()
    if holder is not None:  # --allow-running: say which epoch, in the results too
        state["running"] = {"epoch": int(state.get("epoch", -1)) + 1, "pid": holder.get("pid"),
                            "host": holder.get("host")}  # fmt: skip
    if dev.type == "cuda":  # the layout the loader's CUDA batches come in (and the trainer's)
        model = model.to(memory_format=torch.channels_last)
    data = cfg.data or (state.get("config") or {}).get("data")
    if not data:
        raise SatpipeError(f"{ckpt}: checkpoint does not name its dataset; pass --data")
    # Streaming: the evaluation keeps the rows it attacks (as floats, `load_eval_set`), not
    # a resident uint8 copy of the whole split beside them.
    loader = make_loader(
        data, "test", None, batch_size=cfg.batch_size, shuffle=False, augment=False, device=dev,
        storage_options=cfg.storage_options, mode="streaming",
    )  # fmt: skip
    num_classes = state["model"]["num_classes"]
    if loader.num_classes != num_classes:
        raise SatpipeError(f"{data}: has {loader.num_classes} classes, the model {num_classes}")
    h, w, c = loader.image_shape
    probe_model(model, (c, h, w), f"{ckpt}: the model")  # e.g. an RGB teacher on grey data
    return ckpt, model, state, loader


def check_model(
    model: nn.Module, data: EvalSet, num_classes: int, attacks: Sequence[str], where: str
) -> None:
    """Refuse a model whose output is not (N, classes) logits, and, when an attack assumes a
    deterministic forward (AutoAttack's), one whose eval-mode output changes between calls."""
    x = data.x[: min(len(data), 16)]
    with torch.no_grad():
        first = model(x)
        if first.ndim != 2 or tuple(first.shape) != (len(x), num_classes):
            raise SatpipeError(
                f"{where}: model output has shape {tuple(first.shape)}, expected "
                f"({len(x)}, {num_classes}) logits"
            )
        needs = sorted({a for a in attacks if ATTACKS.get(a).deterministic_model})
        if not needs:
            return
        # The reference code's own check: outputs of repeated calls, normalised per row.
        unit = first / (first.norm(dim=1, keepdim=True) + 1e-10)
        for _ in range(2):
            again = model(x)
            drift = (again / (again.norm(dim=1, keepdim=True) + 1e-10) - unit).norm(dim=1).max()
            if not torch.isfinite(drift) or drift.item() > 1e-4:
                raise SatpipeError(
                    f"{where}: model output is random in eval mode (dropout or noise left on); "
                    f"{', '.join(needs)} assume(s) a deterministic forward"
                )


def _results(ckpt: Path, state, dataset, cfg: EvalConfig, evalset: EvalSet,
             measured: Measured, checks) -> dict[str, Any]:  # fmt: skip
    """The results.json dict (format 2; see satpipe.train.eval.results)."""
    num_classes = state["model"]["num_classes"]
    config = state.get("config") or {}
    attacks = res.attack_table(measured, cfg, num_classes)
    targeted = [a["n_target_classes"] for a in attacks.values() if "n_target_classes" in a]
    epoch_times = res.epoch_times(ckpt.parent)
    use = res.saliency_use(ckpt.parent)
    return {
        "satpipe": {"kind": "results", "format": res.FORMAT},
        "checkpoint": str(ckpt),
        # The digest of the file that was loaded (it may be replaced since, by a running run).
        "checkpoint_sha256": state.get("checkpoint_sha256") or file_sha256(ckpt),
        "running": state.get("running"),
        "variant": state.get("variant"),
        "arch": state["model"]["arch"],
        "seed": config.get("seed"),
        "epochs": (state.get("epoch", -1) + 1),
        "data": str(dataset.uri),
        "dataset": dataset.name,
        "n": len(evalset),
        "num_classes": num_classes,
        "subset": _subset(cfg, evalset, num_classes),
        "eval": cfg.to_dict(),
        "attack": {
            "steps": cfg.steps,
            "step_size": cfg.step_size,
            "random_start": True,
            "restarts": cfg.restarts,
            "seeds": list(cfg.seeds),
            "large_eps": cfg.large_eps,
        },  # fmt: skip
        "clean": 100 * float(measured.clean.mean()),
        "clean_interval": accuracy_interval(measured.clean).as_dict(),
        "attacks": attacks,
        "robust": res.robust_table(measured),
        **({"robust_l2": res.robust_table(measured, "L2")} if measured.norms else {}),
        "n_target_classes": targeted[0] if targeted else None,
        **res.paper_protocol(attacks),
        "pgd_large": 100 * float(measured.extras["pgd_large"].mean()),
        "pgd_double_steps": 100 * float(measured.extras["pgd_double_steps"].mean()),
        "check_examples": len(measured.extras["pgd_double_steps"]),
        "checks": checks,
        "checks_passed": all(c["passed"] for c in checks),
        "train_time_s": None if epoch_times is None else sum(epoch_times),
        "epoch_time_s": epoch_times,
        # A SAT-family run: what it took from its maps (share, magnitude), from metrics.jsonl.
        "saliency_use": use,
        "saliency_share": None if use is None else use["share"],
        # The overfitting guard, when the run had one: did it fire, which epoch's weights.
        "guard": state.get("guard"),
        "stopped": state.get("stopped"),
    }


def _subset(cfg: EvalConfig, evalset: EvalSet, num_classes: int) -> dict[str, Any]:
    """results.json's `subset`: which images were evaluated (the stratified subset's size,
    seed, the split it came from and its images per class)."""
    labels = evalset.y.cpu().numpy()
    return {
        "n_examples": cfg.n_examples,
        "seed": cfg.subset_seed,
        "stratified": True,
        "split_size": evalset.split_size,
        "class_counts": res.class_counts(labels, num_classes),
    }


def distortion_table(model: nn.Module, data: EvalSet, cfg: EvalConfig) -> dict[str, Any]:
    """results.json's `distortions`: per distortion its levels' accuracy cells (on every
    evaluated image, with the 95% Wilson interval) and what the level means."""
    from satpipe.core.progress import progress
    from satpipe.train.eval.distortions import DISTORTIONS, distortion_correct

    out: dict[str, Any] = {}
    total = sum(len(cfg.levels(d)) for d in cfg.distortions) * len(data)
    with progress("distortions " + ",".join(cfg.distortions), total) as advance:
        for name in cfg.distortions:
            bits = distortion_correct(model, data.x, data.y, name, cfg.levels(name),
                                      cfg.batch_size)  # fmt: skip
            advance(len(bits) * len(data))
            out[name] = {
                "level": DISTORTIONS.get(name).level_name,
                "levels": {
                    k: {
                        "n": int(len(b)),
                        "accuracy": 100 * float(b.mean()),
                        "interval": accuracy_interval(b).as_dict(),
                    }
                    for k, b in bits.items()
                },  # fmt: skip
            }
    return out


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(out_dir: Path, results: dict[str, Any], data: EvalSet, measured: Measured):
    """correct.npz, robustbench.json, results.md, then results.json (each atomically, the
    completion marker last). Fills results["correct"] and results["robustbench"]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = write_correct(
        out_dir / CORRECT_FILE, data.indices, data.y.cpu().numpy(), measured.clean,
        measured.all_bits(),
    )  # fmt: skip
    results["correct"] = {"file": CORRECT_FILE, "format": 1, "sha256": digest}
    record = res.robustbench_record(results, measured)
    results["robustbench"] = "robustbench.json" if record else None
    stale = out_dir / "robustbench.json"
    if record:
        _write_text(stale, json.dumps(record, indent=2, allow_nan=False) + "\n")
    elif stale.exists():
        stale.unlink()  # from an earlier evaluation with AutoAttack: not this one's
    if results.get("distortions"):
        from satpipe.train.eval.distortions import distortions_plot

        title = f"{results.get('variant') or 'model'} ({results['arch']}): distortions"
        distortions_plot({title: results["distortions"]}, out_dir / "distortions.png")
    _write_text(out_dir / "results.md", results_markdown(results))
    _write_text(out_dir / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")


def robustness(
    model: nn.Module,
    loader,
    eps: Sequence[float] = (0, 1, 2, 3, 4, 8),
    steps: int = 5,
    step_size: float = 2.0,
    seeds: Sequence[int] = (0,),
    large_eps: float = LARGE_EPS,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    **options: Any,
) -> dict[str, Any]:
    """Raw accuracies (fractions) of `model` on every row of `loader`; eps in /255 units. The
    input of `sanity_checks`: {"n", "clean", "fgsm": {eps: acc}, "pgd": {eps: [acc per
    seed]}, "pgd_large", "pgd_double_steps", "others", "autoattack"}."""
    model.eval()
    cfg = EvalConfig(
        run="", eps=tuple(eps), steps=steps, step_size=step_size, seeds=tuple(seeds),
        large_eps=large_eps, attacks=tuple(attacks), **options,
    )  # fmt: skip
    num_classes = loader.num_classes
    data = load_eval_set(loader, cfg.n_examples, cfg.subset_seed)
    if not len(data):
        raise SatpipeError("evaluation split has no rows")
    return raw_accuracies(measure(model, data, plan(cfg, num_classes, len(data)), cfg, num_classes))
