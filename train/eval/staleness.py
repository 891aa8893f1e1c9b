"""Results that no longer describe their run: a results.json whose checkpoint has changed.

`satpipe eval` writes RUN/results.json for the checkpoint it evaluated and records that file's
sha256. Training on (`--resume`, a larger `--epochs`) or `--overwrite` replaces the checkpoint
and leaves the old results behind, describing weights that no longer exist. `mark_stale` puts
a `stale` record into such a results.json (and a first line into results.md), so every reader
sees it; `satpipe eval` and `satpipe reproduce` call it before they decide anything, the
trainer when it starts to change a run that has results.

    {"stale": {"reason": str, "checkpoint_sha256": str (the checkpoint now) | null,
               "marked": "2026-12-06T05:00:00Z"}}
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.data.metadata import bounded_json
from satpipe.train.checkpoint import file_sha256

RESULTS, MARKDOWN = "results.json", "results.md"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = bounded_json(path.read_bytes(), str(path))
    except (OSError, ValueError, SatpipeError):
        return None
    return found if isinstance(found, dict) else None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mark_stale(run_dir: str | os.PathLike, reason: str, sha256: str | None = None) -> bool:
    """Mark RUN/results.json (and results.md) stale for `reason`; True when it was marked now
    (False: no results there, or marked already)."""
    path = Path(run_dir) / RESULTS
    results = _read(path)
    if results is None or results.get("stale"):
        return False
    results["stale"] = {
        "reason": reason,
        "checkpoint_sha256": sha256,
        "marked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(path, json.dumps(results, indent=2) + "\n")
    md = Path(run_dir) / MARKDOWN
    with contextlib.suppress(OSError):
        if md.is_file():
            _write(md, f"**STALE: {reason}; run `satpipe eval` again.**\n\n" + md.read_text())
    return True


def stale_reason(run_dir: str | os.PathLike) -> str | None:
    """Why RUN/results.json no longer describes RUN/checkpoint.pt (None: it does, or there are
    no results): one read of the checkpoint file."""
    run_dir = Path(run_dir)
    results = _read(run_dir / RESULTS)
    if results is None:
        return None
    if results.get("stale"):
        return str(results["stale"].get("reason"))
    ckpt = run_dir / "checkpoint.pt"
    recorded = results.get("checkpoint_sha256")
    if not ckpt.is_file():
        return "its checkpoint.pt is gone"
    if recorded and recorded != file_sha256(ckpt):
        return f"checkpoint.pt changed since it was evaluated (sha256 {str(recorded)[:12]}…)"
    return None


def mark_if_stale(run_dir: str | os.PathLike) -> str | None:
    """Mark RUN/results.json stale when its checkpoint changed; returns the reason, if any."""
    reason = stale_reason(run_dir)
    if reason:
        ckpt = Path(run_dir) / "checkpoint.pt"
        mark_stale(run_dir, reason, file_sha256(ckpt) if ckpt.is_file() else None)
    return reason
