"""`satpipe data ...`: build or import dataset stores."""

from __future__ import annotations

from satpipe.cli._common import config_command, sub_app
from satpipe.data.importers import ImportConfig
from satpipe.data.shapes import ShapesConfig, make_shapes

data_app = sub_app("data", "Build or import dataset stores.")
make_app = sub_app("make", "Generate a built-in dataset store (no download).", data_app)

config_command(
    make_app, "shapes", ShapesConfig, lambda given: make_shapes(**given),
    help="Coloured shapes on cluttered, textured backgrounds, with true masks and boxes.",
)  # fmt: skip
config_command(
    data_app, "import", ImportConfig, lambda given: ImportConfig(**given).run(),
    help="Import a real dataset from its official local layout into a dataset store.",
)  # fmt: skip
