"""Model sources: architectures satpipe did not write, named `scheme:NAME`.

    torchvision:resnet50        any torchvision classification builder, weights=None
    timm:convnext_tiny          timm.create_model(NAME, pretrained=False)  (satpipe[timm])
    mypkg.nets:make_net         a factory returning an nn.Module
    mynet                       a name an installed package registers in the entry-point
                                group `satpipe.models` (listed with the built-in models)

Every source builds the network for `num_classes` outputs and `in_channels` inputs and never
downloads weights (trained weights come in through `satpipe model import`). What each source
normalises inputs with by default is `default_norm`: torchvision and timm models expect
ImageNet-normalised inputs, so satpipe puts that normalisation in front of them and every model
still takes [0, 1] images (`satpipe.train.models.create_model` attaches it).

A factory (module:callable or entry point) is called as `factory(num_classes=K)` plus
`in_channels=C` (or timm's `in_chans=C`) when its signature takes one of those. Its model is
assumed to take [0, 1] input (mean 0, std 1) unless it carries `input_mean`/`input_std`
attributes or the user passes --input-mean/--input-std.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.registry import Registry

ENTRY_POINT_GROUP = "satpipe.models"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY_NORM = ((0.0,), (1.0,))

Norm = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class ModelSource:
    """How one scheme finds, checks and builds a network.

    check(name): a one-line SatpipeError when `name` is unknown (no network built);
    build(name, num_classes, in_channels) -> nn.Module (raw, not yet normalising);
    default_norm(name, model) -> (mean, std) the network expects its inputs normalised with.
    """

    syntax: str
    check: Callable[[str], None]
    build: Callable[[str, int, int], nn.Module]
    default_norm: Callable[[str, nn.Module], Norm]


MODEL_SOURCES: Registry[ModelSource] = Registry("model source", plural="model-sources")


def _close(name: str, names: Sequence[str], what: str, listing: str) -> SatpipeError:
    near = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"; close: {', '.join(near)}" if near else ""
    return SatpipeError(f"unknown {what} '{name}'{hint} (all: {listing})")


# --------------------------------------------------------------------------------------------
# torchvision


# Builders whose defaults do not fit a plain (B, K) classifier trained from scratch: their
# auxiliary heads return a tuple in train mode, and they warn unless init_weights is given.
_TORCHVISION_KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
}


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError as exc:  # a declared dependency, but say so plainly if it is broken
        raise SatpipeError(f"torchvision:NAME needs torchvision ({exc})") from None
    return tvm


def _torchvision_check(name: str) -> None:
    tvm = _torchvision_models()
    names = tvm.list_models(module=tvm)  # classification builders only
    if name not in names:
        raise _close(
            name, names, "torchvision classification model", "torchvision.models.list_models()"
        )


def _torchvision_build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    _torchvision_check(name)
    tvm = _torchvision_models()
    kwargs = {"weights": None, "num_classes": num_classes, **_TORCHVISION_KWARGS.get(name, {})}
    model = tvm.get_model(name, **kwargs)
    if in_channels != 3:
        replace_stem(model, in_channels, f"torchvision:{name}")
    return model


def replace_stem(model: nn.Module, in_channels: int, what: str) -> None:
    """Give the first Conv2d (the stem, in registration order) `in_channels` inputs: a new
    conv with the same shape otherwise and PyTorch's default initialisation."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.in_channels == in_channels:
            return
        if module.groups != 1:
            raise SatpipeError(f"{what}: cannot adapt the grouped stem {name} to {in_channels}")
        new = nn.Conv2d(
            in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, 1, module.bias is not None, module.padding_mode,
        )  # fmt: skip
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        return
    raise SatpipeError(f"{what}: no Conv2d stem to adapt to {in_channels} input channels")


def _imagenet_norm(name: str, model: nn.Module) -> Norm:
    return IMAGENET_MEAN, IMAGENET_STD


MODEL_SOURCES.register(
    "torchvision",
    ModelSource("torchvision:NAME", _torchvision_check, _torchvision_build, _imagenet_norm),
    summary="torchvision:NAME - any torchvision classification builder (e.g. torchvision:"
    "resnet50), no weights downloaded; inputs normalised with the ImageNet mean/std",
)


# --------------------------------------------------------------------------------------------
# timm


