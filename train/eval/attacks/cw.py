"""CW-L2 (Carlini & Wagner 2017) with the SAT authors' evaluation settings, on torchattacks.

The SAT code (github.com/Puneet2000/SAT_ECML2020, student.py `test_CW2`) runs advertorch's
`CarliniWagnerL2Attack(binary_search_steps=3, max_iterations=20)` with advertorch's defaults
otherwise: confidence 0, Adam learning rate 0.01, initial constant c = 1e-3, abort early. Why
not advertorch itself: its last release (0.2.3, 2020) no longer imports on a current torch
(`torch.autograd.gradcheck.zero_gradients` is gone). The adversarial-robustness-toolbox's
C&W is numpy-side with its own line search, not this Adam optimiser, and not on the device.
So the optimiser is torchattacks' `CW` (the oracle `make venv` already installs with
--no-deps): Adam on w in tanh space, L2^2 + c * f, the smallest successful L2 kept, early stop.
satpipe adds what torchattacks leaves out, as advertorch does it:

- the binary search over c per image (3 steps: c halves towards the last failure after a
  success, x10 until the first success); torchattacks takes one c per call, so the images
  sharing a c run together (at most 2^k groups at step k);
- f = max(z_y - max_{j != y} z_j + confidence, 0) with the true class masked out of the max
  (torchattacks multiplies it by 0, which picks 0 when every other logit is negative);
- w starts at atanh((2x - 1)(1 - 1e-6)), finite at x = 0 and 1 (torchattacks' atanh(2x - 1)
  is infinite there, which pins saturated pixels).

CW is a minimum-norm attack: it does not take a radius. `cw_l2` returns the adversarial with
the smallest L2 norm found per image; accuracy at radius r counts an image robust when it is
right on the clean image and no adversarial within r was found. Deterministic (no random start).
"""

from __future__ import annotations

import torch
from torch import nn

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import model_state
from satpipe.train.eval.attacks.base import Attack, AttackContext, register

# The SAT code's advertorch settings (advertorch defaults except the two it passes).
SEARCH_STEPS = 3
STEPS = 20
LEARNING_RATE = 0.01
INITIAL_CONST = 1e-3
CONFIDENCE = 0.0
SETTINGS = {
    "binary_search_steps": SEARCH_STEPS,
    "max_iterations": STEPS,
    "learning_rate": LEARNING_RATE,
    "initial_const": INITIAL_CONST,
    "confidence": CONFIDENCE,
}
_UPPER = 1e10  # advertorch's CARLINI_COEFF_UPPER: "no success yet"
_ONE_MINUS_EPS = 0.999999


def _torchattacks_cw():
    try:
        import torchattacks
    except ImportError:
        raise SatpipeError(
            "attack 'cw-l2' needs torchattacks: pip install --no-deps 'torchattacks>=3.5' "
            "(`make venv` installs it)"
        ) from None

    class AdvertorchCW(torchattacks.CW):
        """torchattacks' CW with advertorch's margin and finite tanh-space start."""

        def inverse_tanh_space(self, x):
            return torch.atanh((x * 2 - 1).clamp(-1, 1) * _ONE_MINUS_EPS)

        def f(self, outputs, labels):
            real = outputs.gather(1, labels[:, None]).squeeze(1)
            other = outputs.scatter(1, labels[:, None], float("-inf")).amax(1)
            return torch.clamp(real - other + self.kappa, min=0)

    return AdvertorchCW


def library_version() -> str:
    import torchattacks

    return f"torchattacks {torchattacks.__version__} CW + satpipe's binary search over c"


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    search_steps: int = SEARCH_STEPS,
    steps: int = STEPS,
    lr: float = LEARNING_RATE,
    initial_const: float = INITIAL_CONST,
    confidence: float = CONFIDENCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted CW-L2 with a per-image binary search over c (see the module docstring).

    Args:
        model: maps (B, C, H, W) in [0, 1] to logits; run in eval mode (restored after), its
            parameters' gradients untouched.
        x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels.

    Returns:
        x_adv (B, C, H, W) in [0, 1]: the smallest-L2 adversarial found per image (x itself
        where none was), and its L2 norm ||x_adv - x||_2 (B,) in pixel units: 0 where the clean
        prediction is already wrong, inf where no adversarial was found.
    """
    attack_cls = _torchattacks_cw()
    x, y = x.detach().float(), y.detach()
    n = len(y)
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    lower = torch.zeros(n, device=x.device, dtype=torch.float64)
    upper = torch.full((n,), _UPPER, device=x.device, dtype=torch.float64)
    const = torch.full((n,), initial_const, device=x.device, dtype=torch.float64)
    was = model.training
    model.eval()
    try:
        wrong = _predict(model, x) != y
        best_norm[wrong] = 0.0
        with model_state(model, param_grads=False), torch.enable_grad():
            for _ in range(search_steps):
                success = torch.zeros(n, dtype=torch.bool, device=x.device)
                for c in torch.unique(const).tolist():
                    idx = (const == c).nonzero().squeeze(1)
                    attack = attack_cls(model, c=c, kappa=confidence, steps=steps, lr=lr)
                    adv = attack(x[idx], y[idx]).detach()
                    ok = _predict(model, adv) != y[idx]
                    norm = (adv - x[idx]).flatten(1).norm(dim=1)
                    better = ok & (norm < best_norm[idx])
                    best[idx[better]] = adv[better]
                    best_norm[idx[better]] = norm[better]
                    success[idx] = ok
                # advertorch's update: bisect once a success bounds c, else grow it x10
                upper = torch.where(success, torch.minimum(upper, const), upper)
                lower = torch.where(success, lower, torch.maximum(lower, const))
                bounded = upper < 1e9
                const = torch.where(bounded, (lower + upper) / 2, const * 10)
    finally:
        model.train(was)
    best[wrong] = x[wrong]
    return best, best_norm


def within(x: torch.Tensor, x_adv: torch.Tensor, norm: torch.Tensor, radius: float):
    """x_adv where its L2 norm is <= radius (pixel units), else x: the attack at that radius."""
    keep = (norm <= radius).view(-1, *[1] * (x.dim() - 1))
    return torch.where(keep, x_adv, x)


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
    x_adv, norm = cw_l2(model, x, y)
    return within(x, x_adv, norm, ctx.eps)


def _min_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
    return cw_l2(model, x, y)


register(Attack(
    name="cw-l2",
    summary="Carlini-Wagner L2, 3 binary-search steps x 20 Adam iterations (the SAT code's "
    "advertorch settings); --eps is the L2 radius in /255 (127.5 = 0.5)",
    run=_run,
    randomized=False,
    implementation="torchattacks CW + satpipe binary search (advertorch's settings)",
    norm="L2",
    min_norm=_min_norm,
    default_eps=(32.0, 64.0, 127.5, 255.0),
    settings=SETTINGS,
    version=library_version,
))  # fmt: skip
