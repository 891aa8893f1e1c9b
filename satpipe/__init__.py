"""satpipe: Saliency-based Adversarial Training made cheap, fast and shareable.

Two stages joined only by files: `satpipe.pipeline` writes saliency maps into zarr stores,
`satpipe.train` streams (image, saliency, label) from them and trains the SAT variants.

The public API, for training loops and notebooks of your own (imported on first use, so
`import satpipe` and `satpipe --help` load no torch)::

    import satpipe as sp
    ds = sp.SaliencyDataset("d.zarr", "s.zarr", split="train", transform=None)
    image, smap, label = ds[i]          # (C,H,W) f32 [0,1], (Cs,H,W) f32 [-1,1], int64
    sp.compute_saliency(model, "d.zarr", "s.zarr", "smoothgrad", samples=20)
    alpha = sp.alpha_at("progress", 0.6, epoch, step, steps_per_epoch, epochs)  # noise -> maps
    x_sat = sp.sat_perturb(x, s, 8 / 255, alpha)
    r = sp.robust_accuracy(model, x, y, attack="pgd", eps=8 / 255)  # .accuracy .interval
    sp.get_method("ig", steps=32); sp.create_model("resnet10", 10); sp.load_model("m.pt")
    sp.open_dataset("d.zarr").attrs; sp.open_saliency("s.zarr").attrs
    loader = sp.make_loader("d.zarr", "train", "s.zarr", sp.LoaderOptions(batch_size=256))
"""

from __future__ import annotations

import importlib
from typing import Any

from satpipe.core.version import __version__

# name -> module that defines it (imported on first access: PEP 562)
_API = {
    "SaliencyDataset": "satpipe.data.dataset",
    "compute_saliency": "satpipe.pipeline.compute",
    "sat_perturb": "satpipe.train.perturb",
    "alpha_schedule": "satpipe.train.perturb",
    "alpha_at": "satpipe.train.alpha_schedules",
    "ALPHA_SCHEDULES": "satpipe.train.alpha_schedules",
    "uniform_noise": "satpipe.train.perturb",
    "robust_accuracy": "satpipe.train.eval.robust",
    "RobustAccuracy": "satpipe.train.eval.robust",
    "get_method": "satpipe.pipeline.methods",
    "create_model": "satpipe.train.models",
    "load_model": "satpipe.train.models",
    "open_dataset": "satpipe.data.dataset_store",
    "open_saliency": "satpipe.data.saliency_store",
    "make_loader": "satpipe.data.loader",
    "LoaderOptions": "satpipe.data.loader",
    "SatpipeError": "satpipe.core.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'satpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
