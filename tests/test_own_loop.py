"""The "In your own training loop" code of README.md and docs/own-loop.md, run as written on
a tiny store (only the sizes are scaled down), so the docs cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```python\n(.*?)```", re.S)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensor ops (the attacks' especially) crawl with 2 intra-op threads on a loaded
    # 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blocks(path: Path, heading: str | None = None) -> list[str]:
    text = path.read_text()
    if heading is not None:
        text = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return FENCE.findall(text)


def _tiny(code: str, data: str, maps: str) -> str:
    """The docs' code at test size: tiny stores, one epoch, small models and batches."""
    swaps = {
        '"stores/cifar10.zarr"': repr(data),
        '"stores/cifar10-smoothgrad.zarr"': repr(maps),
        "EPOCHS, EPS = 100,": "EPOCHS, EPS = 1,",
        "range(2)": "range(1)",
        '"resnet34"': '"smallcnn"',
        '"resnet10"': '"smallcnn"',
        "batch_size=128": "batch_size=16",
        "samples=10": "samples=2",
        "num_classes=10": "num_classes=4",
        "RandomCrop(32,": "RandomCrop(16,",
    }
    for old, new in swaps.items():
        code = code.replace(old, new)
    return code


@pytest.fixture
def stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything the code writes lands here
    data = write_tiny_dataset(tmp_path / "d.zarr", n_train=32, n_test=16, size=16)
    return data, str(tmp_path / "s.zarr")


def _run_page(data: str, maps: str, with_lightning: bool) -> dict:
    blocks = _blocks(ROOT / "docs" / "own-loop.md")
    plain = [b for b in blocks if "import lightning" not in b]
    assert len(plain) == 2 and len(blocks) == 3
    if with_lightning:
        plain.append(next(b for b in blocks if "import lightning" in b))
    scope: dict = {}
    for block in plain:
        exec(compile(_tiny(block, data, maps), "docs/own-loop.md", "exec"), scope)
    return scope


def test_own_loop_page_runs(stores):
    scope = _run_page(*stores, with_lightning=False)
    assert scope["r"].n == 16 and 0 <= scope["r"].accuracy <= 1
    assert scope["train"].saliency == stores[1]
    assert scope["train"].saliency_attrs["method"] == "smoothgrad"


def test_own_loop_lightning_runs(stores):
    pytest.importorskip("lightning")  # the `lightning` extra (installed by `make venv`)
    scope = _run_page(*stores, with_lightning=True)
    assert scope["trainer"].current_epoch == 1 and scope["trainer"].global_step == 2


def test_readme_section_runs(stores):
    data, maps = stores
    from satpipe.pipeline.compute import compute_saliency

    compute_saliency(None, data, maps, "mask")
    (block,) = _blocks(ROOT / "README.md", "## In your own training loop")
    exec(compile(_tiny(block, data, maps), "README.md", "exec"), {})
