"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded weights_only.

Layout (format 1)::

    {"satpipe": {"kind": "checkpoint", "format": 1, "version": str},
     "model": {"arch": str, "num_classes": int, "in_channels": int,
               "mean": [float] * C, "std": [float] * C, "state_dict": {...},
               "weights_sha256": str, "weights_file": str},   # the last two: imported teachers
     "variant": str, "epoch": int (last finished, 0-based),
     "config": dict, "optimizer": dict, "scheduler": dict | None, "rng": dict, "metrics": dict}

Only "satpipe" and "model" are required; the trainer adds the rest. The header carries
"digest": `state_digest` of everything else, computed as the file is written and checked on
every load (a flipped byte that `torch.load` accepts changes a weight, and the digest); a
checkpoint whose digest differs, or whose model weights hold NaN/Inf, is refused in one line.
Checkpoints written before digests existed load with a note. `arch` is the full model
name (`resnet10`, `torchvision:resnet50`, `pkg.mod:factory`); `mean`/`std` are the input
normalisation inside the model (checkpoints written before they were recorded have only arch,
num_classes, in_channels and state_dict, and still load). Rebuilding the model
from a checkpoint is `satpipe.train.models.load_model` (this module knows no architectures).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satpipe.core.errors import SatpipeError, note, quote
from satpipe.core.version import __version__

FORMAT = 1


def model_record(
    model: nn.Module, num_classes: int, in_channels: int, **extra: Any
) -> dict[str, Any]:
    """The "model" entry: enough to rebuild the network without any other file. `extra`
    (plain values) is recorded too, e.g. weights_sha256 of an imported teacher."""
    model = getattr(model, "module", model)  # unwrap DDP
    record: dict[str, Any] = {
        "arch": model.arch,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
    }
    norm = getattr(model, "satpipe_normalize", None) or getattr(model, "normalize", None)
    if norm is not None:
        record["mean"] = [float(v) for v in norm.mean.flatten().tolist()]
        record["std"] = [float(v) for v in norm.std.flatten().tolist()]
    record.update(extra)
    record["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return record


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` atomically: a crash leaves the old file or the new one, never half of one.

    A failed write (disk full, read-only or refused target) is a one-line SatpipeError naming
    the file; the previous checkpoint at `path`, if any, is left as it was."""
    path = Path(path)
    header = {"kind": "checkpoint", "format": FORMAT, "version": __version__}
    header["digest"] = state_digest(state)
    payload = {"satpipe": header, **state}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _write_failure(exc)
        if cause is not None:
            kept = "; the previous checkpoint is unchanged" if path.is_file() else ""
            raise SatpipeError(f"{path}: cannot write checkpoint ({_reason(cause)}){kept}") from exc
        raise


def _write_failure(exc: BaseException) -> BaseException | None:
    """The OS error behind a failed write, or None when `exc` is not one. torch.save does not
    always let the OSError through: when the disk fills part-way through its stream, closing
    its zip writer raises a RuntimeError ("unexpected pos ...") whose context is the OSError;
    and it reports some failed writes as "PytorchStreamWriter failed writing file"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, RuntimeError) and "PytorchStreamWriter failed" in str(exc):
        return exc
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load with `weights_only=True` (no code runs) and check it is a satpipe checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SatpipeError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise SatpipeError(f"{path}: not a satpipe checkpoint ({quote(exc)})") from exc
    except Exception as exc:  # a damaged zip or pickle trips torch's reader anywhere
        raise SatpipeError(f"{path}: damaged checkpoint ({quote(exc)})") from exc
    meta = state.get("satpipe") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != "checkpoint":
        raise SatpipeError(f"{path}: not a satpipe checkpoint (no 'satpipe' header)")
    if meta.get("format") != FORMAT:
        raise SatpipeError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    if "model" not in state:
        raise SatpipeError(f"{path}: checkpoint has no model")
    check_digest(path, state)
    record = state["model"]
    if isinstance(record, dict) and isinstance(record.get("state_dict"), dict):
        check_finite(record["state_dict"], str(path))
    return state


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` loads (weights_only) as something with a satpipe checkpoint header,
    damaged or not: what `--overwrite` may replace."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all
        return False
    meta = state.get("satpipe") if isinstance(state, dict) else None
    return isinstance(meta, dict) and meta.get("kind") == "checkpoint"


def state_digest(state: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint's contents (everything but its "satpipe" header): every tensor's
    dtype, shape and bytes and every plain value, dict keys in sorted order, so the digest does
    not depend on how the file was laid out, only on what it holds."""
    h = hashlib.sha256(b"satpipe-checkpoint-v1\n")
    _feed(h, {k: v for k, v in state.items() if k != "satpipe"})
    return "sha256:" + h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"N{a.dtype.str}{a.shape};".encode())
        h.update(repr(a.tolist()).encode() if a.dtype.hasobject else a.view(np.uint8).reshape(-1))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def check_digest(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose contents no longer match the digest written with them."""
    recorded = (state.get("satpipe") or {}).get("digest")
    if recorded is None:
        note(
            f"{path}: written before checkpoints carried a digest; its contents cannot be "
            "checked against what was saved"
        )
        return
    found = state_digest(state)
    if found != recorded:
        raise SatpipeError(
            f"{path}: damaged checkpoint: its contents hash to {found[7:19]}…, not the digest "
            f"{str(recorded)[7:19]}… written with it (a changed byte?); use an intact copy"
        )


def check_finite(state_dict: Mapping[str, Any], where: str) -> None:
    """Refuse weights that hold NaN or Inf, naming the first such tensor and how many values."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            # One reduction: NaN/Inf propagate into the sum (an overflowing sum of finite
            # weights only costs the exact count below).
            if bool(torch.isfinite(value.sum(dtype=torch.float64))):
                continue
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise SatpipeError(
                    f"{where}: weight {name} holds {bad} NaN/Inf value(s) of {value.numel()}; "
                    "a model with non-finite weights is not used"
                )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
