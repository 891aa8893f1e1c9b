"""`score_store`: every quality score of one saliency store, recorded in its provenance.

The store must be complete, every shard of its maps present and readable (checksums are
verified as the localisation pass reads every chunk), and paired with its dataset; the source
model, when given, must have the store's architecture and the dataset's classes. Any of these
failing is one SatpipeError line and the provenance is left as it was: scores are computed
first and written last, in one replacement of the store's attributes (`quality`), maps
untouched. A rerun with the same settings gives the same numbers and replaces them.

Memory: localisation holds one shard of maps (and masks) at a time plus one float per image
and score; faithfulness and sanity hold their `n` images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from satpipe.core.defaults import batch_size as default_batch_size
from satpipe.core.device import resolve_device
from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.core.seeding import derive_seed, generator
from satpipe.core.stats import mean_interval
from satpipe.core.version import __version__
from satpipe.data.dataset_store import open_dataset
from satpipe.data.saliency_store import check_pairing, open_saliency
from satpipe.data.storage import now_iso, shard_rows, shard_slices
from satpipe.pipeline.config import DEFAULT_SCORE_N, ScoreConfig
from satpipe.pipeline.quality.faithfulness import faithfulness_batch, taken_counts
from satpipe.pipeline.quality.localisation import boxes_to_masks, localisation_batch
from satpipe.pipeline.quality.registry import SCORES, family_scores
from satpipe.pipeline.quality.sanity import FLAG_AT, cascade_blocks, randomisation_curve

FAITH_STREAM = 0xFA17  # tags the faithfulness orders apart from every other random stream
SUBSET_STREAM = 0x5B5E


@dataclass
class _Job:
    """One scoring run: its inputs, and what it found (results, curves, notes, flags)."""

    config: ScoreConfig
    attrs: dict[str, Any]
    data: str
    dataset: Any
    view: Any  # the dataset split
    maps: Any  # the store's (N, H, W, Cs) array of that split
    device: torch.device
    model: Any = None
    model_info: dict[str, Any] | None = None
    subset: np.ndarray | None = None
    target: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    _subset_images: tuple[torch.Tensor, torch.Tensor] | None = None

    def want(self, family: str) -> list[str]:
        """The scores of `family` this run computes (all, or those asked for)."""
        names = family_scores(family)
        asked = self.config.scores
        return [n for n in names if n in asked] if asked else names

    def skip(self, family: str, why: str) -> None:
        """A note, or an error when a score of `family` was asked for by name."""
        asked = [n for n in self.want(family) if n in self.config.scores]
        if asked:
            raise SatpipeError(f"{self.config.saliency}: cannot compute {', '.join(asked)}: {why}")
        if self.want(family):
            self.notes.append(f"{family} skipped: {why}")

    def stored_maps(self, selection) -> torch.Tensor:
        path = f"{self.config.split}/saliency"
        maps = torch.from_numpy(_read(self.config.saliency, path, self.maps, selection))
        maps = maps.to(self.device).float()
        if not bool(torch.isfinite(maps).all()):
            raise SatpipeError(
                f"{self.config.saliency}: {path} holds NaN/Inf maps; run `satpipe store verify`"
            )
        return maps

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 (n, C, H, W) in [0, 1] and y int64 (n,) of the subset, on the device
        (read once, shared by faithfulness and sanity)."""
        if self._subset_images is None:
            view = self.view
            images = _read(self.data, f"{view.name}/images", view.images, self.subset)
            labels = _read(self.data, f"{view.name}/labels", view.labels, self.subset)
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            self._subset_images = (x.contiguous(), torch.from_numpy(labels).to(self.device).long())
        return self._subset_images


def score_store(config: ScoreConfig) -> dict[str, Any]:
    """Compute the store's quality scores; record them (unless `write=False`) under the
    provenance key `quality`, replacing any earlier record as a whole (its settings apply to
    every score in it), and return that record (JSON-able). Writing holds the store's lock
    for the whole scoring: no saliency run may replace the maps being scored."""
    import contextlib

    from satpipe.data.outputs import store_lock

    lock = store_lock(config.saliency, "saliency store") if config.write else None
    with lock or contextlib.nullcontext():
        return _score_store(config)


