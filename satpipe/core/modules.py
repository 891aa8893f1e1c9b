"""A torch module's temporary states, restored on exit, and the input leaf every gradient
method starts from: the one way each layer freezes a model (attributions, attacks, timing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def model_state(
    model: nn.Module, *, training: bool | None = None, param_grads: bool | None = None
) -> Iterator[nn.Module]:
    """Inside the block: train (True) or eval (False) mode when `training` is given, and every
    parameter's requires_grad off when `param_grads` is False (so a `.backward()` inside, as
    FAB's, leaves no parameter gradients behind). Mode and flags are restored on exit, error
    or not. None leaves that part as it is."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()] if param_grads is not None else []
    if training is not None:
        model.train(training)
    for p, _ in flags:
        p.requires_grad_(param_grads)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def frozen(model: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients inside the block (a source model being attributed
    or timed); None: nothing to freeze."""
    if model is None:
        yield
        return
    with model_state(model, training=False, param_grads=False):
        yield


def input_leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of `x` that requires grad (the caller's tensor is never modified)."""
    return x.detach().clone().requires_grad_(True)