def _timm():
    try:
        import timm
    except ImportError:
        raise SatpipeError(
            "timm:NAME needs the timm package: pip install 'satpipe[timm]'"
        ) from None
    return timm


def _timm_check(name: str) -> None:
    if "hf-hub:" in name or "hf_hub:" in name or "local-dir:" in name:
        raise SatpipeError(
            f"timm:{name}: satpipe builds timm models without weights; bring trained weights "
            "with `satpipe model import`"
        )
    timm = _timm()
    arch = name.split(".", 1)[0]  # "resnet18.a1_in1k": the tag only picks the default config
    if not timm.is_model(arch):
        raise _close(arch, timm.list_models(), "timm model", "timm.list_models()")


def _timm_build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    _timm_check(name)
    return _timm().create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels
    )


def _timm_norm(name: str, model: nn.Module) -> Norm:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(mean), tuple(std)


MODEL_SOURCES.register(
    "timm",
    ModelSource("timm:NAME", _timm_check, _timm_build, _timm_norm),
    summary="timm:NAME - timm.create_model(NAME, pretrained=False) (pip install "
    "'satpipe[timm]'); inputs normalised with the model's pretrained_cfg mean/std",
)


# --------------------------------------------------------------------------------------------
# package.module:callable and entry points


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise SatpipeError(f"model '{spec}': cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SatpipeError(f"model '{spec}': {module_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SatpipeError(f"model '{spec}': {attr} is not callable")
    return obj


def call_factory(factory: Callable[..., nn.Module], num_classes: int, in_channels: int, what: str):
    """`factory(num_classes=K[, in_channels=C | in_chans=C])`, checked to give an nn.Module."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_classes" not in params and not takes_any:
        raise SatpipeError(f"model '{what}': the factory takes no num_classes argument")
    kwargs = {"num_classes": num_classes}
    # Only to a factory that names it: **kwargs often forward to a builder that takes none.
    if "in_channels" in params:
        kwargs["in_channels"] = in_channels
    elif "in_chans" in params:
        kwargs["in_chans"] = in_channels
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise SatpipeError(f"model '{what}': the factory returned {type(model).__name__}")
    return model


def _callable_check(spec: str) -> None:
    _import_factory(spec)


def _callable_build(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    return call_factory(_import_factory(spec), num_classes, in_channels, spec)


def attribute_norm(name: str, model: nn.Module) -> Norm:
    """A factory's model may say what it expects (`input_mean`, `input_std`); else none."""
    mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
    if mean is None or std is None:
        return IDENTITY_NORM
    return tuple(mean), tuple(std)


MODEL_SOURCES.register(
    "module",
    ModelSource("package.module:callable", _callable_check, _callable_build, attribute_norm),
    summary="package.module:callable - a factory(num_classes, in_channels=...) returning an "
    "nn.Module that takes [0, 1] input (or has input_mean/input_std attributes)",
)


class EntryPointModel:
    """A model factory another package registered in the `satpipe.models` entry-point group;
    its code is imported only when the model is built."""

    def __init__(self, entry_point: importlib.metadata.EntryPoint) -> None:
        self.entry_point = entry_point
        dist = getattr(entry_point, "dist", None)
        origin = f" from {dist.name}" if dist is not None else ""
        self.summary = f"{entry_point.value} (entry point{origin})"

    def __call__(self, num_classes: int, in_channels: int = 3) -> nn.Module:
        try:
            factory = self.entry_point.load()
        except Exception as exc:  # a broken third-party package: say which, in one line
            raise SatpipeError(
                f"model '{self.entry_point.name}': cannot load entry point "
                f"{self.entry_point.value} ({type(exc).__name__}: {exc})"
            ) from None
        return call_factory(factory, num_classes, in_channels, self.entry_point.name)


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    for ep in entry_points():
        if ep.name == name:
            return ep
    raise SatpipeError(f"no package registers a model '{name}' (entry points {ENTRY_POINT_GROUP})")


def _entry_point_build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    return EntryPointModel(_entry_point(name))(num_classes, in_channels)


MODEL_SOURCES.register(
    "entry-point",
    ModelSource("NAME", _entry_point, _entry_point_build, attribute_norm),
    summary=f"NAME - a model an installed package registers in the entry-point group "
    f"'{ENTRY_POINT_GROUP}' (shown under models)",
)


def entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed `satpipe.models` entry points, sorted by name."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: ep.name)