def _score_store(config: ScoreConfig) -> dict[str, Any]:
    job = _open(config)
    if job.target is None:
        job.skip("localisation", f"{job.data} has no {config.split} masks or boxes")
    elif job.want("localisation"):
        _localisation(job)
    if job.model is None:
        job.skip("faithfulness", _no_model(job.attrs))
    elif job.want("faithfulness"):
        _faithfulness(job)
    if job.want("sanity"):
        _sanity(job)
    quality = {
        "split": config.split,
        "scored": now_iso(),
        "satpipe_version": __version__,
        "settings": _settings(job),
        "scores": job.results,
        "curves": job.curves,
        "notes": job.notes,
        "flags": job.flags,
    }
    if config.write:
        from satpipe.data.saliency_store import write_quality

        write_quality(config.saliency, quality, job.attrs, config.storage_options)
    return quality


def _open(config: ScoreConfig) -> _Job:
    """Open and check everything a run reads; every refusal happens here, before any work."""
    so = dict(config.storage_options or {})
    saliency = open_saliency(config.saliency, so)  # incomplete: one line
    data = config.data or (saliency.attrs.get("dataset") or {}).get("uri")
    if not data:
        raise SatpipeError(f"{config.saliency}: records no dataset; pass --data")
    dataset = open_dataset(data, so)
    check_pairing(dataset, saliency, config.split)
    job = _Job(
        config,
        saliency.attrs,
        str(data),
        dataset,
        dataset.split(config.split),
        saliency.split(config.split),
        resolve_device(config.device),
    )
    if config.batch_size is None:  # the device's default, recorded in the settings
        h, w, _ = dataset.image_shape
        job.config = dataclasses.replace(config, batch_size=default_batch_size(job.device, h, w))
    _check_inventory(config.saliency, f"{config.split}/saliency", job.maps)
    job.target = _localisation_target(job.view)
    if job.target is not None and job.want("localisation"):
        _check_inventory(job.data, f"{config.split}/{job.target}", getattr(job.view, job.target))
    job.model, job.model_info = _source_model(config, job.attrs, dataset, job.device)
    rows = len(job.view)
    n = config.n if config.n is not None else min(DEFAULT_SCORE_N, rows)
    if n > rows:
        raise SatpipeError(f"--n {n} is larger than the {config.split} split ({rows} rows)")
    job.subset = _subset(config.seed, rows, n)
    return job


# --------------------------------------------------------------------------------------------
# Inputs


def _check_inventory(uri: str, path: str, arr) -> None:
    """Refuse an array with shards that have no stored object (they would read as zeros)."""
    from satpipe.data.inventory import missing_shards

    missing = missing_shards(arr)
    if missing:
        rows = shard_rows(arr)
        k = missing[0]
        raise SatpipeError(
            f"{uri}: {path}: {len(missing)} shards have no stored data (first: rows "
            f"{k * rows}:{min((k + 1) * rows, int(arr.shape[0]))}); run `satpipe store verify`"
        )


def _localisation_target(view) -> str | None:
    return "masks" if view.masks is not None else ("boxes" if view.boxes is not None else None)


def _no_model(attrs: Mapping[str, Any]) -> str:
    source = attrs.get("source_model") or {}
    if source.get("arch"):
        sha = str(source.get("checkpoint_sha256") or "")[:12]
        return f"pass --model CKPT (the store's source: {source['arch']}, sha256 {sha}...)"
    return "pass --model CKPT (a model of the dataset's classes to judge the maps with)"


