"""`satpipe model info CKPT`: what a checkpoint holds and what the saliency methods will see in
it at a given image size (its logits, the Grad-CAM layer they would use, whether Guided
Backprop applies), so a teacher can be checked before a long saliency run."""

from __future__ import annotations

import os

import torch

from satpipe.core.errors import SatpipeError
from satpipe.pipeline.methods.gradcam_pp import cam_layer_name
from satpipe.pipeline.methods.layers import guided_plan
from satpipe.train.models import input_norm, load_model, probe_model


def _values(t: torch.Tensor) -> str:
    return ",".join(f"{v:.4g}" for v in t.flatten().tolist())


def model_info(path: str | os.PathLike, size: int = 32) -> str:
    """Lines describing checkpoint `path` and its model at size x size inputs."""
    if size < 1:
        raise SatpipeError(f"--size must be >= 1, got {size}")
    model, state = load_model(path)
    record = state["model"]
    c = int(record["in_channels"])
    norm = input_norm(model)
    lines = [
        f"{path}: {record['arch']}, {record['num_classes']} classes, {c} input channels",
        f"  input normalisation: mean {_values(norm.mean)} std {_values(norm.std)}",
        f"  checkpoint sha256: {state['checkpoint_sha256']}",
    ]
    if record.get("weights_sha256"):
        lines.append(
            f"  imported from {record.get('weights_file')} (sha256 {record['weights_sha256']})"
        )
    if state.get("variant") is not None:
        lines.append(f"  trained: {state['variant']}, epoch {int(state.get('epoch', -1)) + 1}")
    shape = (c, size, size)
    lines.append(f"  at {c}x{size}x{size}: {probe_model(model, shape, str(path))} logits")
    try:
        layer = cam_layer_name(model, None, shape)
        lines.append(f"  Grad-CAM layer: {layer}")
    except SatpipeError as exc:
        lines.append(f"  Grad-CAM: {exc}")
    for mode in ("refuse", "guide"):
        try:
            plan = guided_plan(model, shape, mode)
        except SatpipeError as exc:
            if mode == "guide":
                lines.append(f"  Guided Backprop: refused ({exc})")
            continue
        extra = f" + {len(plan.others)} other activations guided" if plan.others else ""
        hint = " (needs --param other_activations=guide)" if mode == "guide" else ""
        lines.append(f"  Guided Backprop: {len(plan.relus)} ReLU modules{extra}{hint}")
        break
    return "\n".join(lines)
