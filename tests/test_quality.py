"""Saliency quality scores: constructed maps with known answers, Quantus as an oracle on a
batch, the randomisation check on a method that ignores the weights, and `score_store` on tiny
stores (provenance written, verify still passes, reruns replace, bad input refused)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.data.inspect import format_info, store_info, verify_store
from satpipe.data.saliency_store import open_saliency, write_quality
from satpipe.pipeline.config import ScoreConfig
from satpipe.pipeline.methods import get_method
from satpipe.pipeline.methods.base import Method
from satpipe.pipeline.quality import SCORES, family_scores, score_store
from satpipe.pipeline.quality.faithfulness import curve_auc, curves, pixel_order
from satpipe.pipeline.quality.localisation import average_ranks, localisation_batch
from satpipe.pipeline.quality.sanity import FLAG_AT, cascade_blocks, randomisation_curve
from satpipe.pipeline.runner import compute_saliency
from satpipe.train.checkpoint import model_record, save_checkpoint
from satpipe.train.models import create_model

from .conftest import write_tiny_dataset

LOCAL = family_scores("localisation")


def _masks(b: int = 64, size: int = 12, seed: int = 0) -> torch.Tensor:
    """(B, S, S) bool: one random rectangle per image, 4..7 pixels a side."""
    g = np.random.default_rng(seed)
    m = np.zeros((b, size, size), bool)
    for i in range(b):
        hh, ww = g.integers(4, 8, 2)
        y0, x0 = g.integers(0, size - hh + 1), g.integers(0, size - ww + 1)
        m[i, y0 : y0 + hh, x0 : x0 + ww] = True
    return torch.from_numpy(m)


def _scores(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{score: (mean value, mean chance)} for maps (B, H, W) or (B, H, W, C)."""
    maps = maps if maps.ndim == 4 else maps.unsqueeze(-1)
    out = localisation_batch(maps.float(), masks, LOCAL)
    return {k: (float(v.mean()), float(c.mean())) for k, (v, c) in out.items()}


# --------------------------------------------------------------------------------------------
# Localisation: known answers


def test_the_mask_itself_is_perfect_and_its_negation_has_sign_agreement_zero():
    masks = _masks()
    mask = masks.float()
    perfect = _scores(mask, masks)
    for name in LOCAL:
        assert perfect[name][0] == pytest.approx(1.0), name
    # The weak-saliency form (+1 inside, -1 outside) and its negation: the sign localises.
    weak = mask * 2 - 1
    for name in ("sign-agreement", "inside-positive", "pointing-game"):
        assert _scores(weak, masks)[name][0] == pytest.approx(1.0), name
    for negated in (-weak, -mask):
        s = _scores(negated, masks)
        for name in ("sign-agreement", "inside-positive", "pointing-game"):
            assert s[name][0] == 0.0, name
    # The magnitude is all relevance mass, rank and ROC-AUC see: the negated mask localises
    # just as well for them, and the +-1 map (|s| = 1 everywhere) is exactly at chance.
    for name in ("relevance-mass", "relevance-rank", "roc-auc"):
        assert _scores(-mask, masks)[name][0] == pytest.approx(1.0), name
        value, chance = _scores(weak, masks)[name]
        assert value == pytest.approx(chance), name


def test_random_maps_score_chance_and_ties_score_it_exactly():
    masks = _masks(b=400, seed=1)
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(masks.shape, generator=g) * 2 - 1
    for name, (value, chance) in _scores(uniform, masks).items():
        # The pointing game is one hit or miss per image: 3 sigma at 400 images is 0.06.
        tolerance = 0.06 if name == "pointing-game" else 0.03
        assert value == pytest.approx(chance, abs=tolerance), name
    # The `random` control: +-1, equal magnitudes everywhere -> every score of |s| is exactly
    # its chance value (Quantus, breaking ties by order, would give a +-1 map's pointing game
    # the share of images whose first +1 pixel is in the object).
    signs = torch.randint(0, 2, masks.shape, generator=g).float() * 2 - 1
    s = _scores(signs, masks)
    for name in ("relevance-mass", "relevance-rank", "roc-auc"):
        assert s[name][0] == pytest.approx(s[name][1], abs=1e-9), name
    area = float(masks.float().mean())
    assert s["relevance-mass"][1] == pytest.approx(area)
    for name in ("pointing-game", "sign-agreement"):  # the share of +1 pixels inside
        assert s[name][0] == pytest.approx(area, abs=0.02), name


