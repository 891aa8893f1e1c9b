"""L-inf gradient attacks written here: FGSM, FGSM from a random start (Wong et al.), PGD
(Madry; CE or CW margin loss, restarts) and the TRADES inner maximisation. They are a few lines
each and the trainer calls them every batch, so they are kept dependency-free and
host-sync-free; AutoAttack's attacks come from the reference code
(`satpipe.train.eval.attacks.reference`).

Inputs are images (B, C, H, W) in [0, 1]; every epsilon and step size is in pixel units.
Gradients are taken with `torch.autograd.grad` w.r.t. the input only, so an attack never
accumulates anything into `param.grad`, and every attack leaves the model in the train/eval
mode it found it in. Attacks run under `torch.enable_grad()` so they also work inside a
`torch.no_grad()` evaluation loop. They return detached tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.modules import model_state
from satpipe.train.eval.attacks.base import Attack, AttackContext, register


def input_grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss / d x; zeros where the graph does not reach x (a masked model), never an error."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf eps-ball around x intersected with [0, 1]."""
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """x + eps * sign(grad_x CE(model(x), y)), clamped to [0, 1]; model mode unchanged."""
    x = x.detach()
    with torch.enable_grad():
        x_req = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_req).float(), y)
        g = input_grad(loss, x_req)
    return (x + eps * g.sign()).clamp(0.0, 1.0).detach()


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin per row, max_{j != y} z_j - z_y (B,): positive = misclassified.
    PGD-CW ascends its sum; unlike CE it does not saturate on confident wrong classes."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - true


LOSSES = {
    # The batch mean, as Madry's code; the sign step makes the scale irrelevant anyway.
    "ce": lambda logits, y: F.cross_entropy(logits, y),
    "cw": lambda logits, y: cw_margin(logits, y).sum(),
}


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FGSM from a uniform random start (Wong, Rice, Kolter 2020, "Fast is better than free").

    delta ~ U(-eps, eps) (kept inside [0, 1] around x), one sign step of `step_size`
    (1.25 eps in the paper) on CE(model(x + delta), y), projected back onto the eps-ball and
    [0, 1]: the one-step attack their code trains on. Model used in its current mode.

    Args:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels; eps, step_size in pixel units.
        generator: optional generator on x's device for the random start.

    Returns:
        (B, C, H, W) detached, |x_adv - x| <= eps, values in [0, 1].
    """
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    start = (x + (2.0 * noise - 1.0) * eps).clamp(0.0, 1.0)
    with torch.enable_grad():
        start.requires_grad_(True)
        loss = F.cross_entropy(model(start).float(), y)
        g = input_grad(loss, start)
    return project(start.detach() + step_size * g.sign(), x, eps).detach()


def nfgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    noise_ratio: float = 2.0,
    step_ratio: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N-FGSM (de Jorge et al., "Make some noise", NeurIPS 2022): from x + eta,
    eta ~ U(-k eps, k eps) (k = `noise_ratio`, 2), one sign step of `step_ratio` * eps (1) on
    CE(model(x + eta), y); no projection back to the eps-ball (the perturbation reaches
    (k + 1) eps), only the clamp to the image range [0, 1], of x + eta and of the result, as
    in the authors' code (github.com/pdejorge/N-FGSM, --unif 2 --alpha 8 --clip -1 at eps 8).
    Model used in its current mode.

    Args:
        x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels; eps in pixel units.
        generator: optional generator on x's device for eta.

    Returns:
        (B, C, H, W) detached, |x_adv - x| <= (k + step_ratio) eps, values in [0, 1].
    """
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # eta is kept inside the image range, as the authors' code clamps it
    start = (x + (2.0 * noise - 1.0) * noise_ratio * eps).clamp(0.0, 1.0)
    with torch.enable_grad():
        start.requires_grad_(True)
        loss = F.cross_entropy(model(start).float(), y)
        g = input_grad(loss, start)
    return (start.detach() + step_ratio * eps * g.sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    *,
    restarts: int = 1,
    loss: str = "ce",
) -> torch.Tensor:
    """Madry PGD: `steps` sign steps of `step_size` on `loss`, each projected onto the eps-ball
    and [0, 1], from a uniform random start in the ball (when `random_start`).

    Args:
        model: maps (B, C, H, W) in [0, 1] to logits (B, K); used in its current mode.
        x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels.
        eps, step_size: pixel units (e.g. 8/255, 2/255).
        generator: optional generator on x's device for the random starts (restart r draws
            after restart r - 1, so restarts=1 gives exactly the single-start numbers).
        restarts: independent starts; per image the first that fools the model is kept (the
            per-sample worst case), else the last. Decided on the device: no host sync.
        loss: "ce" (cross-entropy, Madry) or "cw" (Carlini-Wagner margin, PGD-CW).

    Returns:
        (B, C, H, W) adversarial images with |x_adv - x| <= eps and values in [0, 1].
    """
    objective = LOSSES[loss]
    x = x.detach()
    best = None
    for _ in range(max(restarts, 1)):
        x_adv = x.clone()
        if random_start and eps > 0:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = (x_adv + (2.0 * noise - 1.0) * eps).clamp(0.0, 1.0)
        with torch.enable_grad():
            for _ in range(steps):
                x_adv.requires_grad_(True)
                g = input_grad(objective(model(x_adv).float(), y), x_adv)
                x_adv = project(x_adv.detach() + step_size * g.sign(), x, eps)
        x_adv = x_adv.detach()
        if restarts <= 1:
            return x_adv
        if best is None:
            best = x_adv
        else:
            with torch.no_grad():
                still_correct = model(best).argmax(1) == y
            best = torch.where(still_correct[:, None, None, None], x_adv, best)
    return best


