"""`compute_saliency(model, data, out, method, ...)`: the saliency stage from Python, with a
model in memory or a checkpoint path (what `satpipe saliency` does from the command line).

    import satpipe as sp
    sp.compute_saliency(net, "d.zarr", "s.zarr", "smoothgrad", samples=20, device="cuda")

A model in memory must take (B, C, H, W) images in [0, 1] (it normalises inside, as satpipe's
models do) and return (B, classes) logits; its store records the module's class and the sha256
of its state_dict (`source_model.module_class`, `source_model.state_dict_sha256`) where a
checkpoint's store records the checkpoint file's sha256. The same weights give the same maps
either way. A copy of the model runs; the caller's module is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.pipeline.config import SaliencyConfig
from satpipe.pipeline.runner import compute_saliency as run_config


def compute_saliency(
    model: nn.Module | str | os.PathLike | None,
    data: str,
    out: str,
    method: str,
    *,
    splits: Sequence[str] = ("train",),
    batch_size: int | None = None,
    device: str | None = None,
    normalization: str = "signed-maxabs",
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    **params: Any,
) -> str:
    """Write one map per image of `splits` of the dataset store `data` into the saliency
    store `out` (path or fsspec URL); returns `out` once it is marked complete.

    model: an nn.Module ([0, 1] input, (B, classes) logits), a satpipe checkpoint path, or
        None for the methods that need no model (mask, bbox, random).
    method, params: a saliency method and its parameters (`satpipe list methods --long`).
    batch_size: images per method call (default 64); device: "cpu", "cuda", "cuda:1" or
        None for auto. An interrupted run resumes when called again with the same arguments.
    """
    module = model if isinstance(model, nn.Module) else None
    if model is not None and module is None and not isinstance(model, str | os.PathLike):
        raise SatpipeError(
            f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}"
        )
    config = SaliencyConfig(
        method=method,
        data=str(data),
        out=str(out),
        model=None if model is None or module is not None else str(model),
        params=dict(params),
        splits=tuple(splits),
        normalization=normalization,
        seed=seed,
        batch_size=64 if batch_size is None else batch_size,
        device="auto" if device is None else str(device),
        overwrite=overwrite,
        storage_options=dict(storage_options or {}),
    )
    return run_config(config, module=module)
