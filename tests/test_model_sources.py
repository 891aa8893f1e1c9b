"""Model sources (torchvision:, timm:, module:callable, entry points), the input normalisation
they get, checkpoint records, and teacher import (`satpipe model import`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from satpipe.cli import app
from satpipe.core.errors import SatpipeError
from satpipe.train.checkpoint import file_sha256, load_checkpoint, model_record, save_checkpoint
from satpipe.train.config import ModelImportConfig, TrainConfig
from satpipe.train.model_import import import_model
from satpipe.train.model_sources import IMAGENET_MEAN, IMAGENET_STD
from satpipe.train.models import (
    MODEL_SOURCES,
    MODELS,
    check_model_name,
    create_model,
    load_model,
    probe_model,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


class TinyNet(nn.Module):
    """conv -> ReLU -> GAP -> linear; a model from "somebody else's package"."""

    input_mean = (0.25,)
    input_std = (0.5,)

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def tiny_factory(num_classes: int, in_channels: int = 3) -> nn.Module:
    return TinyNet(num_classes, in_channels)


def _bare_copy(model: nn.Module, bare: nn.Module) -> nn.Module:
    """`bare` with `model`'s weights (everything but satpipe's normalisation buffers)."""
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("satpipe_")}
    bare.load_state_dict(weights)
    return bare.eval()


def test_torchvision_model_is_the_bare_one_behind_imagenet_normalisation():
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", 5).eval()
    bare = _bare_copy(model, torchvision.models.resnet18(num_classes=5))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), bare((x - MEAN) / STD), rtol=0, atol=0)
    # Module names and keys stay torchvision's, so --cam-layer layer4 and state_dicts fit.
    assert isinstance(model.get_submodule("layer4"), nn.Sequential)
    assert model.arch == "torchvision:resnet18" and probe_model(model, (3, 32, 32)) == 5
    # Grey data: the stem takes one channel and the ImageNet statistics are averaged.
    grey = create_model("torchvision:resnet18", 5, in_channels=1)
    assert grey.conv1.in_channels == 1 and grey.conv1.out_channels == 64
    assert grey.satpipe_normalize.mean.flatten().tolist() == pytest.approx([0.449])
    with pytest.raises(SatpipeError, match="cannot take 3-channel"):
        probe_model(grey, (3, 16, 16))


def test_timm_and_factory_sources_take_their_norm_and_channels():
    timm_model = create_model("timm:test_efficientnet", 3, in_channels=1)
    assert timm_model.conv_stem.in_channels == 1
    assert probe_model(timm_model, (1, 16, 16)) == 3
    factory = create_model("tests.test_model_sources:tiny_factory", 4, in_channels=2)
    assert factory.conv.in_channels == 2  # in_channels reaches a factory that names it
    assert factory.satpipe_normalize.mean.flatten().tolist() == [0.25, 0.25]  # its attrs
    given = create_model("tests.test_model_sources:tiny_factory", 4, mean=0.5, std=(0.1,))
    x = torch.rand(2, 3, 8, 8)
    bare = _bare_copy(given, TinyNet(4))
    torch.testing.assert_close(given.eval()(x), bare((x - 0.5) / 0.1))


@pytest.mark.parametrize(
    "name, message",
    [
        ("torchvision:resnt18", "close: resnet18"),
        ("timm:resnt18", "unknown timm model"),
        ("timm:hf-hub:org/net", "without weights"),
        ("vgg", "choose one of smallcnn"),
        ("tests.test_model_sources:nothing_here", "has no attribute"),
        ("no_such_package.mod:fn", "cannot import"),
        ("torchvision:", "name the torchvision model"),
    ],
)
def test_unknown_models_are_one_line_errors(name, message):
    with pytest.raises(SatpipeError, match=message):
        check_model_name(name)


def test_configs_validate_the_model_and_norm_without_choices(tmp_path):
    base = dict(variant="original", data="d.zarr", out=str(tmp_path / "r"))
    cfg = TrainConfig(model="torchvision:resnet18", input_mean="0.5,0.4,0.3", **base)
    assert cfg.input_mean == (0.5, 0.4, 0.3)
    with pytest.raises(SatpipeError, match="close: resnet18"):
        TrainConfig(model="torchvision:resnet81", **base)
    with pytest.raises(SatpipeError, match="input-std must be > 0"):
        TrainConfig(model="resnet10", input_std=(0.0,), **base)
    with pytest.raises(SatpipeError, match="2 values for 3 channels"):
        create_model("torchvision:resnet18", 3, mean=(0.5, 0.5))


def test_list_shows_builtins_and_schemes():
    result = CliRunner().invoke(app, ["list", "model-sources"])
    assert result.exit_code == 0
    assert set(MODEL_SOURCES.names()) == {"torchvision", "timm", "module", "entry-point"}
    for name in MODEL_SOURCES.names():
        assert name in result.output
    assert "smallcnn" in CliRunner().invoke(app, ["list", "models"]).output


def test_entry_point_models(tmp_path, monkeypatch):
    (tmp_path / "satpipe_fake_models.py").write_text(
        "from tests.test_model_sources import TinyNet\n"
        "def make(num_classes, in_channels=3):\n    return TinyNet(num_classes, in_channels)\n"
    )
    info = tmp_path / "satpipe_fake_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: satpipe-fake-models\n"
                                   "Version: 0.1\n")  # fmt: skip
    (info / "entry_points.txt").write_text("[satpipe.models]\nfakenet = satpipe_fake_models:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = create_model("fakenet", 3)  # found although installed after satpipe started
        assert isinstance(model, TinyNet) and model.arch == "fakenet"
        assert "fakenet" in MODELS.names() and "satpipe-fake-models" in MODELS.summary("fakenet")
        path = tmp_path / "m.pt"
        save_checkpoint(path, {"model": model_record(model, 3, 3)})
        again, _ = load_model(path)
        x = torch.rand(2, 3, 8, 8)
        torch.testing.assert_close(again(x), model.eval()(x))
    finally:
        MODELS._entries.pop("fakenet", None)


def test_checkpoint_records_rebuild_the_model_and_old_records_still_load(tmp_path):
    torch.manual_seed(0)
    model = create_model("timm:test_efficientnet", 4, mean=(0.5, 0.5, 0.5), std=0.2)
    record = model_record(model, 4, 3)
    assert record["arch"] == "timm:test_efficientnet"
    assert record["mean"] == [0.5] * 3 and record["std"] == pytest.approx([0.2] * 3)
    save_checkpoint(tmp_path / "tv.pt", {"model": record})
    again, state = load_model(tmp_path / "tv.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model.eval()(x))
    # A checkpoint written before mean/std were recorded: arch, classes, channels, weights.
    old_model = create_model("smallcnn", 3)
    old = {k: v for k, v in model_record(old_model, 3, 3).items() if k not in ("mean", "std")}
    save_checkpoint(tmp_path / "old.pt", {"model": old})
    restored, _ = load_model(tmp_path / "old.pt")
    torch.testing.assert_close(restored(x[:, :, :16, :16]), old_model.eval()(x[:, :, :16, :16]))


# --------------------------------------------------------------------------------------------
# Teacher import


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 'trained elsewhere' torchvision ResNet-18 (random weights, perturbed BN statistics),
    saved the way DDP training scripts do: under "model", every key prefixed `module.`."""
    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    bare = torchvision.models.resnet18(num_classes=7)
    with torch.no_grad():
        for m in bare.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {"module." + k: v for k, v in bare.state_dict().items()}
    torch.save({"epoch": 89, "model": state, "optimizer": {}}, root / "ddp.pth")
    torch.save(bare.state_dict(), root / "plain.pth")
    return root, bare.eval()