def test_scores_use_every_channel_and_all_zero_maps_are_nan():
    masks = _masks(b=4)
    maps = torch.zeros((4, 12, 12, 3))
    maps[1, ..., 2] = masks[1].float()  # the object, in the last channel only
    out = localisation_batch(maps, masks, LOCAL)
    for name, (v, _) in out.items():
        assert torch.isnan(v[0]) and v[1] == pytest.approx(1.0), name


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    g = torch.Generator().manual_seed(3)
    v = torch.randint(0, 5, (6, 40), generator=g).float()  # many ties
    np.testing.assert_allclose(average_ranks(v).numpy(), rankdata(v.numpy(), axis=1))


# --------------------------------------------------------------------------------------------
# Localisation and deletion against Quantus (test-only oracle)


@pytest.fixture(scope="module")
def quantus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("quantus")


def test_localisation_agrees_with_quantus(quantus):
    masks = _masks(b=32, seed=2)
    g = torch.Generator().manual_seed(5)
    # Continuous maps (no ties, where Quantus breaks them by order), biased towards the object.
    maps = torch.randn(masks.shape, generator=g) + 1.5 * masks.float()
    ours = localisation_batch(maps.unsqueeze(-1), masks, LOCAL)
    a = maps.abs().unsqueeze(1).numpy()
    signed = maps.unsqueeze(1).numpy()
    s = masks.unsqueeze(1).numpy().astype(float)
    x = np.zeros((len(a), 1, *a.shape[2:]), np.float32)
    y = np.zeros(len(a), int)
    common = dict(abs=False, normalise=False, disable_warnings=True)
    theirs = quantus.PointingGame(**common)(
        model=None, x_batch=x, y_batch=y, a_batch=signed, s_batch=s
    )
    np.testing.assert_allclose(ours["pointing-game"][0].numpy(), theirs)
    oracles = {
        "relevance-mass": quantus.RelevanceMassAccuracy(**common),
        "relevance-rank": quantus.RelevanceRankAccuracy(**common),
        "roc-auc": quantus.AUC(**common),
    }
    for name, metric in oracles.items():
        theirs = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
        np.testing.assert_allclose(ours[name][0].numpy(), theirs, atol=1e-6, err_msg=name)
    theirs = quantus.AttributionLocalisation(positive_attributions=True, **common)(
        model=None, x_batch=x, y_batch=y, a_batch=signed, s_batch=s
    )
    np.testing.assert_allclose(ours["sign-agreement"][0].numpy(), theirs, atol=1e-6)


def _tiny_classifier(num_classes: int = 3, seed: int = 0, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("smallcnn", num_classes, in_channels=channels).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20)  # confident predictions: the curves move
    return model


