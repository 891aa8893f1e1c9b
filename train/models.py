"""Models: `create_model(name, num_classes)` for every architecture satpipe trains or reads,
and `load_model(checkpoint)`, the one public way to get a trained model back (the saliency
stage uses it and nothing else of the trainer).

`name` is a built-in architecture (`MODELS`: smallcnn, resnet10/18/34, plus what installed
packages register in the `satpipe.models` entry-point group) or `scheme:NAME` from
`MODEL_SOURCES` (`torchvision:resnet50`, `timm:convnext_tiny`, `package.module:callable`; see
satpipe.train.model_sources). Every model takes images in [0, 1] (so every epsilon is in pixel
units) and normalises inside: built-ins call their `normalize` module first; models from a
source get a `satpipe_normalize` module run by a forward pre-hook, so their own module names
and state_dict keys stay exactly the library's (`layer4`, `fc.weight`) and cost nothing extra.

Built-in ReLUs are `nn.ReLU` modules, one per use, so Guided Backprop's module hooks act on each
of them; `model.cam_layer` names their last convolutional block for the Grad-CAM family (models
from a source have none: the saliency methods find the layer, see pipeline/methods/layers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from satpipe.core.errors import SatpipeError, quote
from satpipe.core.registry import Registry
from satpipe.train.checkpoint import file_sha256, load_checkpoint
from satpipe.train.model_sources import (
    MODEL_SOURCES,
    EntryPointModel,
    ModelSource,
    entry_points,
)

# name -> factory(num_classes, in_channels) -> nn.Module: the built-ins and entry points.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
BUILTIN_MEAN, BUILTIN_STD = 0.5, 0.25

__all__ = [
    "MODELS",
    "MODEL_SOURCES",
    "Normalize",
    "check_model_name",
    "create_model",
    "get_submodule",
    "input_norm",
    "load_model",
    "probe_model",
]


def _source(name: str) -> tuple[ModelSource | None, str]:
    """(the source of `name`, its name within the source); None for a built-in."""
    name = str(name)
    if name not in MODELS and ":" not in name:
        register_entry_points()  # a package installed since this process started
    if name in MODELS:
        if isinstance(MODELS.get(name), EntryPointModel):
            return MODEL_SOURCES.get("entry-point"), name
        return None, name
    scheme, sep, rest = name.partition(":")
    if sep and scheme in MODEL_SOURCES and scheme not in ("module", "entry-point"):
        if not rest:
            raise SatpipeError(f"model '{name}': name the {scheme} model, e.g. {scheme}:NAME")
        return MODEL_SOURCES.get(scheme), rest
    if sep and scheme and rest:
        return MODEL_SOURCES.get("module"), name
    schemes = ", ".join(e.value.syntax for e in MODEL_SOURCES.entries()[:3])
    raise SatpipeError(
        f"unknown model '{name}'; choose one of {', '.join(MODELS.names())} or {schemes} "
        "(`satpipe list models`, `satpipe list model-sources`)"
    )


def check_model_name(name: str) -> str:
    """`name` if it names a model satpipe can build (nothing is built), else a one-line
    SatpipeError: what configs call to validate --model."""
    source, inner = _source(name)
    if source is not None:
        source.check(inner)
    return str(name)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> nn.Module:
    """Build architecture `name` for `num_classes` classes and `in_channels` input channels.

    The model takes (B, in_channels, H, W) float images in [0, 1] and returns (B, num_classes)
    logits; it normalises with `mean`/`std` inside (one value, or one per channel), so attacks
    work in pixel units. Defaults: 0.5/0.25 for built-ins, the ImageNet statistics for
    torchvision, the model's pretrained_cfg for timm, none (0/1) for factories. No weights are
    downloaded; `model.arch` is `name`, which is all a checkpoint needs to rebuild it.
    """
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise SatpipeError(f"model '{name}': num_classes and in_channels must be >= 1")
    source, inner = _source(name)
    if source is None:
        model = MODELS.get(inner)(num_classes=num_classes, in_channels=in_channels)
        model.normalize = Normalize(
            in_channels,
            BUILTIN_MEAN if mean is None else mean,
            BUILTIN_STD if std is None else std,
        )
    else:
        model = source.build(inner, int(num_classes), int(in_channels))
        default_mean, default_std = source.default_norm(inner, model)
        norm = Normalize(
            in_channels,
            default_mean if mean is None else mean,
            default_std if std is None else std,
            what=str(name),
        )
        if hasattr(model, "satpipe_normalize"):
            raise SatpipeError(f"model '{name}' already has a satpipe_normalize attribute")
        model.satpipe_normalize = norm
        model.register_forward_pre_hook(_normalize_input, prepend=True)
    model.arch = str(name)
    return model


def _normalize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of models from a source: x in [0, 1] -> (x - mean) / std. A module-level
    function reading the module's own buffers, so copies and pickles of the model keep it."""
    if not args:
        return args
    return (module.satpipe_normalize(args[0]), *args[1:])


def input_norm(model: nn.Module) -> Normalize:
    """The Normalize module that takes a model's [0, 1] input to what its layers expect."""
    model = getattr(model, "module", model)  # DDP
    norm = getattr(model, "satpipe_normalize", None) or getattr(model, "normalize", None)
    if not isinstance(norm, Normalize):
        raise SatpipeError(f"{type(model).__name__} was not made by satpipe (no input norm)")
    return norm


