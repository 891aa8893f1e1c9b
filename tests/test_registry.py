"""The registry type, and that every listing (CLI, docs) comes from the registries."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.cli.listing import load_all
from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def test_registry_refuses_duplicates_and_names_the_valid_ones():
    reg = Registry("widget", plural="test-widgets")

    @reg.register("a")
    def a():
        """The first widget.

        More text."""

    reg.register("b", object(), summary="the second")
    assert reg.names() == ["a", "b"] and reg.get("a") is a and "b" in reg
    assert reg.summary("a") == "The first widget." and reg.summary("b") == "the second"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", object())
    with pytest.raises(SatpipeError, match="unknown widget 'c'; choose one of a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="exists already"):
        Registry("widget", plural="test-widgets")


def test_satpipe_list_and_the_docs_come_from_the_registries():
    registries = load_all()
    out = CliRunner().invoke(app, ["list"]).output
    for plural, registry in registries.items():
        assert f"{plural}: {', '.join(registry.names())}" in out
    markdown = CliRunner().invoke(app, ["list", "--markdown"]).output
    assert markdown.strip() in DOCS.read_text(), "docs/reference.md is stale: regenerate it"
    bad = CliRunner().invoke(app, ["list", "nothing"])
    assert bad.exit_code == 1 and "choose one of all, models" in bad.output


def test_cli_choices_and_errors_come_from_the_registries():
    helptext = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    from satpipe.train.variants import VARIANTS

    assert "|".join(VARIANTS.names()) in helptext
    bad = CliRunner().invoke(app, ["train", "--variant", "nope", "--data", "d", "--out", "o"])
    assert bad.exit_code == 1 and "unknown variant 'nope'; choose one of original" in bad.output