def trades_attack(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019), as in the official code.

    From x + 0.001 * N(0, 1), `steps` sign steps of `step_size` on
    KL(p(x) || p(x_adv)) (sum over the batch; the sign makes the scale irrelevant), each
    projected onto the eps-ball and [0, 1]. The model runs in eval mode during the attack
    (BatchNorm uses running statistics and is not updated); its mode is restored afterwards.

    Returns:
        (B, C, H, W) tensor in [0, 1] within eps of x (up to the 0.001 start when steps=0).
    """
    x = x.detach()
    with model_state(model, training=False):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + 0.001 * noise
        with torch.enable_grad():
            for _ in range(steps):
                x_adv.requires_grad_(True)
                log_p_adv = F.log_softmax(model(x_adv).float(), dim=1)
                loss = F.kl_div(log_p_adv, p_clean, reduction="sum")
                g = input_grad(loss, x_adv)
                x_adv = project(x_adv.detach() + step_size * g.sign(), x, eps)
    return x_adv.clamp(0.0, 1.0).detach()


# --------------------------------------------------------------------------------------------
# Registry entries (evaluation): one batch -> its adversarial examples.


def _run_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
    return fgsm(model, x, y, ctx.eps)


def _run_pgd(loss: str):
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
        g = ctx.generator(x.device)
        return pgd(
            model, x, y, ctx.eps, ctx.step_size, ctx.steps, generator=g, restarts=ctx.restarts,
            loss=loss,
        )  # fmt: skip

    return run


register(Attack(
    name="fgsm",
    summary="FGSM: one signed-gradient step of eps on CE (Goodfellow et al. 2015)",
    run=_run_fgsm,
    randomized=False,
))  # fmt: skip
register(Attack(
    name="pgd",
    summary="PGD on CE from a uniform random start; --steps, --step-size, --restarts (Madry)",
    run=_run_pgd("ce"),
    randomized=True,
    params=("steps", "step_size", "restarts"),
))  # fmt: skip
register(Attack(
    name="pgd-cw",
    summary="PGD on the Carlini-Wagner margin max_{j!=y} z_j - z_y; same settings as pgd",
    run=_run_pgd("cw"),
    randomized=True,
    params=("steps", "step_size", "restarts"),
))  # fmt: skip
