"""The layers of DESIGN.md, read from the source: a module that imports across a forbidden
line fails here (imports inside functions count too: a lazy import is still a dependency).

    data      -> nothing of satpipe's stages
    pipeline  -> data, and the public model API satpipe.train.models
    train     -> data
    core      -> core only (errors, locks, progress, registry, options, seeding, device, ...)
    satpipe/* (cli, reproduce, presets, bench) -> anything
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"data": "satpipe.data", "pipeline": "satpipe.pipeline", "train": "satpipe.train"}
CORE = {
    "satpipe",
    "satpipe.core.errors",
    "satpipe.core.progress",
    "satpipe.core.registry",
    "satpipe.core.options",
    "satpipe.core.seeding",
    "satpipe.core.device",
    "satpipe.core.defaults",
    "satpipe.core.precision",
    "satpipe.core.cluster",
    "satpipe.core.stats",
    "satpipe.core.locks",
}
ALLOWED = {
    "satpipe.data": {"satpipe.data"},
    "satpipe.pipeline": {"satpipe.pipeline", "satpipe.data", "satpipe.train.models"},
    "satpipe.train": {"satpipe.train", "satpipe.data"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in STAGES:
        parts = STAGES[parts[0]].split(".") + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def satpipe_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported satpipe module) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "satpipe"]


def allowed(importer: str, imported: str) -> bool:
    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    if any(within(imported, c) and (c != "satpipe" or imported == c) for c in CORE):
        return True
    if imported == "satpipe.__version__":
        return True
    for stage, targets in ALLOWED.items():
        if within(importer, stage):
            return any(within(imported, t) for t in targets)
    # Core may use core only (the check above); satpipe/* top level may use all three stages.
    return importer not in CORE


def sources() -> list[Path]:
    files = []
    for folder in ("satpipe", *STAGES):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_no_module_imports_across_a_forbidden_line():
    violations = []
    for path in sources():
        importer = module_name(path)
        for line, imported in satpipe_imports(path):
            if not allowed(importer, imported):
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_the_layer_check_itself_catches_violations():
    assert not allowed("satpipe.data.store", "satpipe.train.models")
    assert not allowed("satpipe.train.trainer", "satpipe.pipeline.methods")
    assert not allowed("satpipe.pipeline.runner", "satpipe.train.checkpoint")
    assert not allowed("satpipe.core.stats", "satpipe.data.store")
    assert allowed("satpipe.pipeline.runner", "satpipe.train.models.load_model")
    assert allowed("satpipe.reproduce", "satpipe.pipeline.runner")
    assert allowed("satpipe.data.store", "satpipe.core.errors.SatpipeError")
    assert module_name(ROOT / "data" / "importers" / "__init__.py") == "satpipe.data.importers"