def probe_model(model: nn.Module, input_shape: Sequence[int], what: str = "model") -> int:
    """Number of logits `model` gives for one (C, H, W) image, from one forward of a grey
    probe in eval mode (the model's mode is restored); anything else is a one-line error."""
    c, h, w = (int(v) for v in input_shape)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.full((1, c, h, w), 0.5, device=device))
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as exc:
        first = quote(exc, 200)
        raise SatpipeError(f"{what} cannot take {c}-channel {h}x{w} images ({first})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SatpipeError(f"{what} must return (B, classes) logits, got {shape}")
    return int(out.shape[1])


class Normalize(nn.Module):
    """(x - mean) / std per channel, as fixed buffers (saved with the weights), shape
    (1, C, 1, 1). `mean`/`std`: one value for every channel or one per channel; a 3-value
    default (ImageNet) for a 1-channel model becomes its average, what a grey image
    replicated to RGB would see on average."""

    def __init__(self, channels: int, mean, std, what: str = "model") -> None:
        super().__init__()
        self.register_buffer("mean", _per_channel(mean, channels, "mean", what))
        self.register_buffer("std", _per_channel(std, channels, "std", what))
        if not bool((self.std > 0).all()):
            raise SatpipeError(f"{what}: input std must be > 0, got {self.std.flatten().tolist()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without this a 1-channel batch would broadcast against 3-channel statistics.
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected (B, {self.mean.shape[1]}, H, W) input, got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _per_channel(values, channels: int, key: str, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 3 and channels == 1:
        t = t.mean().reshape(1)
    if t.numel() not in (1, channels):
        raise SatpipeError(
            f"{what}: input {key} has {t.numel()} values for {channels} channels "
            f"(give 1 or {channels})"
        )
    return t.expand(channels).reshape(1, channels, 1, 1).clone()


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """AdaptiveAvgPool2d(1), (B, C, H, W) -> (B, C, 1, 1). Under torch's deterministic mode on
    CUDA it is a mean over H and W, whose backward is deterministic (adaptive_avg_pool2d's
    CUDA backward has no deterministic implementation and raises there); elsewhere it is
    AdaptiveAvgPool2d itself, the same bits as before."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and torch.are_deterministic_algorithms_enabled():
            return x.mean(dim=(2, 3), keepdim=True)
        return super().forward(x)


class _Classifier(nn.Module):
    """features -> global average pool -> linear; `normalize` is set by create_model."""

    cam_layer: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.features(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(_Classifier):
    """Four 3x3 conv layers, two poolings, GAP + linear: seconds per epoch on a CPU."""

    cam_layer = "features.block2"

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module(
            "block1",
            nn.Sequential(
                *_conv_bn_relu(in_channels, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2)
            ),
        )
        self.features.add_module(
            "block2",
            nn.Sequential(
                *_conv_bn_relu(width, 2 * width),
                nn.MaxPool2d(2),
                *_conv_bn_relu(2 * width, 2 * width),
            ),
        )
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(2 * width, num_classes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU()  # a module of its own: GBP hooks must see every ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(_Classifier):
    """CIFAR-style ResNet (3x3 stem, no max-pool), as in the SAT paper's experiments."""

    cam_layer = "features.layer4"

    def __init__(self, blocks: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("stem", nn.Sequential(*_conv_bn_relu(in_channels, 64)))
        cin = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
            self.features.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(cin, num_classes)


@MODELS.register("smallcnn")
def smallcnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Four 3x3 conv layers (32/64 wide), GAP + linear: seconds per epoch on a CPU."""
    return SmallCNN(num_classes, in_channels)


@MODELS.register("resnet10")
def resnet10(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR-style ResNet-10 (3x3 stem, no max-pool), blocks [1, 1, 1, 1]."""
    return ResNet([1, 1, 1, 1], num_classes, in_channels)


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), blocks [2, 2, 2, 2]."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@MODELS.register("resnet34")
def resnet34(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR-style ResNet-34 (3x3 stem, no max-pool), blocks [3, 4, 6, 3]."""
    return ResNet([3, 4, 6, 3], num_classes, in_channels)


def get_submodule(model: nn.Module, dotted: str) -> nn.Module:
    """`model.get_submodule` with a one-line error naming the valid layers."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise SatpipeError(
            f"model has no layer '{dotted}' (some layers: {', '.join(names)})"
        ) from exc


def build_model(record: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's "model" entry: arch (with scheme), num_classes,
    in_channels, mean/std (absent in checkpoints written before they were recorded: the
    state_dict's normalisation buffers carry them) and the weights."""
    try:
        model = create_model(
            record["arch"],
            record["num_classes"],
            record["in_channels"],
            mean=record.get("mean"),
            std=record.get("std"),
        )
        model.load_state_dict(record["state_dict"])
    except (KeyError, RuntimeError, TypeError) as exc:
        first = quote(exc, 200)
        raise SatpipeError(f"cannot rebuild the model from its record ({first})") from exc
    return model


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, the checkpoint dict) from a satpipe checkpoint.

    The dict also carries "checkpoint_sha256", the file's digest, which saliency stores record
    as their source model's identity (with the imported weights' "weights_sha256", if any).
    """
    state = load_checkpoint(path)
    try:
        model = build_model(state["model"])
    except SatpipeError as exc:
        raise SatpipeError(f"{path}: {exc}") from None
    state["checkpoint_sha256"] = file_sha256(path)
    return model.to(device).eval(), state


def register_entry_points() -> None:
    """Add the models installed packages register in the `satpipe.models` entry-point group
    to MODELS (names only: a package's code is imported when its model is built). A name
    that is taken already keeps its first meaning."""
    for ep in entry_points():
        if ep.name not in MODELS:
            MODELS.register(ep.name, EntryPointModel(ep))


register_entry_points()
