"""One writer per run directory: `RUN/train.lock`, held while `satpipe train` runs.

    with RunLock(run_dir):
        ...   # only this process writes checkpoints and metrics into run_dir

The lock itself (holder named, a killed holder's lock taken over, racing processes: one wins)
is satpipe.core.locks.WriterLock, which every store writer uses too.
"""

from __future__ import annotations

import os
from pathlib import Path

from satpipe.core.locks import WriterLock, held_by_other

LOCK_NAME = "train.lock"

__all__ = ["LOCK_NAME", "RunLock", "held_by_other", "run_lock_holder"]


class RunLock(WriterLock):
    """The lock of one run directory. Re-entrant it is not: a second RunLock on the same
    directory, even in the same process, is refused."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(Path(run_dir) / LOCK_NAME, run_dir, "run", remove_made_dir=True)


def run_lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """The record of the live process training `run_dir`, or None when none is."""
    return held_by_other(Path(run_dir) / LOCK_NAME)
