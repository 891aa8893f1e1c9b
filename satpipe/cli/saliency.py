"""`satpipe saliency` and `satpipe show saliency`."""

from __future__ import annotations

import inspect

import typer

from satpipe.cli._common import (
    StorageOption,
    app,
    config_command,
    friendly_errors,
    storage_options,
    sub_app,
)
from satpipe.core.options import parse_pairs
from satpipe.pipeline.config import SaliencyConfig

show_app = sub_app("show", "Pictures for a person to look at.")

# Shorthands for the most used method parameters (each is also --param key=value; the store
# records them under the parameter's name); their defaults are the method's own
# (`satpipe list methods --long`). (parameter, flag, type, help)
_SHORTHANDS = (
    ("samples", "--samples", int, "smoothgrad: noisy copies per image."),
    ("sigma", "--sigma", float, "smoothgrad: noise std, fraction of the [0, 1] range."),
    ("steps", "--steps", int, "ig: integration steps."),
    (
        "layer", "--cam-layer", str,
        "gradcam++ family: dotted module name of the Grad-CAM layer (default: the model's "
        "cam_layer, else the last spatial activation before pooling, found with a probe).",
    ),
)  # fmt: skip


def _shorthand(name: str, flag: str, kind: type, help: str) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
        default=typer.Option(None, flag, help=help),
    )  # fmt: skip


def _saliency(given):
    from satpipe.pipeline.runner import compute_saliency

    # --param values stay strings: the method converts them to its parameters' types.
    params = parse_pairs(given.pop("params_raw", None), "--param", value=str)
    params.update({k: given.pop(k) for k, *_ in _SHORTHANDS if k in given})
    return compute_saliency(SaliencyConfig(params=params, **given))


config_command(
    app, "saliency", SaliencyConfig, _saliency, exclude=("params",),
    extra=(
        inspect.Parameter(
            "params_raw", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
            default=typer.Option(
                None, "--param", "-p",
                help="Method parameter key=value (repeatable), e.g. baseline=blur.",
            ),
        ),
        *(_shorthand(*s) for s in _SHORTHANDS),
    ),
    help="Compute one saliency map per image into a saliency store (resumes an interrupted run).",
)  # fmt: skip


@show_app.command("saliency")
@friendly_errors
def show_saliency_cmd(
    saliency: list[str] = typer.Argument(..., help="Saliency stores to compare (paths or URLs)."),
    data: str | None = typer.Option(
        None, "--data", help="The dataset store they were made from (default: the recorded one)."
    ),
    out: str = typer.Option("gallery.png", "--out", help="PNG to write."),
    n: int = typer.Option(8, "--n", help="Number of images (rows)."),
    split: str = typer.Option("train", "--split", help="train or test."),
    percentile: float = typer.Option(
        99.0, "--percentile", help="Clip each map at this percentile of |s| (per image)."
    ),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Images | masks | one column per store, diverging colour map centred at 0."""
    from satpipe.pipeline.gallery import saliency_gallery

    options = storage_options(storage_option)
    path = saliency_gallery(
        saliency, data, out, n=n, split=split, storage_options=options, percentile=percentile
    )
    typer.echo(path)
