"""`satpipe reproduce`: a preset's whole grid and its report."""

from __future__ import annotations

from satpipe.cli._common import app, config_command
from satpipe.reproduce import ReproduceConfig


def _reproduce(given):
    from satpipe.reproduce import reproduce

    folder = reproduce(ReproduceConfig(**given))
    frontier = ", frontier.png, frontier.md" if (folder / "frontier.md").is_file() else ""
    return f"report: {folder}/table.md, robustness.png, saliency.png, time.md, claims.md{frontier}"


config_command(
    app, "reproduce", ReproduceConfig, _reproduce,
    help="Run a preset's whole grid (data, sources, saliency, variants x seeds, eval) and "
    "report. Every step is skipped when its output is complete: rerunning resumes.",
)  # fmt: skip