def test_imported_state_dict_gives_the_original_logits(teacher, tmp_path):
    root, bare = teacher
    summary = import_model(
        ModelImportConfig(
            weights=str(root / "ddp.pth"), model="torchvision:resnet18", num_classes=7,
            out=str(tmp_path / "teacher.pt"),
        )
    )  # fmt: skip
    assert "module. stripped" in summary
    model, state = load_model(tmp_path / "teacher.pt")
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), bare((x - MEAN) / STD), rtol=0, atol=0)
    record = state["model"]
    assert record["weights_sha256"] == file_sha256(root / "ddp.pth")
    assert record["weights_file"] == "ddp.pth" and record["arch"] == "torchvision:resnet18"
    assert state["imported"]["key"] == "model"
    assert state["imported"]["prefixes_stripped"] == ["module."]


def test_import_refusals_name_the_problem(teacher, tmp_path):
    root, bare = teacher
    base = dict(model="torchvision:resnet18", num_classes=7, out=str(tmp_path / "t.pt"))
    with pytest.raises(SatpipeError, match=r"shape fc.weight \(7, 512\) vs \(10, 512\)"):
        import_model(ModelImportConfig(weights=str(root / "plain.pth"), **{**base,
                                       "num_classes": 10}))  # fmt: skip
    with pytest.raises(SatpipeError, match=r"missing layer1.2.conv1.weight.*\(\+\d+ more\)"):
        import_model(ModelImportConfig(weights=str(root / "plain.pth"),
                                       **{**base, "model": "torchvision:resnet34"}))  # fmt: skip
    torch.save(bare, tmp_path / "whole.pth")
    with pytest.raises(SatpipeError, match="pickled torchvision.models.resnet.ResNet"):
        import_model(ModelImportConfig(weights=str(tmp_path / "whole.pth"), **base))
    import_model(ModelImportConfig(weights=str(root / "plain.pth"), **base))
    with pytest.raises(SatpipeError, match="output exists"):
        import_model(ModelImportConfig(weights=str(root / "plain.pth"), **base))
    with pytest.raises(SatpipeError, match="is an input of this command"):
        import_model(ModelImportConfig(weights=base["out"], **{**base, "overwrite": True}))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(base["out"]).read_bytes())
    with pytest.raises(SatpipeError, match="satpipe checkpoint already"):
        import_model(ModelImportConfig(weights=str(copy), **{**base, "overwrite": True}))


def test_model_import_cli(teacher, tmp_path):
    root, _ = teacher
    out = tmp_path / "t.pt"
    args = ["model", "import", str(root / "plain.pth"), "--model", "torchvision:resnet18",
            "--num-classes", "7", "--out", str(out), "--input-mean", "0.5",
            "--input-std", "0.25"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out)["model"]["mean"] == [0.5, 0.5, 0.5]
    bad = CliRunner().invoke(app, [*args[:4], "torchvision:resnet34", *args[5:], "--overwrite"])
    assert bad.exit_code == 1
    line = bad.output.strip()
    assert line.count("\n") == 0 and "does not fit torchvision:resnet34" in line
    assert json.dumps(load_checkpoint(out)["imported"])  # plain provenance
