"""`satpipe store ...`: inspect, verify and publish stores."""

from __future__ import annotations

import json

import typer

from satpipe.cli._common import (
    StorageOption,
    config_command,
    friendly_errors,
    storage_options,
    sub_app,
)
from satpipe.core.errors import printable
from satpipe.pipeline.config import ScoreConfig

store_app = sub_app("store", "Inspect, verify, score and publish stores.")


@store_app.command("info")
@friendly_errors
def store_info_cmd(
    uri: str = typer.Argument(..., help="Store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Kind, arrays (shape, dtype, chunks, shards), classes, provenance and completeness."""
    from satpipe.data.inspect import format_info, store_info

    info = store_info(uri, storage_options(storage_option))
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@store_app.command("verify")
@friendly_errors
def store_verify_cmd(
    uri: str = typer.Argument(..., help="Store path or URL."),
    data: str | None = typer.Option(
        None, "--data", help="Dataset store a saliency store must belong to (fingerprint)."
    ),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """Read every chunk and check the store's contract; one line per problem, exit 1 if any."""
    from satpipe.data.inspect import verify_store

    problems = verify_store(uri, data=data, storage_options=storage_options(storage_option))
    for problem in problems:
        typer.echo(printable(f"satpipe: verify: {uri}: {problem}"), err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(printable(f"{uri}: ok"))


@store_app.command("publish")
@friendly_errors
def store_publish_cmd(
    src: str = typer.Argument(..., help="Complete store to publish: path or URL."),
    dst: str = typer.Argument(..., help="Destination path or URL, e.g. s3://bucket/name.zarr."),
    storage_option: list[str] | None = StorageOption,
    dst_storage_option: list[str] | None = typer.Option(
        None,
        "--dst-storage-option",
        help="fsspec option key=value for DST only (repeatable); default: the --storage-option.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DST."),
) -> None:
    """Verify SRC, copy it to DST, and mark DST complete last (readers never see half a store);
    then write DST's card (README.md, and gallery.png for saliency stores) at its root."""
    from satpipe.data.publish import publish_store
    from satpipe.pipeline.card import write_card

    src_options = storage_options(storage_option)
    dst_options = storage_options(dst_storage_option) if dst_storage_option else src_options
    published = publish_store(src, dst, src_options, dst_options, overwrite=overwrite)
    write_card(published, dst_options)
    typer.echo(published)


@store_app.command("ls")
@friendly_errors
def store_ls_cmd(
    prefix: str = typer.Argument(..., help="Folder or URL prefix, e.g. s3://bucket/stores."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    storage_option: list[str] | None = StorageOption,
) -> None:
    """The stores under PREFIX, one line each: name, kind, method, source model, rows,
    complete, headline quality (metadata only; `store verify` checks the data)."""
    from satpipe.data.shelf import format_listing, list_stores

    records = list_stores(prefix, storage_options(storage_option))
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in r.items() if k != "attrs"} for r in records],
                              indent=2))  # fmt: skip
    elif records:
        typer.echo(format_listing(records))
    else:
        typer.echo(f"{prefix}: no satpipe stores here")


def _score(given):
    from satpipe.data.quality_text import quality_lines
    from satpipe.pipeline.quality import score_store

    config = ScoreConfig(**given)
    quality = score_store(config)
    if config.write:
        from satpipe.pipeline.card import write_card

        write_card(config.saliency, config.storage_options)
    if config.as_json:
        return json.dumps(quality, indent=2)
    where = "recorded in its provenance" if config.write else "not recorded (--no-write)"
    return "\n".join([f"{config.saliency}: {where}", *quality_lines(quality, indent="")])


config_command(
    store_app, "score", ScoreConfig, _score,
    help="Quality scores of a saliency store (localisation, faithfulness, sanity), each with "
    "its chance value; recorded in the store's provenance (`quality`), maps untouched.",
)  # fmt: skip
