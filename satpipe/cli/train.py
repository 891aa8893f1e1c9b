"""`satpipe train` and `satpipe eval`."""

from __future__ import annotations

import typer

from satpipe.cli._common import app, config_command
from satpipe.train.config import EvalConfig, TrainConfig


def _train(given):
    from satpipe.train.config import train_config
    from satpipe.train.trainer import train

    return train(train_config(given))


def _eval(given):
    from satpipe.train.eval.evaluate import evaluate, masking_warning, results_markdown

    results = evaluate(**given)
    warning = masking_warning(results)
    if warning:  # strict evaluation raised already; this is --no-strict
        typer.echo(f"satpipe: warning: {warning}", err=True)
    return results_markdown(results)


config_command(
    app, "train", TrainConfig, _train,
    help="Train one variant; writes RUN/config.json, RUN/checkpoint.pt and RUN/metrics.jsonl.",
)  # fmt: skip
config_command(
    app, "eval", EvalConfig, _eval,
    help="Accuracy under any attacks (fgsm, pgd, autoattack, ...) per eps, the per-image worst "
    "case, 95% intervals and gradient-masking checks -> results.json/.md, correct.npz, "
    "robustbench.json.",
)  # fmt: skip
