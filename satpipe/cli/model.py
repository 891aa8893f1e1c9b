"""`satpipe model ...`: bring your own trained model."""

from __future__ import annotations

import typer

from satpipe.cli._common import config_command, friendly_errors, sub_app
from satpipe.train.config import ModelImportConfig

model_app = sub_app("model", "Bring your own trained model (teacher) into satpipe.")


def _import(given):
    from satpipe.train.model_import import import_model

    return import_model(ModelImportConfig(**given))


config_command(
    model_app, "import", ModelImportConfig, _import,
    help="Turn a state_dict file (e.g. a torchvision ResNet-50 you trained) into a satpipe "
    "checkpoint that `satpipe saliency --model` and `satpipe eval` take.",
)  # fmt: skip


@model_app.command("info")
@friendly_errors
def info_cmd(
    checkpoint: str = typer.Argument(..., help="A satpipe checkpoint (trained or imported)."),
    size: int = typer.Option(32, "--size", help="Image side the saliency methods will see."),
) -> None:
    """Arch, classes, input normalisation, provenance, and what the saliency methods see."""
    from satpipe.pipeline.model_info import model_info

    typer.echo(model_info(checkpoint, size))
