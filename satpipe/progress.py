"""Rich progress bars shared by every long-running command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


def progress_enabled() -> bool:
    # Bars only where a person is watching; logs and CI get none.
    return _console.is_terminal and not os.environ.get("SATPIPE_NO_PROGRESS")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[callable]:
    """Yield `advance(n=1)`; draws a bar on stderr when it is a terminal."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        disable=not progress_enabled(),
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
