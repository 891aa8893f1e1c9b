"""What the saliency methods need to know about a model they did not build: where Grad-CAM
looks, and whether Guided Backprop's rule can act on every activation.

Both are found from one forward of a tiny probe (one grey image of the data's size, eval mode,
no gradients), so they work for any architecture, not only the ones satpipe knows.

Grad-CAM layer (`find_cam_layer`): the module whose output is the last spatial activation of
the forward pass, i.e. the last (1, K, h, w) tensor with h * w > 1 that some module returned,
skipping pooling modules (global pooling ends the spatial part). Among the modules that return
that same tensor (a block, its Sequential, the ReLU ending it) the outermost one is taken, the
one the Grad-CAM literature names (`layer4` of a torchvision ResNet at 224 px). A module that
runs more than once per forward (torchvision reuses one ReLU per block) is never chosen: its
activation is not one tensor. At small inputs the last stage can be 1x1 (ResNets at 32 px);
then the stage before it is the last spatial one and is chosen, since a 1x1 map is constant.

Guided Backprop (`guided_plan`): captum's GuidedBackprop overrides the backward of `nn.ReLU`
modules only. Every activation function the probe sees (relu, relu6, leaky_relu, elu, selu,
celu, gelu, silu, mish, hardswish, softplus, hardtanh, ...; found with a TorchFunctionMode) is
classified by the innermost module that ran it:
  - an `nn.ReLU` module: captum's rule (gradient leaving the ReLU clamped at 0);
  - another activation module (a leaf: SiLU, GELU, Hardswish, ReLU6, timm's GELU, ...): refused
    by default, naming the module; with `other_activations="guide"` the same rule is applied to
    it (the gradient leaving the activation, f'(x) * g, is clamped at 0);
  - anything else (a block that calls F.relu in its forward): always refused, since no module
    hook can reach a functional call, and a plain gradient must never pass for Guided Backprop.
Gates (sigmoid, hardsigmoid, tanh, softmax in squeeze-excitation or attention) are not
activations in this sense and keep their plain gradient, as in captum and the GBP paper.
Activations written out as arithmetic (x * torch.sigmoid(x)) cannot be told apart from gates.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from satpipe.core.errors import SatpipeError

# Names of torch functions (and Tensor methods) that are rectifier-like activations.
ACTIVATION_FUNCTIONS = frozenset(
    {
        "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_",
        "celu", "celu_", "gelu", "silu", "mish", "hardswish", "softplus", "hardtanh",
        "hardtanh_", "threshold", "threshold_", "prelu", "rrelu", "rrelu_",
    }
)  # fmt: skip
OTHER_ACTIVATIONS = ("refuse", "guide")


def _probe(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    c, h, w = (int(v) for v in input_shape)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.full((1, c, h, w), 0.5, device=device)


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Grad-CAM layer


def find_cam_layer(model: nn.Module, input_shape: Sequence[int]) -> str:
    """Dotted name of the module whose output is the model's last spatial activation for
    (C, H, W) inputs (see the module docstring); a one-line error when there is none."""
    names = {id(m): n for n, m in model.named_modules() if n}
    calls: dict[str, int] = {}
    outputs: list[tuple[str, torch.Tensor]] = []

    def record(module, _inputs, output) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(output, torch.Tensor):
            outputs.append((name, output))

    hooks = [m.register_forward_hook(record) for n, m in model.named_modules() if n]
    try:
        with _eval_no_grad(model):
            model(_probe(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    pooling = {n for n, m in model.named_modules() if "pool" in type(m).__name__.lower()}
    skip = {"normalize", "satpipe_normalize"}
    for name, out in reversed(outputs):
        spatial = out.ndim == 4 and out.shape[-2] * out.shape[-1] > 1
        if spatial and calls[name] == 1 and name not in pooling and name not in skip:
            return name
    raise SatpipeError(
        f"{type(model).__name__}: no module gives a spatial (B, K, h, w) output for "
        f"{tuple(input_shape)} inputs; pass --cam-layer <dotted module name>"
    )


# --------------------------------------------------------------------------------------------
# Guided Backprop


@dataclass(frozen=True)
class GuidedPlan:
    """Modules Guided Backprop acts on: `relus` (captum's hooks) and `others` (the same rule,
    applied by satpipe's pre-hook), as dotted names."""

    relus: tuple[str, ...]
    others: tuple[str, ...]


# model -> {(mode, input shape): plan}; the architecture does not change between batches.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ActivationCalls(TorchFunctionMode):
    """Records (innermost running module, function name) for each activation function call."""

    def __init__(self, stack: list[nn.Module]) -> None:
        super().__init__()
        self.stack = stack
        self.seen: list[tuple[nn.Module | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ACTIVATION_FUNCTIONS:
            self.seen.append((self.stack[-1] if self.stack else None, name))
        return func(*args, **(kwargs or {}))


def guided_plan(
    model: nn.Module, input_shape: Sequence[int], other_activations: str = "refuse"
) -> GuidedPlan:
    """Which modules Guided Backprop must hook for (C, H, W) inputs, or a one-line
    SatpipeError naming the first activation it cannot guide (see the module docstring)."""
    if other_activations not in OTHER_ACTIVATIONS:
        raise SatpipeError(
            f"method 'gbp': other_activations must be one of {', '.join(OTHER_ACTIVATIONS)}, "
            f"got '{other_activations}'"
        )
    key = (other_activations, tuple(int(v) for v in input_shape))
    cached = _PLANS.get(model, {}).get(key)
    if cached is not None:
        return cached
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []

    def enter(module, _inputs) -> None:
        stack.append(module)

    def leave(_module, _inputs, _output) -> None:  # returns None: the output is kept
        stack.pop()

    hooks = []
    for m in model.modules():
        hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    calls = _ActivationCalls(stack)
    try:
        with _eval_no_grad(model), calls:
            model(_probe(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    relus: dict[str, None] = {}
    others: dict[str, None] = {}
    for module, fn in calls.seen:
        where = names.get(id(module), "") if module is not None else ""
        label = f"{where or 'the model forward'} ({type(module).__name__ if module else '-'})"
        if isinstance(module, nn.ReLU):
            relus[where] = None
        elif module is not None and not any(True for _ in module.children()) and where:
            if other_activations != "guide":
                raise SatpipeError(
                    f"gbp: {label} applies {fn}, which Guided Backprop's ReLU rule does not "
                    "cover; pass --param other_activations=guide to clamp its gradient at 0 "
                    "as for ReLU, or use another method"
                )
            others[where] = None
        else:
            raise SatpipeError(
                f"gbp: {label} calls {fn} as a function, which Guided Backprop cannot hook "
                "(it needs activation modules such as nn.ReLU); use another method"
            )
    plan = GuidedPlan(tuple(relus), tuple(others))
    _PLANS.setdefault(model, {})[key] = plan
    return plan


class _ClampGrad(torch.autograd.Function):
    """Identity forward; backward clamps the gradient at 0 (Guided Backprop's rule, placed
    before an activation so it acts on the gradient leaving it: relu(f'(x) * g))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _clamp_input(_module: nn.Module, args: tuple) -> tuple:
    return (_ClampGrad.apply(args[0]), *args[1:])


@contextmanager
def guided(model: nn.Module, plan: GuidedPlan) -> Iterator[None]:
    """Inside the block the plan's modules compute out of place (captum's tensor hooks and the
    clamp need their inputs intact; torchvision builds ReLUs with inplace=True) and the
    `others` clamp their input gradient; every flag and hook is restored after."""
    modules = [model.get_submodule(n) if n else model for n in plan.relus + plan.others]
    flags = [(m, m.inplace) for m in modules if isinstance(getattr(m, "inplace", None), bool)]
    hooks = [model.get_submodule(n).register_forward_pre_hook(_clamp_input) for n in plan.others]
    for m, _ in flags:
        m.inplace = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.inplace = flag
        for h in hooks:
            h.remove()
