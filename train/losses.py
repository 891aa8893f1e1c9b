"""Training losses beyond plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from satpipe.core.modules import input_leaf


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """TRADES: CE(f(x), y) + beta * KL_batchmean(p(x) || p(x_adv)), a scalar.

    The official formula, `nn.KLDivLoss(reduction="batchmean")(log_softmax(adv), softmax(clean))`
    (sum over classes and batch, divided by the batch size). Gradients flow through both the
    clean and the adversarial logits, as in the official code.

    Args:
        logits_clean, logits_adv: (B, K) logits on x and on the TRADES attack of x.
        y: (B,) int64 labels. beta: robustness weight (6 by default, the paper's).
    """
    logits_clean, logits_adv = logits_clean.float(), logits_adv.float()
    natural = F.cross_entropy(logits_clean, y)
    robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean"
    )
    return natural + beta * robust


def rrr_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, relevant: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right for the Right Reasons (Ross, Hughes, Doshi-Velez 2017), a scalar and the logits.

        CE(f(x), y) + lam * mean_n sum_d ((1 - A_nd) * d/dx_nd sum_k log p_k(x_n))^2

    A = `relevant` (1 on the object); the gradient is of the summed log-probabilities, as in
    the paper's Eq. 1 and the authors' code (github.com/dtak/rrr: gradients of log_prob_ys),
    taken with create_graph so the penalty trains the weights (double backprop). The authors
    sum both terms over the batch; the mean over images here is the same ratio.

    Args:
        model: maps (B, C, H, W) in [0, 1] to logits (B, K); called once, in its current mode.
        x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        relevant: (B, 1 or C, H, W) in {0, 1}, broadcast over colour channels.
        lam: lambda_1 of the paper (>= 0).
    """
    x = input_leaf(x)
    logits = model(x)
    log_p = F.log_softmax(logits.float(), dim=1)
    (g,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
    penalty = ((1.0 - relevant.to(g.dtype)) * g).pow(2).flatten(1).sum(1).mean()
    return F.nll_loss(log_p, y) + lam * penalty, logits


def igr_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradient regularisation (Ross & Doshi-Velez 2018), a scalar and the logits.

        CE(f(x), y) + lam * mean_n || d/dx_n CE(f(x_n), y_n) ||_2^2

    The paper's objective sums both terms over the batch (the mean over images is the same
    ratio); each image's gradient is of its own CE (the gradient of the summed CE), with
    create_graph so the penalty trains the weights: double backprop (Drucker & LeCun 1991).

    Args: as `rrr_loss`; lam >= 0.
    """
    x = input_leaf(x)
    logits = model(x)
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), x, create_graph=True)
    return ce.mean() + lam * g.pow(2).flatten(1).sum(1).mean(), logits


def sgt_loss(
    logits_clean: torch.Tensor, logits_masked: torch.Tensor, y: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """Saliency Guided Training (Ismail et al. 2021): CE(f(x), y) + lam * KL(p(x) || p(x_masked)).

    The KL is `batchmean` with gradients through both arguments, as the authors' code
    (`KLDivLoss(reduction='batchmean')(log_softmax(masked), softmax(output))`): the same
    formula as TRADES' loss with lam for beta.

    Args: logits (B, K) on x and on its masked copy; y (B,) int64; lam >= 0 (1 in their code).
    """
    return trades_loss(logits_clean, logits_masked, y, lam)


def gradalign_penalty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad_x: torch.Tensor, eta: torch.Tensor,
    lam: float,
) -> torch.Tensor:  # fmt: skip
    """GradAlign's regulariser (Andriushchenko & Flammarion 2020), a scalar:

        lam * (1 - mean_n cos(grad_x_n, d/dx CE(f(x_n + eta_n), y_n)))

    the gradient at x + eta taken with create_graph, so the penalty trains the weights (double
    backprop); `grad_x` (the gradient at x, which FGSM already computed) is a constant, as in
    the authors' code. Images where either gradient is exactly zero are left out of the mean
    (their code's `grads_nnz_idx`); with none left the penalty is 0. x + eta is not clamped to
    [0, 1] (their `get_input_grad`).

    Args:
        model: called once on x + eta, in its current mode.
        x: (B, C, H, W) in [0, 1]; y: (B,) int64; grad_x: (B, C, H, W), d CE / dx at x.
        eta: (B, C, H, W), U(-eps, eps) in their code. lam: the weight (>= 0; 0.2 at 8/255).
    """
    x2 = (x.detach() + eta).requires_grad_(True)
    ce = F.cross_entropy(model(x2).float(), y)
    (g2,) = torch.autograd.grad(ce, x2, create_graph=True)
    g1, g2 = grad_x.detach().flatten(1).float(), g2.flatten(1).float()
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
    keep = (n1 != 0) & (n2 != 0)
    cos = (g1 * g2).sum(1) / (n1 * n2).clamp_min(torch.finfo(g1.dtype).tiny)
    mean_cos = (cos * keep).sum() / keep.sum().clamp_min(1)
    return lam * (1.0 - mean_cos) * keep.any()


def energy_loss(attribution: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The Energy loss of Rao, Böhle et al. (ICCV 2023), one value per image (B,):

        1 - sum_{p in box} max(A_p, 0) / sum_p max(A_p, 0)

    1 - the energy-based pointing game: the share of positive attribution outside the box or
    mask. As in the authors' code (losses.py, EnergyPointingGameBBMultipleLoss), an image whose
    positive attribution sums to less than 1e-7 gets 1 - (its inside sum).

    Args:
        attribution: (B, H, W) or (B, 1, H, W), e.g. input x gradient summed over channels.
        inside: broadcastable to it, 1 on the object (box or mask), 0 elsewhere.
    """
    pos = attribution.float().clamp(min=0).flatten(1)
    num = (pos * inside.to(pos.dtype).expand_as(attribution).flatten(1)).sum(1)
    den = pos.sum(1)
    return 1.0 - torch.where(den < 1e-7, num, num / den.clamp_min(1e-7))


def input_x_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x gradient of the true-class logit, summed over colour channels, with
    create_graph (the attribution the energy loss trains): ((B, H, W), logits (B, K)).

    As the authors' IxGAttributor: grad of the target logits w.r.t. the input times the input,
    `.sum(dim=1)`. The model is called once, in its current mode.
    """
    x = input_leaf(x)
    logits = model(x)
    target = logits.float().gather(1, y.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(target, x, create_graph=True)
    return (g * x).sum(1), logits
