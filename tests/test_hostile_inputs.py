"""Hostile cases of what satpipe reads: crafted store metadata, labels out of range, damaged
checkpoints, non-finite weights, a run still training, list options, control characters.
Every case ends in one line and exit != 0 (or does the right thing)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.cli._common import config_options
from satpipe.core.errors import SatpipeError
from satpipe.data.dataset_store import DatasetWriter, open_dataset
from satpipe.data.inspect import store_info, verify_store
from satpipe.data.loader import make_loader
from satpipe.data.metadata import json_depth
from satpipe.data.saliency_store import open_saliency
from satpipe.pipeline.config import SaliencyConfig
from satpipe.pipeline.runner import compute_saliency
from satpipe.train.checkpoint import load_checkpoint, state_digest
from satpipe.train.config import EvalConfig, ModelImportConfig, TrainConfig
from satpipe.train.eval.evaluate import evaluate
from satpipe.train.eval.staleness import stale_reason
from satpipe.train.model_import import import_model
from satpipe.train.models import create_model, load_model
from satpipe.train.runlock import RunLock
from satpipe.train.trainer import train

from .conftest import write_tiny_dataset

# The cheapest evaluation: what these tests check is around it, not in it.
EVAL = dict(n_examples=8, eps=(0,), device="cpu", strict=False, attacks=("fgsm",), steps=1,
            check_examples=4)  # fmt: skip
FAST = settings(
    max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_tiny_dataset(tmp_path_factory.mktemp("d") / "d.zarr", n_train=16, n_test=8)


@pytest.fixture(scope="module")
def saliency(data, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("s") / "s.zarr")
    return compute_saliency(SaliencyConfig(method="random", data=data, out=out, device="cpu"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r") / "run"
    return train(_train_config(data, out))


def _train_config(data: str, out, **kw) -> TrainConfig:
    base = dict(variant="original", data=data, out=str(out), model="smallcnn", epochs=1,
                batch_size=8, augment=False, device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _meta(store: str, node: str) -> Path:
    return Path(store) / node / "zarr.json"


class _Edited:
    """Edit one zarr.json for the length of a `with` block, then put the bytes back."""

    def __init__(self, path: Path, edit) -> None:
        self.path, self.edit = path, edit

    def __enter__(self) -> None:
        self.raw = self.path.read_bytes()
        meta = json.loads(self.raw)
        self.edit(meta)
        self.path.write_text(json.dumps(meta))

    def __exit__(self, *exc) -> None:
        self.path.write_bytes(self.raw)


def _refused_quickly(call, match: str | None = None, seconds: float = 2.0) -> str:
    t0 = time.perf_counter()
    with pytest.raises(SatpipeError) as err:
        call()
    assert time.perf_counter() - t0 < seconds
    text = str(err.value)
    assert "\n" not in text
    if match:
        assert match in text, text
    return text


# ---- crafted metadata --------------------------------------------------------------------------

_BAD_COUNTS = st.one_of(
    st.just(0), st.integers(max_value=-1), st.text(max_size=3), st.floats(allow_nan=True),
    st.none(), st.booleans(), st.lists(st.integers(min_value=1, max_value=4), max_size=3),
)  # fmt: skip
_FIELDS = st.sampled_from(["shape", "chunk", "inner", "dtype"])


def _set(field: str, value):
    def edit(meta):
        if field == "shape":
            meta["shape"][0] = value
        elif field == "chunk":
            meta["chunk_grid"]["configuration"]["chunk_shape"][0] = value
        elif field == "inner":
            meta["codecs"][0]["configuration"]["chunk_shape"][0] = value
        else:
            meta["data_type"] = value if isinstance(value, str) else "float64"

    return edit


@FAST
@given(field=_FIELDS, value=_BAD_COUNTS, node=st.sampled_from(["train/labels", "test/images"]))
def test_crafted_array_fields_are_one_line_in_every_reader(data, field, value, node):
    if field == "shape" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = -1  # a non-negative count is a shape; the 10^9 case has its own test
    with _Edited(_meta(data, node), _set(field, value)):
        for reader in (lambda: open_dataset(data), lambda: store_info(data)):
            _refused_quickly(reader, "metadata breaks the store contract")
        problems = verify_store(data)
        assert problems and node in problems[0]
    open_dataset(data)  # restored


@pytest.mark.parametrize(
    ("field", "value"), [("chunk", 0), ("chunk", -1), ("inner", 0), ("shape", "abc")]
)
def test_the_issues_crafted_chunks_and_shapes_are_one_line(data, field, value):
    with _Edited(_meta(data, "train/images"), _set(field, value)):
        _refused_quickly(lambda: open_dataset(data), "train/images")
        _refused_quickly(lambda: store_info(data), "train/images")
        line = CliRunner().invoke(app, ["store", "verify", data]).output.strip().splitlines()
        assert len(line) == 1 and "train/images" in line[0]


def test_float_labels_are_refused_by_train_and_the_loader(data, tmp_path):
    def to_float(meta):
        meta["data_type"] = "float64"

    with _Edited(_meta(data, "train/labels"), to_float):
        _refused_quickly(lambda: make_loader(data, "train", None, batch_size=8), "float64")
        _refused_quickly(lambda: train(_train_config(data, tmp_path / "r")), "float64")


@pytest.mark.parametrize("node", ["train/images", "train/labels"])
def test_a_dataset_claiming_a_billion_rows_is_refused_in_milliseconds(data, node):
    def huge(meta):
        meta["shape"][0] = 10**9

    with _Edited(_meta(data, node), huge):
        for reader in (lambda: open_dataset(data), lambda: store_info(data)):
            _refused_quickly(reader, "1000000000", seconds=0.5)
        assert verify_store(data)


def test_a_saliency_store_claiming_a_billion_rows_is_refused_in_milliseconds(saliency):
    def huge(meta):
        meta["shape"][0] = 10**9

    with _Edited(_meta(saliency, "train/saliency"), huge):
        for reader in (lambda: open_saliency(saliency), lambda: store_info(saliency)):
            _refused_quickly(reader, "1000000000", seconds=0.5)
        assert any("1000000000" in p for p in verify_store(saliency))


def test_deeply_nested_metadata_is_refused_without_recursion(data):
    root = Path(data) / "zarr.json"
    raw = root.read_bytes()
    try:
        meta = json.loads(raw)
        meta["attributes"]["satpipe"]["source"]["deep"] = "@"
        root.write_text(json.dumps(meta).replace('"@"', "[" * 200_000 + "]" * 200_000))
        for reader in (lambda: open_dataset(data), lambda: store_info(data),
                       lambda: verify_store(data)):  # fmt: skip
            _refused_quickly(reader, "nested 200")
    finally:
        root.write_bytes(raw)
    assert json_depth(b'{"a": "[[[[", "b": [[1]]}') == 3  # brackets in strings do not count


# ---- labels ------------------------------------------------------------------------------------


@FAST
@given(labels=st.lists(st.integers(0, 5), min_size=8, max_size=8), keep=st.integers(1, 5))
def test_labels_outside_the_classes_are_refused_with_their_rows(tmp_path_factory, labels, keep):
    """A store whose class list was cut after writing (its digests still hold): labels >= the
    classes it now has are refused at open, the rows named, in whichever split they are."""
    split = "test" if labels[0] % 2 else "train"
    uri = str(tmp_path_factory.mktemp("l") / "l.zarr")
    sizes = {"train": 8, "test": 8}
    classes = [f"c{i}" for i in range(6)]
    with DatasetWriter(
        uri, name="l", classes=classes, image_shape=(4, 4, 3), split_sizes=sizes
    ) as w:
        for s in ("train", "test"):
            w.write(s, np.zeros((8, 4, 4, 3), np.uint8), labels if s == split else [0] * 8)
    root = Path(uri) / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"]["satpipe"]["classes"] = [f"c{i}" for i in range(keep)]
    root.write_text(json.dumps(meta))
    bad = [i for i, v in enumerate(labels) if v >= keep]
    if not bad:
        assert open_dataset(uri).num_classes == keep
        return
    text = _refused_quickly(lambda: open_dataset(uri), f"{split}/labels: {len(bad)} label(s)")
    assert f"rows {', '.join(map(str, bad[:5]))}" in text


# ---- checkpoints -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt_bytes(run) -> bytes:
    return (run / "checkpoint.pt").read_bytes()


@FAST
@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_flipped_byte_is_refused_or_changes_nothing(run, ckpt_bytes, tmp_path_factory,
                                                      position, bit):  # fmt: skip
    raw = bytearray(ckpt_bytes)
    raw[int(position * len(raw))] ^= 1 << bit
    path = tmp_path_factory.mktemp("f") / "checkpoint.pt"
    path.write_bytes(bytes(raw))
    try:
        state = load_checkpoint(path)
    except SatpipeError as exc:
        assert "\n" not in str(exc)
        return
    assert state_digest(state) == state["satpipe"]["digest"]  # loaded as it was written


def _tampered(run: Path, tmp_path: Path, value: float = 433.4, reseal: bool = False) -> Path:
    """A copy of the run whose first weight is `value` (torch.load accepts the file)."""
    out = tmp_path / "tampered"
    out.mkdir()
    (out / "config.json").write_text((run / "config.json").read_text())
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    sd = state["model"]["state_dict"]
    first = next(k for k, v in sd.items() if v.is_floating_point())
    sd[first].view(-1)[0] = value
    if reseal:
        state["satpipe"]["digest"] = state_digest(state)
    torch.save(state, out / "checkpoint.pt")
    return out


def test_a_changed_weight_is_refused_by_every_checkpoint_reader(run, data, tmp_path):
    bad = _tampered(run, tmp_path)
    ckpt = str(bad / "checkpoint.pt")
    for read in (
        lambda: load_model(ckpt),
        lambda: evaluate(bad, **EVAL),
        lambda: compute_saliency(SaliencyConfig(method="gradient", data=data, model=ckpt,
                                                out=str(tmp_path / "s.zarr"), device="cpu")),
        lambda: train(_train_config(data, bad, resume=True, epochs=2)),
    ):  # fmt: skip
        _refused_quickly(read, "damaged checkpoint", seconds=30)
    assert not (tmp_path / "s.zarr").exists()
    result = CliRunner().invoke(app, ["model", "info", ckpt])
    assert result.exit_code == 1 and "damaged checkpoint" in result.output


def test_non_finite_weights_are_refused_on_load_and_import(run, tmp_path):
    bad = _tampered(run, tmp_path, value=float("inf"), reseal=True)
    _refused_quickly(lambda: load_model(bad / "checkpoint.pt"), "NaN/Inf")
    sd = create_model("smallcnn", 4, 3).state_dict()
    next(v for v in sd.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "w.pt")
    config = ModelImportConfig(weights=str(tmp_path / "w.pt"), model="smallcnn", num_classes=4,
                               out=str(tmp_path / "m.pt"))  # fmt: skip
    _refused_quickly(lambda: import_model(config), "NaN/Inf")
    assert not (tmp_path / "m.pt").exists()


def test_a_checkpoint_without_a_digest_loads_with_a_note(run, tmp_path, capsys):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["satpipe"]["digest"]
    torch.save(state, tmp_path / "old.pt")
    load_checkpoint(tmp_path / "old.pt")
    assert "written before checkpoints carried a digest" in capsys.readouterr().err


# ---- a run still training; stale results ------------------------------------------------------


def test_eval_of_a_running_run_is_refused_unless_allowed(run, tmp_path):
    with RunLock(run):  # another open file: to the evaluator, a trainer holds the lock
        _refused_quickly(lambda: evaluate(run, out=str(tmp_path), **EVAL), "is being trained now")
        assert not (tmp_path / "results.json").exists()
        results = evaluate(run, out=str(tmp_path), allow_running=True, **EVAL)
    assert results["running"]["epoch"] == 1
    assert "Evaluated while the run was training" in (tmp_path / "results.md").read_text()


def test_results_of_a_changed_checkpoint_are_marked_stale(run, data, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    evaluate(out, **EVAL)
    assert stale_reason(out) is None
    train(_train_config(data, out, resume=True, epochs=2))  # trains on: results no longer hold
    results = json.loads((out / "results.json").read_text())
    assert "trained on from epoch 2" in results["stale"]["reason"]
    assert (out / "results.md").read_text().startswith("**STALE")
    # Results written before stale marks existed: `satpipe eval` marks them, even when it
    # then refuses to evaluate (the run is training again).
    del results["stale"]
    (out / "results.json").write_text(json.dumps(results))
    with RunLock(out):
        _refused_quickly(lambda: evaluate(out, **EVAL), "is being trained now")
    assert (
        "checkpoint.pt changed" in json.loads((out / "results.json").read_text())["stale"]["reason"]
    )


# ---- options and messages ---------------------------------------------------------------------


def test_every_list_option_accumulates_when_repeated():
    from satpipe.data.importers import ImportConfig
    from satpipe.data.shapes import ShapesConfig
    from satpipe.pipeline.config import ScoreConfig

    seen = 0
    for cls in (EvalConfig, TrainConfig, SaliencyConfig, ScoreConfig, ImportConfig,
                ShapesConfig, ModelImportConfig):  # fmt: skip
        params, _, convert = config_options(cls)
        for p in params:
            if p.name in convert and "list" in str(p.annotation) and p.name != "storage_options":
                seen += 1
                assert "list[str]" in str(p.annotation), (cls, p.name)
    assert seen >= 4
    _, _, convert = config_options(EvalConfig)
    assert convert["attacks"](["autoattack", "pgd"]) == ("autoattack", "pgd")
    assert convert["eps"](["0,1", "8"]) == (0.0, 1.0, 8.0)


def test_control_characters_in_paths_stay_one_line(tmp_path):
    weird = str(tmp_path / "a\nb\x1b[31m.zarr")
    result = CliRunner().invoke(app, ["store", "info", weird])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "a\\nb\\x1b[31m.zarr" in lines[0]
