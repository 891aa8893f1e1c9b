"""Check the layer contract in pyproject.toml ([tool.importlinter]) with import-linter.

import-linter (through grimp) finds a package's modules by walking its folder, but data/,
train/ and pipeline/ live beside satpipe/ and join it only through pyproject's package-dir
mapping. So this lays the installed tree out as symlinks in a temporary folder, puts that
first on PYTHONPATH and runs `lint-imports` on it: the contract sees every module a user's
`import satpipe...` sees. Exit status is import-linter's (0: every contract kept).

    python scripts/lint_imports.py        # what `make lint` and tests/test_layers.py run
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def installed_tree(into: Path) -> Path:
    """`into`/satpipe laid out as installed: satpipe/'s files plus each mapped stage folder."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = into / "satpipe"
    package.mkdir()
    for entry in (ROOT / "satpipe").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapping["package-dir"].items():
        parts = name.split(".")
        if len(parts) == 2:  # satpipe.data -> data/ (deeper mappings come with their parent)
            (package / parts[1]).symlink_to(ROOT / folder)
    return package


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        installed_tree(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]))
        run = (
            "import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, "
            "no_cache=True, no_logo=True))"
        )
        return subprocess.run([sys.executable, "-c", run], env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