def test_deletion_curve_agrees_with_quantus_pixel_flipping(quantus):
    # One channel: Quantus' features are array elements, ours pixels (all channels together).
    model = _tiny_classifier(channels=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 1, 8, 8), generator=g)
    x[:, :, 0, 0] = 0  # Quantus' "black" is the image's minimum: make it 0, ours
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    maps = torch.randn((6, 8, 8, 1), generator=g)
    steps = 8
    ours = curves(model, x, y, pixel_order(maps), steps, insertion=False)
    metric = quantus.PixelFlipping(
        features_in_step=64 // steps,
        abs=False,
        normalise=False,
        perturb_baseline="black",
        disable_warnings=True,
    )
    theirs = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=maps.permute(0, 3, 1, 2).numpy(),
        softmax=True,
        device="cpu",
    )
    # Quantus' curve starts after the first step; ours also has the untouched image at 0.
    np.testing.assert_allclose(ours[:, 1:].numpy(), np.asarray(theirs), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Faithfulness: known answers


class _BoxModel(nn.Module):
    """Two classes; the logit of class 1 is 8 x the mean brightness of the top-left 4x4 box."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 8 * x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(v), v], dim=1)


def test_a_map_on_the_evidence_deletes_fast_and_inserts_fast():
    x = torch.ones((2, 3, 8, 8))
    y = torch.ones(2, dtype=torch.long)
    good = torch.zeros((2, 8, 8, 1))
    good[:, :4, :4] = 1
    model = _BoxModel()
    steps = 4  # 16 pixels a step: the box goes in the first step
    deleted = curves(model, x, y, pixel_order(good), steps, insertion=False)
    wrong = curves(model, x, y, pixel_order(-good), steps, insertion=False)
    assert deleted[0, 1] == pytest.approx(0.5)  # box gone after step 1: logits equal
    assert curve_auc(deleted)[0] < curve_auc(wrong)[0]
    inserted = curves(model, x, y, pixel_order(good), steps, insertion=True, blur_sigma=1.0)
    assert inserted[0, 1] == pytest.approx(inserted[0, -1])  # box back after step 1
    # The trapezoid of a flat curve is its height.
    assert curve_auc(torch.full((1, 5), 0.3))[0] == pytest.approx(0.3)


# --------------------------------------------------------------------------------------------
# Sanity: the randomisation check


class _ImageItself(Method):
    """A 'saliency method' that returns the image: it ignores the model entirely."""

    name = "image-itself"

    def _attribute(self, model, x, target, generator):
        return x.clone()


def test_randomisation_flags_a_map_that_ignores_the_weights_and_passes_the_gradient():
    model = _tiny_classifier()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((8, 3, 12, 12), generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    blocks = [name for name, _ in cascade_blocks(model)]
    assert blocks == ["fc", "features.block2", "features.block1"]
    before = [p.clone() for p in model.parameters()]
    for method, flagged in ((_ImageItself(), True), (get_method("gradient"), False)):
        stored = method(model, x, y).permute(0, 2, 3, 1)
        curve = randomisation_curve(model, method, x, y, stored, "signed-maxabs")
        assert [name for name, _ in curve] == ["none", *blocks]
        assert float(curve[0][1].mean()) == pytest.approx(1.0)  # the intact model
        last = float(curve[-1][1].mean())
        assert (last >= FLAG_AT) is flagged, (method.name, last)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Same seed, same randomised copy: the check is deterministic.
    again = randomisation_curve(model, get_method("gradient"), x, y, stored, "signed-maxabs")
    assert torch.equal(again[-1][1], curve[-1][1])


# --------------------------------------------------------------------------------------------
# score_store on tiny stores


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A tiny dataset (4 classes, masks, boxes), a checkpoint, a gradient store and a mask
    store made by the runner."""
    root = tmp_path_factory.mktemp("quality")
    data = write_tiny_dataset(root / "d.zarr", n_train=48, n_test=16, size=12)
    ckpt = root / "src.pt"
    save_checkpoint(ckpt, {"model": model_record(_tiny_classifier(4), 4, 3), "variant": "original"})
    made = {}
    for method in ("gradient", "mask"):
        made[method] = compute_saliency(
            _saliency_config(
                method, data, root / f"{method}.zarr", str(ckpt) if method == "gradient" else None
            )
        )
    return {"root": root, "data": data, "ckpt": str(ckpt), **made}


def _saliency_config(method, data, out, model):
    from satpipe.pipeline.config import SaliencyConfig

    return SaliencyConfig(
        method=method, data=data, out=str(out), model=model, device="cpu", rows_per_shard=16
    )


def _copy(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def _attrs(uri: str) -> dict:
    return dict(zarr.open_group(uri, mode="r").attrs["satpipe"])


def test_scores_are_recorded_survive_verify_and_a_rerun_replaces_them(stores, tmp_path):
    store = _copy(stores["gradient"], tmp_path / "g.zarr")
    maps_before = np.asarray(zarr.open_group(store, mode="r")["train/saliency"][:])
    q = score_store(ScoreConfig(store, model=stores["ckpt"], n=8, device="cpu"))
    assert set(q["scores"]) == set(SCORES.names())
    for s in q["scores"].values():
        assert s["low"] <= s["value"] <= s["high"] and s["chance"] is not None
    assert q["settings"]["model"]["is_source"] and q["settings"]["n"] == 8
    assert q["settings"]["rows"] == 48 and q["scores"]["relevance-mass"]["n"] == 48
    assert [c["randomised"] for c in q["curves"]["randomisation"]][0] == "none"
    recorded = _attrs(store)
    assert recorded["quality"]["scores"] == q["scores"] and recorded["complete"] is True
    assert verify_store(store, data=stores["data"]) == []
    np.testing.assert_array_equal(maps_before, zarr.open_group(store, mode="r")["train/saliency"])
    text = format_info(store_info(store))
    assert "relevance-mass" in text and "chance" in text and "randomisation" in text
    again = score_store(ScoreConfig(store, model=stores["ckpt"], n=8, device="cpu"))
    assert again["scores"] == q["scores"]  # deterministic, and it replaced the record
    only = score_store(ScoreConfig(store, scores=("pointing-game",), device="cpu"))
    assert list(_attrs(store)["quality"]["scores"]) == ["pointing-game"] == list(only["scores"])


def test_without_a_model_only_localisation_runs_with_notes(stores):
    q = score_store(ScoreConfig(stores["gradient"], device="cpu", write=False))
    assert set(q["scores"]) == set(LOCAL)
    assert any("faithfulness skipped" in n and "--model" in n for n in q["notes"])
    assert "quality" not in _attrs(stores["gradient"])  # write=False
    with pytest.raises(SatpipeError, match="cannot compute deletion"):
        score_store(ScoreConfig(stores["gradient"], scores=("deletion",), device="cpu"))


def test_a_model_free_store_is_flagged_and_judged_by_the_given_model(stores):
    q = score_store(
        ScoreConfig(stores["mask"], model=stores["ckpt"], n=8, device="cpu", write=False)
    )
    assert q["scores"]["sign-agreement"]["value"] == pytest.approx(1.0)
    assert q["scores"]["relevance-mass"]["value"] == pytest.approx(
        q["scores"]["relevance-mass"]["chance"]
    )  # +-1 maps: equal magnitude everywhere
    assert "deletion" in q["scores"] and "randomisation" not in q["scores"]
    assert any("uses no model" in f for f in q["flags"])
    assert not q["settings"]["model"]["is_source"]


def test_localisation_is_skipped_with_a_note_on_data_without_masks(stores, tmp_path):
    data = write_tiny_dataset(
        tmp_path / "nomask.zarr", n_train=16, n_test=8, size=12, masks=False, boxes=False
    )
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": model_record(_tiny_classifier(4), 4, 3)})
    store = compute_saliency(_saliency_config("gradient", data, tmp_path / "s.zarr", str(ckpt)))
    q = score_store(ScoreConfig(store, model=str(ckpt), n=8, device="cpu"))
    assert not set(LOCAL) & set(q["scores"]) and {"deletion", "randomisation"} <= set(q["scores"])
    assert any(n.startswith("localisation skipped") and "masks or boxes" in n for n in q["notes"])


def test_bad_input_is_one_line_and_leaves_the_provenance_unchanged(stores, tmp_path):
    store = _copy(stores["gradient"], tmp_path / "g.zarr")
    score_store(ScoreConfig(store, scores=("relevance-mass",), device="cpu"))
    before = json.dumps(_attrs(store), sort_keys=True)
    other = tmp_path / "resnet.pt"
    save_checkpoint(other, {"model": model_record(create_model("resnet10", 4), 4, 3)})
    classes = tmp_path / "c3.pt"
    save_checkpoint(classes, {"model": model_record(create_model("smallcnn", 3), 3, 3)})
    bad = [
        (dict(model=str(other)), "is a resnet10, the store's maps come from a smallcnn"),
        (dict(model=str(classes)), "has 3 classes"),
        (dict(n=49), "--n 49 is larger than the train split"),
    ]
    for options, match in bad:
        with pytest.raises(SatpipeError, match=match):
            score_store(ScoreConfig(store, device="cpu", **options))
    # A corrupted chunk: the checksum fails while reading, nothing is recorded.
    chunk = next(p for p in (tmp_path / "g.zarr" / "train" / "saliency").rglob("c/*/*/*/*"))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(SatpipeError, match="unreadable"):
        score_store(ScoreConfig(store, device="cpu"))
    chunk.unlink()  # and a missing one
    with pytest.raises(SatpipeError, match="no stored data"):
        score_store(ScoreConfig(store, device="cpu"))
    assert json.dumps(_attrs(store), sort_keys=True) == before


def test_an_incomplete_or_changed_store_is_refused(stores, tmp_path):
    store = _copy(stores["gradient"], tmp_path / "g.zarr")
    attrs = _attrs(store)
    group = zarr.open_group(store, mode="r+")
    group.attrs["satpipe"] = {**attrs, "complete": False}
    with pytest.raises(SatpipeError, match="incomplete"):
        score_store(ScoreConfig(store, device="cpu"))
    group.attrs["satpipe"] = attrs
    with pytest.raises(SatpipeError, match="changed while it was being scored"):
        write_quality(store, {"scores": {}}, {**attrs, "created": "earlier"})
    assert "quality" not in _attrs(store)


def test_score_config_refuses_unknown_scores_and_bad_numbers():
    with pytest.raises(SatpipeError, match="unknown quality score 'focus'"):
        ScoreConfig("s.zarr", scores=("focus",))
    with pytest.raises(SatpipeError, match="--n must be >= 1"):
        ScoreConfig("s.zarr", n=0)


def test_cli_store_score_prints_and_records(stores, tmp_path):
    from typer.testing import CliRunner

    from satpipe.cli import app

    store = _copy(stores["gradient"], tmp_path / "g.zarr")
    args = ["store", "score", store, "--scores", "pointing-game,roc-auc", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["scores"]) == {"pointing-game", "roc-auc"}
    result = CliRunner().invoke(app, ["store", "score", store, "--n", "1000"])
    assert result.exit_code == 1 and "larger than the train split" in result.output
    assert "roc-auc" in CliRunner().invoke(app, ["store", "info", store]).output


# --------------------------------------------------------------------------------------------
# Galleries


def test_gallery_compares_stores_side_by_side_with_per_image_clipping(stores, tmp_path):
    from satpipe.pipeline.gallery import _label, _limits, saliency_gallery

    hot = np.zeros((8, 8), np.float32)
    hot[:4] = 0.1
    hot[0, 0] = 5.0  # one hot pixel must not wash out the rest
    signed = _limits(hot, "signed-maxabs", 99.0)
    assert signed["cmap"] == "RdBu_r" and signed["vmin"] == -signed["vmax"] < 5.0
    assert _limits(hot, "minmax", 99.0)["cmap"] == "magma"
    store = _copy(stores["gradient"], tmp_path / "g.zarr")
    score_store(ScoreConfig(store, scores=("pointing-game", "relevance-mass"), device="cpu"))
    title = _label(open_saliency(store))
    assert "gradient" in title and "PG " in title and "RM " in title
    png = saliency_gallery([stores["mask"], store], None, str(tmp_path / "g.png"), n=3)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = write_tiny_dataset(tmp_path / "other.zarr", n_train=48, n_test=16, size=12, seed=9)
    with pytest.raises(SatpipeError, match="dataset fingerprint mismatch: made for"):
        saliency_gallery([store], other, str(tmp_path / "x.png"))
