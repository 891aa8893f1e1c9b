import pytest
import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from satpipe.train.models import MODELS, create_model, load_model


@pytest.mark.parametrize("name", ["smallcnn", "resnet10"])
def test_models_take_unit_range_input_and_name_cam_layer(name):
    model = create_model(name, num_classes=7).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model.get_submodule(model.cam_layer), nn.Module)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) >= 4 and len({id(m) for m in relus}) == len(relus)


def test_unknown_model_names_the_choices():
    with pytest.raises(SatpipeError, match="resnet10"):
        create_model("vgg", 10)
    assert {"smallcnn", "resnet10", "resnet18", "resnet34"} <= set(MODELS.names())


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = create_model("smallcnn", 3)
    save_checkpoint(tmp_path / "m.pt", {"model": model_record(model, 3, 3), "epoch": 0})
    again, state = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(again(x), model.eval()(x))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SatpipeError, match="not a satpipe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(SatpipeError, match="not a satpipe checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