def _source_model(config: ScoreConfig, attrs: Mapping[str, Any], dataset, device):
    """(model in eval mode on `device` or None, its provenance) after the identity checks."""
    if not config.model:
        return None, None
    from satpipe.train.models import load_model

    model, state = load_model(config.model, device)
    record = state["model"]
    source = attrs.get("source_model") or {}
    if source.get("arch") and record["arch"] != source["arch"]:
        raise SatpipeError(
            f"{config.model}: is a {record['arch']}, the store's maps come from a {source['arch']}"
        )
    if record["num_classes"] != dataset.num_classes:
        raise SatpipeError(
            f"{config.model}: has {record['num_classes']} classes, {dataset.uri} has "
            f"{dataset.num_classes}"
        )
    if record["in_channels"] != dataset.image_shape[2]:
        raise SatpipeError(
            f"{config.model}: takes {record['in_channels']} channels, {dataset.uri} has "
            f"{dataset.image_shape[2]}"
        )
    info = {
        "path": str(config.model),
        "arch": record["arch"],
        "sha256": state["checkpoint_sha256"],
        "is_source": state["checkpoint_sha256"] == source.get("checkpoint_sha256"),
    }
    return model, info


def _subset(seed: int, rows: int, n: int) -> np.ndarray:
    """Sorted row indices of a seeded random subset of n of `rows` rows."""
    rng = np.random.default_rng(derive_seed(seed, SUBSET_STREAM))
    return np.sort(rng.choice(rows, size=n, replace=False))


def _read(uri: str, path: str, arr, selection) -> np.ndarray:
    """arr[selection] (a slice, or row indices); an unreadable chunk is one line."""
    try:
        if isinstance(selection, slice):
            return np.asarray(arr[selection])
        return np.asarray(arr.get_orthogonal_selection((selection,)))
    except SatpipeError:
        raise
    except Exception as exc:  # zarr raises ValueError for a failed checksum, others for garbage
        where = (
            f"rows {selection.start}:{selection.stop}"
            if isinstance(selection, slice)
            else (f"{len(selection)} rows")
        )
        msg = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise SatpipeError(f"{uri}: {path} {where} unreadable ({msg}); run `satpipe store verify`"
                           ) from exc  # fmt: skip


# --------------------------------------------------------------------------------------------
# Families


def _summary(name: str, values: np.ndarray, chance: np.ndarray, seed: int) -> dict[str, Any]:
    """A score's record: mean with its bootstrap 95% interval over images, chance, direction."""
    score = SCORES.get(name)
    ok = np.isfinite(values)
    record: dict[str, Any] = {
        "family": score.family,
        "higher_is_better": score.higher_is_better,
        "n": int(ok.sum()),
        "chance_kind": score.chance,
    }
    if not ok.any():
        return {**record, "value": None, "low": None, "high": None, "chance": None}
    interval = mean_interval(values[ok], seed=seed)
    return {**record, **_rounded(interval.as_dict()), "chance": _r(float(np.mean(chance[ok])))}


