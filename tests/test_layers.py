"""The layers of DESIGN.md "Layout", written once as the import-linter contract in pyproject.toml
([tool.importlinter]) and checked here as `make lint` checks it (scripts/lint_imports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = ROOT / "scripts" / "lint_imports.py"


def lint() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LINT)], capture_output=True, text=True, timeout=120)


def test_every_module_keeps_the_layer_contract():
    result = lint()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """A data module importing the trainer breaks the contract (checked on a copy)."""
    import shutil

    copy = tmp_path / "repo"
    for name in ("satpipe", "data", "train", "pipeline", "scripts"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "data" / "shapes.py").open("a") as f:
        f.write("\nfrom satpipe.train import trainer  # noqa: E402,F401\n")
    result = subprocess.run(
        [sys.executable, str(copy / "scripts" / "lint_imports.py")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "satpipe.data.shapes -> satpipe.train.trainer" in result.stdout
