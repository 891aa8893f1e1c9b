"""Teacher import: a state_dict someone trained elsewhere -> a satpipe checkpoint.

    satpipe model import resnet50.pth --model torchvision:resnet50 --num-classes 100 \
        --out teacher.pt

The weights are loaded with `torch.load(weights_only=True)` (or safetensors), so a tampered
file cannot run code; they must fit the architecture exactly (every key, every shape), apart
from BatchNorm's `num_batches_tracked` counters, which old files lack, and satpipe's input
normalisation, which comes from --input-mean/--input-std. The checkpoint's model record keeps
the original file's sha256 and name; `load_model` then rebuilds the teacher from the checkpoint
alone, and its logits for x in [0, 1] are the original network's for (x - mean) / std.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from satpipe.core.errors import SatpipeError, quote
from satpipe.data.outputs import prepare_file_output
from satpipe.train.checkpoint import (
    check_finite,
    file_sha256,
    is_checkpoint,
    model_record,
    save_checkpoint,
)
from satpipe.train.config import ModelImportConfig
from satpipe.train.models import create_model, input_norm

# Where training scripts usually keep the weights inside a checkpoint dict, in search order.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
SHOWN = 3  # keys named per kind of mismatch


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> tuple[dict, str | None]:
    """(state_dict, the key it was found under or None) from a weights file."""
    path = Path(path)
    if not path.is_file():
        raise SatpipeError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SatpipeError(
                f"{path}: reading .safetensors needs: pip install safetensors"
            ) from None
        try:
            return dict(load_file(str(path), device="cpu")), None
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise SatpipeError(f"{path}: not a safetensors file ({quote(exc)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the refused class ("Unsupported global: GLOBAL pkg.Cls"); say which.
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if match is None:
            raise SatpipeError(f"{path}: not a torch weights file (cannot unpickle it)") from None
        raise SatpipeError(
            f"{path}: holds a pickled {match.group(1)}, which loading with weights_only=True "
            "refuses to run; save model.state_dict() instead of the model"
        ) from None
    except (RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise SatpipeError(f"{path}: not a torch weights file ({quote(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("satpipe"), dict):
        raise SatpipeError(f"{path}: is a satpipe checkpoint already; use it as it is")
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else "none"
            raise SatpipeError(f"{path}: no entry '{key}' (entries: {found})")
        if not _is_state_dict(obj[key]):
            raise SatpipeError(f"{path}: entry '{key}' is not a state_dict of tensors")
        return obj[key], key
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for k in STATE_KEYS:
            if _is_state_dict(obj.get(k)):
                return obj[k], k
        found = ", ".join(map(str, list(obj)[:8]))
        raise SatpipeError(f"{path}: no state_dict found (entries: {found}); name one with --key")
    raise SatpipeError(f"{path}: holds a {type(obj).__name__}, not a state_dict")


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove `module.` / `_orig_mod.` when every key has it (repeatedly: DDP of a compiled
    model); returns the new dict and the prefixes removed."""
    removed = []
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                removed.append(prefix)
                changed = True
    return state, removed


def _mismatch(path: Path, what: str, missing, unexpected, shapes) -> SatpipeError:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
            parts.append(f"{label} {', '.join(keys[:SHOWN])}{more}")
    return SatpipeError(f"{path}: does not fit {what}: {'; '.join(parts)}")


def fit_weights(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """Load `state` into `model`, all keys and shapes exact (see the module docstring)."""
    target = model.state_dict()
    norm_keys = {k for k in target if k.split(".", 1)[0] in ("satpipe_normalize", "normalize")}
    optional = norm_keys | {k for k in target if k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in state and k not in optional]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        raise _mismatch(path, what, missing, unexpected, shapes)
    model.load_state_dict({**target, **state})


def import_model(config: ModelImportConfig) -> str:
    """Write the satpipe checkpoint `config.out` for the weights `config.weights`; returns a
    one-line summary naming it."""
    path, out = Path(config.weights), Path(config.out)
    prepare_file_output(out, config.overwrite, is_checkpoint, "a satpipe checkpoint", (path,))
    state, key = read_state_dict(path, config.key)
    state, stripped = strip_prefixes(state)
    ignored = [k for k in state if any(k.startswith(p) for p in config.ignore)]
    state = {k: v for k, v in state.items() if k not in ignored}
    check_finite(state, str(path))
    what = f"{config.model} ({config.num_classes} classes, {config.in_channels} channels)"
    model = create_model(
        config.model, config.num_classes, config.in_channels, config.input_mean, config.input_std
    )
    fit_weights(model, state, path, what)
    sha256 = file_sha256(path)
    record = model_record(
        model, config.num_classes, config.in_channels,
        weights_sha256=sha256, weights_file=path.name,
    )  # fmt: skip
    save_checkpoint(
        out,
        {
            "model": record,
            "variant": None,
            "imported": {
                "weights_file": str(path.resolve()),
                "weights_sha256": sha256,
                "key": key,
                "prefixes_stripped": stripped,
                "keys_ignored": len(ignored),
                "tensors": len(state),
            },
        },
    )
    norm = input_norm(model)
    return (
        f"{out}: {config.model}, {config.num_classes} classes, {config.in_channels} channels, "
        f"{len(state)} tensors from {path.name} (sha256 {sha256[:12]}…"
        + (f", {'+'.join(stripped)} stripped" if stripped else "")
        + f"); input mean {_fmt(norm.mean)} std {_fmt(norm.std)}"
    )


def _fmt(t: torch.Tensor) -> str:
    return ",".join(f"{v:.4g}" for v in t.flatten().tolist())
