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
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)
# Bars open right now: a bar opened inside another (an epoch inside `satpipe reproduce`'s grid
# bar) is transient, so the outer bar stays on screen with only the current inner ones below.
_open = 0


def progress_enabled() -> bool:
    # Bars only where a person is watching; logs and CI get none.
    return _console.is_terminal and not os.environ.get("SATPIPE_NO_PROGRESS")


@contextmanager
def _bar(*columns) -> Iterator[Progress]:
    """A started Progress on stderr: description, bar, then `columns`; drawn only where a person
    is watching, and transient when opened inside another bar."""
    global _open
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *columns,
        console=_console,
        disable=not progress_enabled(),
        transient=_open > 0,
    )
    _open += 1
    try:
        with bar:
            yield bar
    finally:
        _open -= 1


@contextmanager
def progress(description: str, total: int | None) -> Iterator[callable]:
    """Yield `advance(n=1)`; draws a bar on stderr when it is a terminal (a bar opened inside
    another one disappears when it finishes)."""
    with _bar(MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


class GridBar:
    """What `grid_progress` yields: `advance(work)` when a step of that much work is done,
    `describe(text)` to say what runs now."""

    def __init__(self, bar: Progress, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, work: float) -> None:
        self._bar.advance(self._task, work)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)


@contextmanager
def grid_progress(description: str, total_work: float) -> Iterator[GridBar]:
    """One bar over many steps of unequal cost (a whole `satpipe reproduce` grid): the bar
    fills by estimated work, not by step count, so its time remaining is an ETA for the grid.
    Bars the steps open themselves show below it while they run."""
    columns = (TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with _bar(*columns) as bar:
        yield GridBar(bar, bar.add_task(description, total=max(total_work, 1e-9)))
