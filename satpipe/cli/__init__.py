"""The `satpipe` command line: parses arguments and calls one library function per command.

No logic lives here: every command calls the same function a user would import, so the CLI
and the tests exercise one code path. A SatpipeError becomes one line on stderr and exit 1.
One module per command group; each registers its commands on the shared `app`.
"""

from satpipe.cli import (  # noqa: F401  (imported to register their commands)
    bench,
    data,
    listing,
    model,
    reproduce,
    saliency,
    store,
    train,
)
from satpipe.cli._common import app

__all__ = ["app"]
