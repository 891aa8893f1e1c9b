"""Models: `create_model(name, num_classes)` for every architecture satpipe trains, and
`load_model(checkpoint)`, the one public way to get a trained model back (the saliency stage
uses it and nothing else of the trainer).

Every model takes images in [0, 1] (so every epsilon is in pixel units) and normalises
inside. ReLUs are `nn.ReLU` modules, one per use, so Guided Backprop's module hooks act on
each of them. `model.cam_layer` names the last convolutional block for the Grad-CAM family.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from satpipe.errors import SatpipeError
from satpipe.registry import Registry
from satpipe.train.checkpoint import file_sha256, load_checkpoint

# name -> factory(num_classes, in_channels) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | float = 0.5,
    std: Sequence[float] | float = 0.25,
) -> nn.Module:
    """Build architecture `name` for `num_classes` classes.

    The model takes (B, in_channels, H, W) float images in [0, 1] and returns (B, num_classes)
    logits; it normalises with `mean`/`std` inside, so attacks work in pixel units.
    """
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)
    model.normalize = Normalize(in_channels, mean, std)
    model.arch = name
    return model


class Normalize(nn.Module):
    """(x - mean) / std per channel, as fixed buffers (saved with the weights)."""

    def __init__(self, channels: int, mean, std) -> None:
        super().__init__()
        mean_t = (
            torch.as_tensor(mean, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        )
        std_t = (
            torch.as_tensor(std, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        )
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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
        self.pool = nn.AdaptiveAvgPool2d(1)
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
        self.pool = nn.AdaptiveAvgPool2d(1)
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
    """Rebuild a model from a checkpoint's "model" entry (arch, classes, channels, weights)."""
    try:
        model = create_model(record["arch"], record["num_classes"], record["in_channels"])
        model.load_state_dict(record["state_dict"])
    except (KeyError, RuntimeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SatpipeError(f"cannot rebuild the model from its record ({first[:200]})") from exc
    return model


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, the checkpoint dict) from a satpipe checkpoint.

    The dict also carries "checkpoint_sha256", the file's digest, which saliency stores record
    as their source model's identity.
    """
    state = load_checkpoint(path)
    try:
        model = build_model(state["model"])
    except SatpipeError as exc:
        raise SatpipeError(f"{path}: {exc}") from None
    state["checkpoint_sha256"] = file_sha256(path)
    return model.to(device).eval(), state