def _r(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _rounded(d: Mapping[str, float]) -> dict[str, float | None]:
    return {k: _r(v) for k, v in d.items()}


def _localisation(job: _Job) -> None:
    """Every row of the split, one shard at a time."""
    names = job.want("localisation")
    n, h, w = (int(v) for v in job.maps.shape[:3])
    values = {k: np.full(n, np.nan) for k in names}
    chance = {k: np.full(n, np.nan) for k in names}
    blocks = shard_slices(n, shard_rows(job.maps))
    target = getattr(job.view, job.target)
    with progress("score localisation", len(blocks)) as advance:
        for block in blocks:
            maps = job.stored_maps(block)
            raw = _read(job.data, f"{job.view.name}/{job.target}", target, block)
            raw = torch.from_numpy(raw).to(job.device)
            masks = boxes_to_masks(raw, (h, w)) if job.target == "boxes" else raw
            for name, (v, c) in localisation_batch(maps, masks, names).items():
                values[name][block] = v.cpu().numpy()
                chance[name][block] = c.cpu().numpy()
            advance()
    for k in names:
        job.results[k] = _summary(k, values[k], chance[k], job.config.seed)


def _faithfulness(job: _Job) -> None:
    """Deletion and insertion on the subset, a batch at a time."""
    config = job.config
    x, y = job.images()
    maps = job.stored_maps(job.subset)
    auc = {k: ([], []) for k in ("deletion", "insertion")}
    sums = dict.fromkeys(auc, 0)
    b = config.batch_size
    with progress("score faithfulness", -(-len(x) // b)) as advance:
        for i, a in enumerate(range(0, len(x), b)):
            g = generator(config.seed, FAITH_STREAM, i, device=job.device)
            out = faithfulness_batch(
                job.model,
                x[a : a + b],
                y[a : a + b],
                maps[a : a + b],
                config.steps,
                config.blur_sigma,
                g,
                chunk=16 * b,
            )
            for k, (v, c, curve) in out.items():
                auc[k][0].append(v.cpu().numpy())
                auc[k][1].append(c.cpu().numpy())
                sums[k] = sums[k] + curve.cpu()
            advance()
    pixels = int(x.shape[2]) * int(x.shape[3])
    fractions = [t / pixels for t in taken_counts(pixels, config.steps)]
    for k in job.want("faithfulness"):
        values, chance = np.concatenate(auc[k][0]), np.concatenate(auc[k][1])
        job.results[k] = _summary(k, values, chance, config.seed)
        job.curves[k] = {
            "fraction": [round(f, 4) for f in fractions],
            "probability": [_r(v) for v in (sums[k] / len(x)).tolist()],
        }


def _sanity(job: _Job) -> None:
    """The randomisation check into the job's results and curves, or a note why not."""
    from satpipe.pipeline.methods import get_method

    config, attrs = job.config, job.attrs
    method = get_method(attrs["method"], **dict(attrs.get("params") or {}))
    if not method.needs_model:
        job.flags.append(
            f"method '{method.name}' uses no model: its maps cannot depend on the "
            "model's weights (by construction)"
        )
        job.skip("sanity", f"method '{method.name}' uses no model")
        return
    if job.model is None:
        job.skip("sanity", _no_model(attrs))
        return
    if not job.model_info["is_source"]:
        job.skip(
            "sanity",
            f"{config.model} is not the store's source checkpoint (sha256 "
            "differs): randomising another model says nothing about these maps",
        )
        return  # fmt: skip
    x, y = job.images()
    stored = job.stored_maps(job.subset)
    with progress("score sanity", 1 + len(cascade_blocks(job.model))) as advance:
        curve = randomisation_curve(
            job.model,
            method,
            x,
            y,
            stored,
            attrs["normalization"],
            config.seed,
            config.batch_size,
            on_step=advance,
            amp=bool((attrs.get("compute") or {}).get("amp")),
        )
    last = curve[-1][1].cpu().numpy()
    job.results["randomisation"] = _summary("randomisation", last, np.zeros_like(last), config.seed)
    job.curves["randomisation"] = [
        {"randomised": name, **_rounded(_mean_or_nan(rho.cpu().numpy(), config.seed))}
        for name, rho in curve
    ]
    value = job.results["randomisation"]["value"]
    if value is not None and value >= FLAG_AT:
        job.flags.append(
            f"randomisation: maps from the fully randomised model still correlate {value:.2f} "
            f"(>= {FLAG_AT}) with the stored ones: they barely depend on the model's weights"
        )


def _mean_or_nan(values: np.ndarray, seed: int) -> dict[str, float]:
    ok = values[np.isfinite(values)]
    if not ok.size:
        return {"value": math.nan, "low": math.nan, "high": math.nan}
    return mean_interval(ok, seed=seed).as_dict()


def _settings(job: _Job) -> dict[str, Any]:
    config = job.config
    return {
        "data": {"uri": job.data, "fingerprint": job.dataset.fingerprint},
        "localisation_target": job.target,
        "rows": len(job.view),
        "n": len(job.subset),
        "seed": config.seed,
        "steps": config.steps,
        "deletion_baseline": "black",
        "insertion_start": "blur",
        "blur_sigma": config.blur_sigma,
        "batch_size": config.batch_size,
        "flag_at": FLAG_AT,
        "model": job.model_info,
        "scores": list(config.scores) or "all",
    }
